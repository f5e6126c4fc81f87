"""Flax port of HF `BertModel` (bge, e5, gte, UAE, mxbai, all-MiniLM, paraphrase-MiniLM).

Parameter tree mirrors HF names so conversion is a key map:

  embeddings/{word,position,token_type}_embeddings/embedding, embeddings/LayerNorm/{scale,bias}
  encoder/layer_{i}/attention/self/{query,key,value}/{kernel [H,N,D], bias [N,D]}
  encoder/layer_{i}/attention/output/{dense/{kernel [N,D,H], bias}, LayerNorm}
  encoder/layer_{i}/intermediate/dense, encoder/layer_{i}/output/{dense, LayerNorm}

The attention projections keep a head axis in the kernel ([H, N, D]) so no
reshape/transpose appears in the forward pass; the pooler is not ported
(sentence embedders pool the last hidden state themselves).

xlm_roberta.py reuses everything here; it only changes how position ids are made.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lead_jax.encoders.layers import ACTIVATIONS, attention_bias, dense, layer_norm

MODEL_TYPES = ("bert",)


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The fields of an HF `BertConfig` the forward pass needs.

  Raises:
    ValueError: `hidden_act` is not in `ACTIVATIONS`, or the heads do not divide
      `hidden_size`.
  """

  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0

  def __post_init__(self):
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(
          f"hidden_act={self.hidden_act!r} not supported; known: {sorted(ACTIVATIONS)}"
      )
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(
          f"hidden_size={self.hidden_size} not divisible by "
          f"num_attention_heads={self.num_attention_heads}"
      )

  @property
  def head_dim(self) -> int:
    """Width of one attention head."""
    return self.hidden_size // self.num_attention_heads

  @property
  def max_positions(self) -> int:
    """Longest input (tokens, specials included) the position table can index."""
    return self.max_position_embeddings

  @classmethod
  def from_hf_config(cls, cfg: Mapping[str, Any]) -> BertConfig:
    """Reads an HF `config.json` dict (missing optional keys take HF's defaults).

    Args:
      cfg: the decoded `config.json`.

    Returns:
      The config.

    Raises:
      ValueError: relative position embeddings, or an unsupported activation.
      KeyError: a required size is missing.
    """
    pos = cfg.get("position_embedding_type", "absolute")
    if pos != "absolute":
      raise ValueError(f"position_embedding_type={pos!r} not supported (only 'absolute')")
    act = cfg.get("hidden_act", "gelu")
    if not isinstance(act, str):
      raise ValueError(f"hidden_act={act!r} must be a string")
    return cls(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=int(cfg["num_attention_heads"]),
        intermediate_size=int(cfg["intermediate_size"]),
        hidden_act=act,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 512)),
        type_vocab_size=int(cfg.get("type_vocab_size", 2)),
        layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
        pad_token_id=int(cfg.get("pad_token_id") or 0),
    )


class _SelfAttention(nn.Module):
  config: BertConfig
  dtype: Any

  @nn.compact
  def __call__(self, x_blh, bias_b1qm):
    c = self.config
    proj = lambda name: nn.DenseGeneral(
        (c.num_attention_heads, c.head_dim), dtype=self.dtype, name=name
    )
    q_blnd = proj("query")(x_blh)
    k_bmnd = proj("key")(x_blh)
    v_bmnd = proj("value")(x_blh)
    # XLA path: logits and softmax in fp32, probabilities cast back to the compute dtype.
    return jax.nn.dot_product_attention(
        q_blnd, k_bmnd, v_bmnd, bias=bias_b1qm, scale=1.0 / math.sqrt(c.head_dim)
    )


class _SelfOutput(nn.Module):
  config: BertConfig
  dtype: Any

  @nn.compact
  def __call__(self, ctx_blnd, residual_blh):
    c = self.config
    y_blh = nn.DenseGeneral(c.hidden_size, axis=(-2, -1), dtype=self.dtype, name="dense")(ctx_blnd)
    return layer_norm(c.layer_norm_eps)(y_blh + residual_blh)


