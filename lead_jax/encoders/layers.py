"""Pieces the Flax encoder ports share (bert.py, xlm_roberta.py, mpnet.py, t5.py).

* `ACTIVATIONS`: HF `ACT2FN` names -> jax functions.
* `dense` / `layer_norm`: the Dense and torch-like LayerNorm every port declares.
* `mask_bias_bk`: a 0/1 attention mask as an additive fp32 bias.
* `segment_bias_bqk`: the bias of packed rows (several texts in one row): tokens attend
  only within their own text.
* `relative_position_buckets`, `position_bias_hqk`, `relative_attention_bias`: the
  T5/MPNet relative-position bias, one table per encoder stack.
* `RelativeSelfAttention`: the self-attention of the relative-position models.
* `check_params_tree`: a converted checkpoint must fit the model's parameter tree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_NEG_INF = float(np.finfo(np.float32).min)


def gelu_exact(x: jax.Array) -> jax.Array:
  """GELU with the erf (HF `gelu`, torch `nn.GELU()`).

  Args:
    x: any array.

  Returns:
    `x * Φ(x)`, elementwise.
  """
  return jax.nn.gelu(x, approximate=False)


def gelu_tanh(x: jax.Array) -> jax.Array:
  """GELU's tanh approximation (HF `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).

  Args:
    x: any array.

  Returns:
    The tanh-form GELU of `x`, elementwise.
  """
  return jax.nn.gelu(x, approximate=True)


# HF `ACT2FN` names -> jax functions (those the ported checkpoints use).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": gelu_exact,
    "gelu_python": gelu_exact,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def dense(features: int, name: str, dtype: Any, *, use_bias: bool = True) -> nn.Dense:
  """A Dense layer computing in `dtype` with fp32 parameters.

  Args:
    features: output width.
    name: the parameter scope (the HF module name).
    dtype: the matmul compute dtype.
    use_bias: whether the layer has a bias (T5 has none).

  Returns:
    The (unbound) `flax.linen.Dense`.
  """
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name)


def layer_norm(eps: float, name: str = "LayerNorm") -> nn.LayerNorm:
  """A LayerNorm as torch computes it: fp32 statistics and output, two-pass variance.

  `dtype=float32` also promotes bf16 inputs, so the residual stream stays fp32.

  Args:
    eps: the variance epsilon.
    name: the parameter scope.

  Returns:
    The (unbound) `flax.linen.LayerNorm`.
  """
  return nn.LayerNorm(
      epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32, use_fast_variance=False, name=name
  )


def mask_bias_bk(attention_mask: jax.Array) -> jax.Array:
  """A 0/1 attention mask as an additive bias.

  Args:
    attention_mask: [B, L], 1 for tokens to attend to.

  Returns:
    fp32 [B, L]: 0 where kept, the most negative float32 where dropped.
  """
  return jnp.where(attention_mask > 0, 0.0, _NEG_INF).astype(jnp.float32)


def segment_bias_bqk(segment_ids: jax.Array) -> jax.Array:
  """The attention bias of packed rows: a query sees only the keys of its own segment.

  A packed row holds several texts one after another; `segment_ids` numbers them
  1, 2, ... and marks padding 0. Padding keys are masked for every query; padding
  queries see nothing (their outputs are never pooled).

  Args:
    segment_ids: int [B, L], 0 for padding.

  Returns:
    fp32 [B, L, L] (query, key): 0 where kept, the most negative float32 where dropped.
  """
  same_bqk = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
  return jnp.where(same_bqk, 0.0, _NEG_INF).astype(jnp.float32)


def attention_bias(attention_mask: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
  """The additive attention bias of a batch, broadcastable to [B, heads, L, L].

  Args:
    attention_mask: [B, L] 0/1.
    segment_ids: int [B, L] for packed rows (see `segment_bias_bqk`), or None.

  Returns:
    fp32 [B, 1, 1, L] from the mask, or [B, 1, L, L] from the segments.
  """
  if segment_ids is None:
    return mask_bias_bk(attention_mask)[:, None, None, :]
  return segment_bias_bqk(segment_ids)[:, None]


def relative_position_buckets(
    q_len: int, k_len: int, num_buckets: int, max_distance: int
) -> np.ndarray:
  """Bidirectional T5/MPNet relative-position buckets.

  Runs in numpy at trace time (lengths are static), so the table is a jit
  constant. Float32 arithmetic follows HF's torch code step by step, so bucket
  edges land where HF puts them (tested against HF over long ranges).

  Args:
    q_len: query length.
    k_len: key length.
    num_buckets: buckets in both directions together.
    max_distance: distances from here on share the last bucket.

  Returns:
    int32 [q_len, k_len] bucket ids.
  """
  rel_qk = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]  # memory - context
  half = num_buckets // 2
  max_exact = half // 2
  n_qk = np.abs(rel_qk)
  # log(0) is never selected (n < max_exact there); clamp to keep numpy quiet.
  ratio = np.maximum(n_qk, 1).astype(np.float32) / np.float32(max_exact)
  large = (
      np.log(ratio) / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
  )
  large = np.minimum(max_exact + large.astype(np.int64), half - 1)
  buckets = (rel_qk > 0) * half + np.where(n_qk < max_exact, n_qk, large)
  return buckets.astype(np.int32)


def position_bias_hqk(
    table_nh: jax.Array, q_len: int, k_len: int, num_buckets: int, max_distance: int
) -> jax.Array:
  """Gathers a relative-position bias table into per-head biases.

  Args:
    table_nh: [>= num_buckets, H] bias table.
    q_len: query length.
    k_len: key length.
    num_buckets: see `relative_position_buckets`.
    max_distance: see `relative_position_buckets`.

  Returns:
    fp32 [H, q_len, k_len].
  """
  buckets_qk = relative_position_buckets(q_len, k_len, num_buckets, max_distance)
  return jnp.transpose(table_nh.astype(jnp.float32)[buckets_qk], (2, 0, 1))


def relative_attention_bias(
    module: nn.Module,
    attention_mask: jax.Array,
    *,
    table_rows: int,
    num_heads: int,
    num_buckets: int,
    max_distance: int,
    init_stddev: float,
    segment_ids: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Declares `module`'s `relative_attention_bias` table and gathers the biases every layer adds.

  Call it from `module`'s `nn.compact` `__call__` (the table is its parameter). In a
  packed row the relative positions inside each text are those of the text alone, so
  the position bias is the same; the segment bias masks the pairs across texts.

  Args:
    module: the encoder stack that owns the table.
    attention_mask: [B, L] 0/1.
    table_rows: rows of the table (may exceed `num_buckets`).
    num_heads: attention heads.
    num_buckets: buckets used for the lookup.
    max_distance: see `relative_position_buckets`.
    init_stddev: stddev of the table's normal initialiser.
    segment_ids: int [B, L] for packed rows (see `segment_bias_bqk`), or None.

  Returns:
    (fp32 [H, L, L] position bias, mask bias broadcastable to [B, H, L, L]: fp32
    [B, 1, 1, L], or [B, 1, L, L] for packed rows), as `RelativeSelfAttention` takes them.
  """
  table_nh = module.param(
      "relative_attention_bias",
      nn.initializers.normal(init_stddev),
      (table_rows, num_heads),
      jnp.float32,
  )
  l = attention_mask.shape[1]
  return (
      position_bias_hqk(table_nh, l, l, num_buckets, max_distance),
      attention_bias(attention_mask, segment_ids),
  )


