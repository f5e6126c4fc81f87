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
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lead_jax.encoders.layers import (
    ACTIVATIONS,
    RelativeSelfAttention,
    check_params_tree,
    dense,
    relative_attention_bias,
)

MODEL_TYPES = ("t5",)


@dataclasses.dataclass(frozen=True)
class T5Config:
  """The fields of an HF `T5Config` the encoder needs (defaults: t5-base)."""

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
    """Reads an HF `config.json` dict; `feed_forward_proj` sets the activation and gating.

    Args:
      cfg: the decoded `config.json`.

    Returns:
      The config.

    Raises:
      ValueError: not a T5 config, or an unsupported `feed_forward_proj`.
    """
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
  return dense(features, name, dtype, use_bias=False)


class T5LayerSelfAttention(nn.Module):
  """Pre-norm residual self-attention sublayer."""

  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bld, bias_parts):
    cfg = self.config
    # T5: no biases, no 1/sqrt(d_kv) scaling (folded into the initialisation upstream).
    attn = RelativeSelfAttention(
        cfg.num_heads,
        cfg.d_kv,
        cfg.d_model,
        use_bias=False,
        scale_queries=False,
        dtype=self.dtype,
        name="SelfAttention",
    )
    h_bld = T5LayerNorm(cfg.layer_norm_epsilon, name="layer_norm")(x_bld)
    return x_bld + attn(h_bld, bias_parts)


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
  """Pre-norm residual feed-forward sublayer."""

  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bld):
    h_bld = T5LayerNorm(self.config.layer_norm_epsilon, name="layer_norm")(x_bld)
    return x_bld + T5DenseReluDense(self.config, self.dtype, name="DenseReluDense")(h_bld)


class T5Block(nn.Module):
  """One encoder block: self-attention then feed-forward."""

  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bld, bias_parts):
    x_bld = T5LayerSelfAttention(self.config, self.dtype, name="layer_0")(x_bld, bias_parts)
    return T5LayerFF(self.config, self.dtype, name="layer_1")(x_bld)


class T5Stack(nn.Module):
  """The encoder blocks plus the shared relative-position bias and the final norm."""

  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bld, attention_mask):
    cfg = self.config
    # HF keeps the table in block 0's SelfAttention; we own it here, gather it once
    # and pass the [H, L, L] bias to every block.
    bias_parts = relative_attention_bias(
        self,
        attention_mask,
        table_rows=cfg.relative_attention_num_buckets,
        num_heads=cfg.num_heads,
        num_buckets=cfg.relative_attention_num_buckets,
        max_distance=cfg.relative_attention_max_distance,
        init_stddev=1.0,
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
  """Converts an HF T5 state dict to `T5EncoderModel`'s variables.

  Args:
    state: numpy arrays under HF names (`T5EncoderModel`, `T5Model` or a bare `T5Stack`
      save; decoder and LM head keys are ignored).
    config: the model's config.

  Returns:
    `{"params": tree}`, fp32 numpy arrays.

  Raises:
    ValueError: an unexpected key, or a tree that does not fit `config` (every problem named).
  """
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
