"""Flax port of HF `MPNetModel` (backbone, no pooler): all-mpnet-base-v2.

Post-LN BERT-style layers plus a T5-style relative-position attention bias: one
[num_buckets, H] table owned by the encoder, gathered once per forward and added
to every layer's scores. Absolute positions are RoBERTa-style: non-pad tokens
get padding_idx + 1, padding_idx + 2, ... (pads get padding_idx).

Parameter tree mirrors HF names: `embeddings/{word_embeddings,position_embeddings,LayerNorm}`,
`encoder/relative_attention_bias`, `encoder/layer_3/attention/attn/{q,k,v,o}`,
`encoder/layer_3/attention/LayerNorm`, `encoder/layer_3/{intermediate,output}/dense`,
`encoder/layer_3/output/LayerNorm`. `params_from_hf` is a key map onto it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from lead_jax.encoders.layers import (
    ACTIVATIONS,
    RelativeSelfAttention,
    check_params_tree,
    dense,
    layer_norm,
    relative_attention_bias,
)

MODEL_TYPES = ("mpnet",)

# HF's MPNetEncoder.compute_position_bias always buckets with its defaults
# num_buckets=32, max_distance=128, whatever relative_attention_num_buckets says
# (that only sizes the table). We do the same, so parity holds for any config.
_HF_BUCKETS, _HF_MAX_DISTANCE = 32, 128


@dataclasses.dataclass(frozen=True)
class MPNetConfig:
  """The fields of an HF `MPNetConfig` the backbone needs (defaults: mpnet-base)."""

  vocab_size: int = 30527
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-5
  max_position_embeddings: int = 514
  relative_attention_num_buckets: int = 32
  pad_token_id: int = 1

  @classmethod
  def from_hf_config(cls, cfg: Mapping[str, Any]) -> MPNetConfig:
    """Reads an HF `config.json` dict (unknown keys are ignored).

    Args:
      cfg: the decoded `config.json`.

    Returns:
      The config.

    Raises:
      ValueError: not an MPNet config, an unsupported activation, heads that do not divide
        `hidden_size`, or fewer than 32 relative-attention buckets.
    """
    if cfg.get("model_type", "mpnet") not in MODEL_TYPES:
      raise ValueError(
          f"MPNetConfig.from_hf_config: model_type {cfg.get('model_type')!r} is not mpnet"
      )
    fields = {f.name for f in dataclasses.fields(cls)}
    out = cls(**{k: v for k, v in cfg.items() if k in fields})
    if out.hidden_act not in ACTIVATIONS:
      raise ValueError(f"MPNet hidden_act {out.hidden_act!r} is not supported")
    if out.hidden_size % out.num_attention_heads:
      raise ValueError(
          f"MPNet hidden_size {out.hidden_size} not divisible by {out.num_attention_heads} heads"
      )
    if out.relative_attention_num_buckets < _HF_BUCKETS:
      # HF would index past the table; jax would silently clamp.
      raise ValueError(
          f"MPNet relative_attention_num_buckets must be >= {_HF_BUCKETS} (HF buckets with 32)"
      )
    return out

  @property
  def max_positions(self) -> int:
    """Longest sequence the absolute position table covers (512 for mpnet-base)."""
    return self.max_position_embeddings - self.pad_token_id - 1


class MPNetAttention(nn.Module):
  """Post-LN residual self-attention sublayer (with HF's bias, scaled queries)."""

  config: MPNetConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bld, bias_parts):
    cfg = self.config
    d, h = cfg.hidden_size, cfg.num_attention_heads
    attn = RelativeSelfAttention(
        h, d // h, d, use_bias=True, scale_queries=True, dtype=self.dtype, name="attn"
    )
    y_bld = attn(x_bld, bias_parts)
    return layer_norm(cfg.layer_norm_eps)(y_bld + x_bld)


class MPNetIntermediate(nn.Module):
  """The feed-forward up-projection and activation."""

  config: MPNetConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bld):
    cfg = self.config
    return ACTIVATIONS[cfg.hidden_act](dense(cfg.intermediate_size, "dense", self.dtype)(x_bld))


class MPNetOutput(nn.Module):
  """The feed-forward down-projection, residual and LayerNorm."""

  config: MPNetConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h_blf, x_bld):
    y_bld = dense(self.config.hidden_size, "dense", self.dtype)(h_blf)
    return layer_norm(self.config.layer_norm_eps)(y_bld + x_bld)


class MPNetLayer(nn.Module):
  """One post-LN transformer layer."""

  config: MPNetConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bld, bias_parts):
    x_bld = MPNetAttention(self.config, self.dtype, name="attention")(x_bld, bias_parts)
    h_blf = MPNetIntermediate(self.config, self.dtype, name="intermediate")(x_bld)
    return MPNetOutput(self.config, self.dtype, name="output")(h_blf, x_bld)