class RelativeSelfAttention(nn.Module):
  """Self-attention plus a relative-position bias and a mask bias (T5, MPNet).

  Parameters `q`, `k`, `v`, `o` as in HF. Scores and softmax are fp32; the
  probabilities are cast to `dtype` for the value product. Call it with
  (x [B, L, D], bias parts from `relative_attention_bias`); it returns [B, L, out_features].
  """

  num_heads: int
  head_dim: int
  out_features: int
  use_bias: bool  # MPNet's projections have biases, T5's none
  scale_queries: bool  # MPNet scales q by head_dim**-0.5; T5 folds that into its init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bld, bias_parts):
    b, l, _ = x_bld.shape
    inner = self.num_heads * self.head_dim
    proj = lambda n, name: dense(n, name, self.dtype, use_bias=self.use_bias)
    heads = lambda name: proj(inner, name)(x_bld).reshape(b, l, self.num_heads, self.head_dim)
    q_blhk, k_blhk, v_blhk = heads("q"), heads("k"), heads("v")
    if self.scale_queries:  # scale q instead of the [B,H,L,L] scores; same maths as HF
      q_blhk = q_blhk * (self.head_dim**-0.5)
    pos_hqk, mask_b11k = bias_parts
    scores_bhqk = jnp.einsum("bqhk,bshk->bhqs", q_blhk, k_blhk).astype(jnp.float32)
    scores_bhqk = scores_bhqk + pos_hqk[None] + mask_b11k
    probs_bhqk = jax.nn.softmax(scores_bhqk, axis=-1).astype(self.dtype)
    ctx_blhk = jnp.einsum("bhqs,bshk->bqhk", probs_bhqk, v_blhk)
    return proj(self.out_features, "o")(ctx_blhk.reshape(b, l, inner))


def check_params_tree(params: dict, model: nn.Module, what: str) -> None:
  """Checks a converted parameter tree against the one `model.init` makes.

  Args:
    params: the converted tree (without the "params" wrapper).
    model: the Flax model it is for.
    what: the architecture, named in the error.

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped parameter (the first 20).
  """
  ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
  expected = jax.eval_shape(model.init, jax.random.key(0), ids, ids)["params"]
  want = {
      jax.tree_util.keystr(p): s.shape for p, s in jax.tree_util.tree_leaves_with_path(expected)
  }
  have = {
      jax.tree_util.keystr(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(params)
  }
  problems = [f"missing {k}" for k in sorted(want.keys() - have.keys())]
  problems += [f"unexpected {k}" for k in sorted(have.keys() - want.keys())]
  problems += [
      f"{k}: shape {have[k]} != {want[k]}"
      for k in sorted(want.keys() & have.keys())
      if have[k] != want[k]
  ]
  if problems:
    raise ValueError(
        f"{what} params_from_hf: checkpoint does not fit the config: " + "; ".join(problems[:20])
    )
