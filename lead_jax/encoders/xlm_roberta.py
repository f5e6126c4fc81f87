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
  """`BertConfig` with XLM-R's defaults (514 positions, one token type, pad id 1)."""

  max_position_embeddings: int = 514
  type_vocab_size: int = 1
  layer_norm_eps: float = 1e-5
  pad_token_id: int = 1

  @property
  def max_positions(self) -> int:
    """Longest input the position table can index (positions start past the pad id)."""
    return self.max_position_embeddings - self.pad_token_id - 1

  @classmethod
  def from_hf_config(cls, cfg: Mapping[str, Any]) -> XLMRobertaConfig:
    """Reads an HF `config.json` dict, with XLM-R's defaults for missing keys.

    Args:
      cfg: the decoded `config.json`.

    Returns:
      The config.

    Raises:
      ValueError: as `BertConfig.from_hf_config`.
      KeyError: a required size is missing.
    """
    base = bert.BertConfig.from_hf_config(
        {"max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5, **cfg}
    )
    fields = dataclasses.asdict(base)
    fields["pad_token_id"] = int(cfg["pad_token_id"]) if cfg.get("pad_token_id") is not None else 1
    return cls(**fields)


def position_ids(input_ids: jax.Array, pad_token_id: int) -> jax.Array:
  """HF `create_position_ids_from_input_ids`: non-pad tokens count from pad_token_id + 1.

  Args:
    input_ids: [B, L] token ids.
    pad_token_id: the padding id (pads get this position).

  Returns:
    int32 [B, L] position ids.
  """
  not_pad = (input_ids != pad_token_id).astype(jnp.int32)
  return jnp.cumsum(not_pad, axis=-1, dtype=jnp.int32) * not_pad + pad_token_id


class XLMRobertaModel(bert.BertModel):
  """(input_ids [B,L], attention_mask [B,L]) -> last hidden state [B,L,H]."""

  config: XLMRobertaConfig

  def position_ids(self, input_ids: jax.Array) -> jax.Array:
    """Positions as `position_ids` makes them, with the config's pad id.

    Args:
      input_ids: [B, L] token ids.

    Returns:
      int32 [B, L].
    """
    return position_ids(input_ids, self.config.pad_token_id)


def params_from_hf(state: Mapping[str, np.ndarray], config: XLMRobertaConfig) -> dict:
  """Converts an HF XLM-R / RoBERTa state dict; the tree is BERT's (see `bert.params_from_hf`).

  Args:
    state: numpy arrays under HF names, optionally prefixed "roberta.".
    config: the model's config.

  Returns:
    `{"params": tree}`.

  Raises:
    KeyError: a tensor is missing (named).
    ValueError: a tensor has the wrong shape (named).
  """
  return bert.params_from_hf(state, config)