def mpnet_position_ids(input_ids, config: MPNetConfig):
  """HF `create_position_ids_from_input_ids`: cumsum over non-pad ids, offset by padding_idx.

  Args:
    input_ids: int [B, L].
    config: the model's config (its pad id).

  Returns:
    int32 [B, L]: non-pad tokens count from pad_token_id + 1, pads get pad_token_id.
  """
  keep_bl = (input_ids != config.pad_token_id).astype(jnp.int32)
  return jnp.cumsum(keep_bl, axis=1, dtype=jnp.int32) * keep_bl + config.pad_token_id


class MPNetEmbeddings(nn.Module):
  """Word + RoBERTa-style absolute position embeddings, then LayerNorm: ids -> [B,L,D]."""

  config: MPNetConfig

  @nn.compact
  def __call__(self, input_ids, position_ids=None):
    cfg = self.config
    pos_bl = position_ids if position_ids is not None else mpnet_position_ids(input_ids, cfg)
    embed = lambda n, name: nn.Embed(n, cfg.hidden_size, param_dtype=jnp.float32, name=name)
    x_bld = embed(cfg.vocab_size, "word_embeddings")(input_ids)
    x_bld = x_bld + embed(cfg.max_position_embeddings, "position_embeddings")(pos_bl)
    return layer_norm(cfg.layer_norm_eps)(x_bld)


class MPNetEncoder(nn.Module):
  """The layer stack plus the relative-position bias table they share."""

  config: MPNetConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_bld, attention_mask, segment_ids=None):
    cfg = self.config
    bias_parts = relative_attention_bias(
        self,
        attention_mask,
        segment_ids=segment_ids,
        table_rows=cfg.relative_attention_num_buckets,
        num_heads=cfg.num_attention_heads,
        num_buckets=_HF_BUCKETS,
        max_distance=_HF_MAX_DISTANCE,
        init_stddev=0.02,
    )
    for i in range(cfg.num_hidden_layers):
      x_bld = MPNetLayer(cfg, self.dtype, name=f"layer_{i}")(x_bld, bias_parts)
    return x_bld


class MPNetModel(nn.Module):
  """input_ids, attention_mask: int [B, L] → last hidden state fp32 [B, L, H].

  Packed rows also pass `segment_ids` and `position_ids` (see `bert.BertModel`).
  """

  config: MPNetConfig
  dtype: Any = jnp.float32  # matmul dtype; params, LayerNorm, softmax and residual stay fp32
  SUPPORTS_PACKING = True  # __call__ takes segment_ids and position_ids

  def position_ids(self, input_ids):
    """Absolute positions of each row as HF makes them (see `mpnet_position_ids`).

    Args:
      input_ids: int [B, L].

    Returns:
      int32 [B, L].
    """
    return mpnet_position_ids(input_ids, self.config)

  @nn.compact
  def __call__(self, input_ids, attention_mask, segment_ids=None, position_ids=None):
    if input_ids.shape[1] > self.config.max_positions:
      raise ValueError(f"MPNet: sequence length {input_ids.shape[1]} exceeds the position table")
    x_bld = MPNetEmbeddings(self.config, name="embeddings")(input_ids, position_ids)
    return MPNetEncoder(self.config, self.dtype, name="encoder")(x_bld, attention_mask, segment_ids)


CONFIG_CLASS, MODEL_CLASS = MPNetConfig, MPNetModel

# ---------------------------------------------------------------- conversion

_EMBEDDINGS = ("word_embeddings", "position_embeddings", "relative_attention_bias")


def params_from_hf(state: Mapping[str, np.ndarray], config: MPNetConfig) -> dict:
  """Converts an HF MPNet state dict to `MPNetModel`'s variables.

  Args:
    state: numpy arrays under HF names, with or without the "mpnet." prefix (pooler,
      LM and classifier heads and buffers are ignored).
    config: the model's config.

  Returns:
    `{"params": tree}`, fp32 numpy arrays.

  Raises:
    ValueError: the tree does not fit `config` (every problem named).
  """
  params: dict = {}
  for key, value in state.items():
    key = key.removeprefix("mpnet.")
    if not key.startswith(("embeddings.", "encoder.")) or key.endswith("position_ids"):
      continue  # pooler, lm_head, classifier heads, buffers
    *path, last = re.sub(r"\.(\d+)\.", r"_\1.", key).split(".")  # layer.3 → layer_3
    value = np.asarray(value, dtype=np.float32)
    if path[-1] in _EMBEDDINGS:
      if path[-1] == "relative_attention_bias":
        path, last = path[:-1], "relative_attention_bias"
      else:
        last = "embedding"
    elif path[-1] == "LayerNorm":
      last = {"weight": "scale", "bias": "bias"}[last]
    elif last == "weight":
      last, value = "kernel", value.T
    node = params
    for name in path:
      node = node.setdefault(name, {})
    node[last] = value
  check_params_tree(params, MPNetModel(config), "MPNet")
  return {"params": params}
