"""Flax port of HF `XLMRobertaModel` (multilingual-e5); also plain RoBERTa.

Same maths and parameter tree as bert.py. The one difference: position ids
start at pad_token_id + 1 and count only non-pad tokens (HF
`create_position_ids_from_input_ids`); pad tokens get position pad_token_id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lead_jax.encoders import bert

MODEL_TYPES = ("xlm-roberta", "roberta")


@dataclasses.dataclass(frozen=True)
class XLMRobertaConfig(bert.BertConfig):
  max_position_embeddings: int = 514
  type_vocab_size: int = 1
  layer_norm_eps: float = 1e-5
  pad_token_id: int = 1

  @property
  def max_positions(self) -> int:
    return self.max_position_embeddings - self.pad_token_id - 1

  @classmethod
  def from_hf_config(cls, cfg: Mapping[str, Any]) -> XLMRobertaConfig:
    base = bert.BertConfig.from_hf_config(
        {"max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5, **cfg}
    )
    fields = dataclasses.asdict(base)
    fields["pad_token_id"] = int(cfg["pad_token_id"]) if cfg.get("pad_token_id") is not None else 1
    return cls(**fields)


def position_ids(input_ids: jax.Array, pad_token_id: int) -> jax.Array:
  not_pad = (input_ids != pad_token_id).astype(jnp.int32)
  return jnp.cumsum(not_pad, axis=-1, dtype=jnp.int32) * not_pad + pad_token_id


class XLMRobertaModel(bert.BertModel):
  """(input_ids [B,L], attention_mask [B,L]) -> last hidden state [B,L,H]."""

  config: XLMRobertaConfig

  def position_ids(self, input_ids: jax.Array) -> jax.Array:
    return position_ids(input_ids, self.config.pad_token_id)


def params_from_hf(state: Mapping[str, np.ndarray], config: XLMRobertaConfig) -> dict:
  return bert.params_from_hf(state, config)
