"""Flax port of the HF T5 encoder stack (`T5EncoderModel`): gtr-t5-*, sentence-t5-*.

Only the backbone: the sentence-transformers Dense projection of sentence-t5 is
left to the pooling module.

T5 conventions kept here: RMS LayerNorm (no mean, no bias), no biases anywhere,
no 1/sqrt(d) scaling of attention scores, one relative-position bias table
(owned by block 0 in HF) shared by every layer. Feed-forward is `relu`
(DenseReluDense: wi, wo) or gated (`gated-gelu`: wi_0, wi_1, wo, gelu_new).

Parameter tree mirrors HF names: `shared/embedding`,
`encoder/block_0/layer_0/SelfAttention/{q,k,v,o}`,
`encoder/block_0/layer_1/DenseReluDense/{wi|wi_0,wi_1,wo}`, `.../layer_norm/weight`,
`encoder/final_layer_norm/weight`, and `encoder/relative_attention_bias` (HF's
`encoder.block.0.layer.0.SelfAttention.relative_attention_bias`: lifted to the
stack since it is shared). `params_from_hf` is a key map onto it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

MODEL_TYPES = ("t5",)

_NEG_INF = float(np.finfo(np.float32).min)

# HF ACT2FN names → jax. "gelu" is exact erf GELU; "gelu_new" is the tanh form.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def relative_position_buckets(
    q_len: int, k_len: int, num_buckets: int, max_distance: int
) -> np.ndarray:
  """Bidirectional T5/MPNet relative-position buckets, int32 [q_len, k_len].

  Runs in numpy at trace time (lengths are static), so the table is a jit
  constant. Float32 arithmetic follows HF's torch code step by step, so bucket
  edges land where HF puts them (tested against HF over long ranges).
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
  """Gathers the [>=num_buckets, H] bias table into a fp32 [H, q_len, k_len] bias."""
  buckets_qk = relative_position_buckets(q_len, k_len, num_buckets, max_distance)
  return jnp.transpose(table_nh.astype(jnp.float32)[buckets_qk], (2, 0, 1))


def mask_bias_bk(attention_mask: jax.Array) -> jax.Array:
  """[B, L] 0/1 mask → fp32 additive bias [B, L] (0 keep, large negative drop)."""
  return jnp.where(attention_mask > 0, 0.0, _NEG_INF).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class T5Config:
  vocab_size: int = 32128
  d_model: int = 768
  d_kv: int = 64
  d_ff: int = 3072
  num_layers: int = 12
  num_heads: int = 12
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dense_act_fn: str = "relu"
  is_gated_act: bool = False
  pad_token_id: int = 0

  @classmethod
  def from_hf_config(cls, cfg: Mapping[str, Any]) -> T5Config:
    if cfg.get("model_type", "t5") not in MODEL_TYPES:
      raise ValueError(f"T5Config.from_hf_config: model_type {cfg.get('model_type')!r} is not t5")
    ff_proj = cfg.get("feed_forward_proj", "relu")
    act_info = ff_proj.split("-")
    if len(act_info) > 2 or (len(act_info) == 2 and act_info[0] != "gated"):
      raise ValueError(f"T5 feed_forward_proj {ff_proj!r} is not 'ACT' or 'gated-ACT'")
    act = "gelu_new" if ff_proj == "gated-gelu" else act_info[-1]  # as T5Config.__post_init__
    if act not in ACTIVATIONS:
      raise ValueError(f"T5 activation {act!r} (feed_forward_proj={ff_proj!r}) is not supported")
    d = cls()
    return cls(
        vocab_size=cfg.get("vocab_size", d.vocab_size),
        d_model=cfg.get("d_model", d.d_model),
        d_kv=cfg.get("d_kv", d.d_kv),
        d_ff=cfg.get("d_ff", d.d_ff),
        num_layers=cfg.get("num_layers", d.num_layers),
        num_heads=cfg.get("num_heads", d.num_heads),
        relative_attention_num_buckets=cfg.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=cfg.get("relative_attention_max_distance", 128),
        layer_norm_epsilon=cfg.get("layer_norm_epsilon", 1e-6),
        dense_act_fn=act,
        is_gated_act=act_info[0] == "gated",
        pad_token_id=cfg.get("pad_token_id") or 0,
    )


class T5LayerNorm(nn.Module):
  """RMS norm: no mean subtraction, no bias; computed in fp32, returns fp32."""

  eps: float = 1e-6

  @nn.compact
  def __call__(self, x_bld: jax.Array) -> jax.Array:
    weight_d = self.param("weight", nn.initializers.ones, (x_bld.shape[-1],), jnp.float32)
    x_bld = x_bld.astype(jnp.float32)
    var_bl1 = jnp.mean(jnp.square(x_bld), axis=-1, keepdims=True)
    return weight_d * (x_bld * jax.lax.rsqrt(var_bl1 + self.eps))


def _dense(features: int, name: str, dtype: Any) -> nn.Dense:
  return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=jnp.float32, name=name)


class T5Attention(nn.Module):
  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bld, bias_bhqk_parts):
    cfg = self.config
    b, l, _ = x_bld.shape
    inner = cfg.num_heads * cfg.d_kv
    q_blhk = _dense(inner, "q", self.dtype)(x_bld).reshape(b, l, cfg.num_heads, cfg.d_kv)
    k_blhk = _dense(inner, "k", self.dtype)(x_bld).reshape(b, l, cfg.num_heads, cfg.d_kv)
    v_blhk = _dense(inner, "v", self.dtype)(x_bld).reshape(b, l, cfg.num_heads, cfg.d_kv)
    pos_hqk, mask_bk = bias_bhqk_parts
    # T5: no 1/sqrt(d_kv) scaling (folded into the initialisation upstream).
    scores_bhqk = jnp.einsum("bqhk,bshk->bhqs", q_blhk, k_blhk).astype(jnp.float32)
    scores_bhqk = scores_bhqk + pos_hqk[None] + mask_bk[:, None, None, :]
    probs_bhqk = jax.nn.softmax(scores_bhqk, axis=-1).astype(self.dtype)
    ctx_blhk = jnp.einsum("bhqs,bshk->bqhk", probs_bhqk, v_blhk)
    return _dense(cfg.d_model, "o", self.dtype)(ctx_blhk.reshape(b, l, inner))