class _Attention(nn.Module):
  config: BertConfig
  dtype: Any

  @nn.compact
  def __call__(self, x_blh, bias_b11m):
    ctx_blnd = _SelfAttention(self.config, self.dtype, name="self")(x_blh, bias_b11m)
    return _SelfOutput(self.config, self.dtype, name="output")(ctx_blnd, x_blh)


class _Intermediate(nn.Module):
  config: BertConfig
  dtype: Any

  @nn.compact
  def __call__(self, x_blh):
    c = self.config
    return ACTIVATIONS[c.hidden_act](dense(c.intermediate_size, "dense", self.dtype)(x_blh))


class _Output(nn.Module):
  config: BertConfig
  dtype: Any

  @nn.compact
  def __call__(self, h_bli, residual_blh):
    c = self.config
    y_blh = dense(c.hidden_size, "dense", self.dtype)(h_bli)
    return layer_norm(c.layer_norm_eps)(y_blh + residual_blh)


class BertLayer(nn.Module):
  """One post-LN transformer layer: (x [B,L,H], mask bias [B,1,1,L]) -> [B,L,H]."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_blh, bias_b11m):
    a_blh = _Attention(self.config, self.dtype, name="attention")(x_blh, bias_b11m)
    h_bli = _Intermediate(self.config, self.dtype, name="intermediate")(a_blh)
    return _Output(self.config, self.dtype, name="output")(h_bli, a_blh)


class BertEncoder(nn.Module):
  """The layer stack: (x [B,L,H], attention_mask [B,L] 0/1, segment_ids) -> [B,L,H].

  `segment_ids` (int [B,L], 0 for padding), when given, restricts attention to each
  packed text (see `layers.segment_bias_bqk`).
  """

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_blh, attention_mask, segment_ids=None):
    bias_b1qm = attention_bias(attention_mask, segment_ids)
    for i in range(self.config.num_hidden_layers):
      x_blh = BertLayer(self.config, self.dtype, name=f"layer_{i}")(x_blh, bias_b1qm)
    return x_blh


class BertEmbeddings(nn.Module):
  """Word + token type 0 + position embeddings, then LayerNorm: (ids, position ids) -> [B,L,H]."""

  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, position_ids):
    c = self.config
    embed = lambda n, name: nn.Embed(n, c.hidden_size, name=name)
    x_blh = embed(c.vocab_size, "word_embeddings")(input_ids)
    # token_type_ids are all zero for sentence embedders: add row 0 of the table.
    x_blh = x_blh + embed(c.type_vocab_size, "token_type_embeddings").embedding[0]
    x_blh = x_blh + embed(c.max_position_embeddings, "position_embeddings")(position_ids)
    return layer_norm(c.layer_norm_eps)(x_blh)


class BertModel(nn.Module):
  """(input_ids [B,L] int, attention_mask [B,L] 0/1) -> last hidden state [B,L,H] (fp32).

  Packed rows (several texts one after another in a row, see `lead_jax.encoders.runner`)
  also pass `segment_ids` (1, 2, ... per text, 0 for padding) and `position_ids` (each
  text's own positions, as `position_ids` gives them for the text alone).
  """

  config: BertConfig
  dtype: Any = jnp.float32  # matmul compute dtype; params, LayerNorm and softmax stay fp32
  SUPPORTS_PACKING = True  # __call__ takes segment_ids and position_ids

  def position_ids(self, input_ids: jax.Array) -> jax.Array:
    """Absolute positions 0..L-1 of each row.

    Args:
      input_ids: [B, L] token ids.

    Returns:
      int32 [B, L].
    """
    return jnp.broadcast_to(jnp.arange(input_ids.shape[-1], dtype=jnp.int32), input_ids.shape)

  @nn.compact
  def __call__(self, input_ids, attention_mask, segment_ids=None, position_ids=None):
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if position_ids is None:
      position_ids = self.position_ids(input_ids)
    x_blh = BertEmbeddings(self.config, name="embeddings")(input_ids, position_ids)
    return BertEncoder(self.config, self.dtype, name="encoder")(x_blh, attention_mask, segment_ids)


# --------------------------------------------------------------------------- conversion

_PREFIXES = ("bert.", "roberta.", "model.")


def strip_prefix(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops a leading "bert."/"roberta."/"model." when the embeddings are found under it.

  Args:
    state: an HF state dict.

  Returns:
    The keys under that prefix, without it (and without the keys outside it), or a copy
    of `state` when no prefix holds the embeddings.
  """
  for p in _PREFIXES:
    if f"{p}embeddings.word_embeddings.weight" in state:
      return {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
  return dict(state)


def params_from_hf(state: Mapping[str, np.ndarray], config: BertConfig) -> dict:
  """Converts an HF BERT state dict to this module's variables.

  Linear weights [out, in] become kernels [in, out]; attention kernels get a
  head axis. Old "gamma"/"beta" LayerNorm names are accepted. Pooler, MLM heads
  and buffers are ignored.

  Args:
    state: numpy arrays under HF names, optionally prefixed "bert."/"roberta."/"model.".
    config: the model's config.

  Returns:
    `{"params": tree}`, contiguous fp32 numpy arrays.

  Raises:
    KeyError: a tensor is missing (named).
    ValueError: a tensor has the wrong shape (named).
  """
  sd = strip_prefix(state)
  c = config
  H, N, D = c.hidden_size, c.num_attention_heads, c.head_dim

  def get(key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in sd:
      alt = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
          "LayerNorm.bias", "LayerNorm.beta"
      )
      if alt not in sd:
        raise KeyError(f"checkpoint lacks tensor {key!r} (have e.g. {sorted(sd)[:5]})")
      key = alt
    a = np.asarray(sd[key], dtype=np.float32)
    if a.shape != shape:
      raise ValueError(f"tensor {key!r} has shape {a.shape}, config expects {shape}")
    return a

  def ln(prefix: str) -> dict:
    return {"scale": get(f"{prefix}.weight", (H,)), "bias": get(f"{prefix}.bias", (H,))}

  def linear(prefix: str, n_out: int, n_in: int) -> dict:
    return {
        "kernel": get(f"{prefix}.weight", (n_out, n_in)).T,
        "bias": get(f"{prefix}.bias", (n_out,)),
    }

  def heads_in(prefix: str) -> dict:  # [N*D, H] -> kernel [H, N, D]
    return {
        "kernel": get(f"{prefix}.weight", (H, H)).T.reshape(H, N, D),
        "bias": get(f"{prefix}.bias", (H,)).reshape(N, D),
    }

  emb = {
      "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight", (c.vocab_size, H))},
      "position_embeddings": {
          "embedding": get("embeddings.position_embeddings.weight", (c.max_position_embeddings, H))
      },
      "token_type_embeddings": {
          "embedding": get("embeddings.token_type_embeddings.weight", (c.type_vocab_size, H))
      },
      "LayerNorm": ln("embeddings.LayerNorm"),
  }
  layers = {}
  for i in range(c.num_hidden_layers):
    p = f"encoder.layer.{i}"
    layers[f"layer_{i}"] = {
        "attention": {
            "self": {n: heads_in(f"{p}.attention.self.{n}") for n in ("query", "key", "value")},
            "output": {
                "dense": {
                    "kernel": get(f"{p}.attention.output.dense.weight", (H, H)).T.reshape(N, D, H),
                    "bias": get(f"{p}.attention.output.dense.bias", (H,)),
                },
                "LayerNorm": ln(f"{p}.attention.output.LayerNorm"),
            },
        },
        "intermediate": {"dense": linear(f"{p}.intermediate.dense", c.intermediate_size, H)},
        "output": {
            "dense": linear(f"{p}.output.dense", H, c.intermediate_size),
            "LayerNorm": ln(f"{p}.output.LayerNorm"),
        },
    }
  # Contiguous copies: .T views would make device_put copy anyway, do it once here.
  tree = {"embeddings": emb, "encoder": layers}
  return {"params": jax.tree.map(np.ascontiguousarray, tree)}