class T5LayerSelfAttention(nn.Module):
  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bld, bias_parts):
    h_bld = T5LayerNorm(self.config.layer_norm_epsilon, name="layer_norm")(x_bld)
    return x_bld + T5Attention(self.config, self.dtype, name="SelfAttention")(h_bld, bias_parts)


class T5DenseReluDense(nn.Module):
  """`T5DenseActDense` (wi, wo) or, with is_gated_act, `T5DenseGatedActDense` (wi_0, wi_1, wo)."""

  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bld):
    cfg = self.config
    act = ACTIVATIONS[cfg.dense_act_fn]
    if cfg.is_gated_act:
      h_blf = act(_dense(cfg.d_ff, "wi_0", self.dtype)(x_bld)) * _dense(
          cfg.d_ff, "wi_1", self.dtype
      )(x_bld)
    else:
      h_blf = act(_dense(cfg.d_ff, "wi", self.dtype)(x_bld))
    return _dense(cfg.d_model, "wo", self.dtype)(h_blf)


class T5LayerFF(nn.Module):
  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bld):
    h_bld = T5LayerNorm(self.config.layer_norm_epsilon, name="layer_norm")(x_bld)
    return x_bld + T5DenseReluDense(self.config, self.dtype, name="DenseReluDense")(h_bld)


class T5Block(nn.Module):
  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bld, bias_parts):
    x_bld = T5LayerSelfAttention(self.config, self.dtype, name="layer_0")(x_bld, bias_parts)
    return T5LayerFF(self.config, self.dtype, name="layer_1")(x_bld)


class T5Stack(nn.Module):
  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bld, attention_mask):
    cfg = self.config
    l = x_bld.shape[1]
    # HF keeps the table in block 0's SelfAttention; we read it there once and
    # pass the gathered [H, L, L] bias to every block.
    table_nh = self.param(
        "relative_attention_bias",
        nn.initializers.normal(1.0),
        (cfg.relative_attention_num_buckets, cfg.num_heads),
        jnp.float32,
    )
    bias_parts = (
        position_bias_hqk(
            table_nh, l, l, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        ),
        mask_bias_bk(attention_mask),
    )
    for i in range(cfg.num_layers):
      x_bld = T5Block(cfg, self.dtype, name=f"block_{i}")(x_bld, bias_parts)
    return T5LayerNorm(cfg.layer_norm_epsilon, name="final_layer_norm")(x_bld)


class T5EncoderModel(nn.Module):
  """input_ids, attention_mask: int [B, L] → last hidden state fp32 [B, L, d_model]."""

  config: T5Config
  dtype: Any = jnp.float32  # matmul dtype; params, norms, softmax and residual stay fp32

  @nn.compact
  def __call__(self, input_ids, attention_mask):
    cfg = self.config
    x_bld = nn.Embed(cfg.vocab_size, cfg.d_model, param_dtype=jnp.float32, name="shared")(input_ids)
    return T5Stack(cfg, self.dtype, name="encoder")(x_bld, attention_mask)


CONFIG_CLASS, MODEL_CLASS = T5Config, T5EncoderModel  # no max_positions: relative positions only

# ---------------------------------------------------------------- conversion

_REL_BIAS_HF = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"


def _canonical_t5_keys(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Brings T5EncoderModel / T5Model / bare-T5Stack saves to `shared.*` + `encoder.*` keys."""
  out: dict[str, np.ndarray] = {}
  for key, value in state.items():
    if key.startswith(("decoder.", "lm_head.")):
      continue
    if key.startswith(("block.", "final_layer_norm.", "embed_tokens.")):
      key = "encoder." + key
    out[key] = value
  if "shared.weight" not in out and "encoder.embed_tokens.weight" in out:
    out["shared.weight"] = out["encoder.embed_tokens.weight"]
  out.pop("encoder.embed_tokens.weight", None)  # tied copy of shared.weight
  return out


def params_from_hf(state: Mapping[str, np.ndarray], config: T5Config) -> dict:
  """HF T5 state dict (numpy, HF names) → {"params": ...} for `T5EncoderModel`."""
  params: dict = {}
  for key, value in _canonical_t5_keys(state).items():
    value = np.asarray(value, dtype=np.float32)
    if key == "shared.weight":
      path, leaf = ["shared", "embedding"], value
    elif key == _REL_BIAS_HF:
      path, leaf = ["encoder", "relative_attention_bias"], value
    else:
      *merged, last = re.sub(r"\.(\d+)\.", r"_\1.", key).split(".")  # block.3 → block_3
      if last != "weight":
        raise ValueError(f"T5 params_from_hf: unexpected key {key!r}")
      is_norm = merged[-1] in ("layer_norm", "final_layer_norm")
      path, leaf = merged + ["weight" if is_norm else "kernel"], value if is_norm else value.T
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = leaf
  check_params_tree(params, T5EncoderModel(config), "T5")
  return {"params": params}


def check_params_tree(params: dict, model: nn.Module, what: str) -> None:
  """Raises naming every missing / unexpected / mis-shaped parameter."""
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
