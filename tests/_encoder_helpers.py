"""Helpers the encoder tests share: seeded tiny HF models, padded batches, installed models.

torch is imported inside the helpers that need it, so importing this module stays cheap.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
import pytest

from lead_jax.encoders import install, registry


def seeded_hf_model(model_cls, config, seed: int = 0, **kwargs):
  """A randomly initialised HF model in eval mode, its weights drawn after `torch.manual_seed`.

  Args:
    model_cls: a transformers model class.
    config: its config.
    seed: the torch seed.
    **kwargs: passed to `model_cls` (e.g. `add_pooling_layer=False`).

  Returns:
    The model.
  """
  import torch

  torch.manual_seed(seed)
  return model_cls(config, **kwargs).eval()


def torch_last_hidden(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Runs an HF torch model without gradients.

  Args:
    model: the model.
    ids: [B, L] token ids.
    mask: [B, L] 0/1 attention mask.

  Returns:
    Its last hidden state as numpy.
  """
  import torch

  with torch.no_grad():
    out = model(
        input_ids=torch.from_numpy(np.asarray(ids)).long(),
        attention_mask=torch.from_numpy(np.asarray(mask)).long(),
    )
  return out.last_hidden_state.numpy()


def right_padded_batch(
    rng: np.random.Generator, lengths: Sequence[int], vocab: int, pad_id: int, low: int = 3
) -> tuple[np.ndarray, np.ndarray]:
  """Random ids in [low, vocab), right-padded with `pad_id` to max(lengths).

  Args:
    rng: the generator.
    lengths: the real length of each row.
    vocab: one past the largest id.
    pad_id: the padding id (choose `low` above it so real tokens never equal it).
    low: the smallest id.

  Returns:
    (ids, mask), int32 [len(lengths), max(lengths)].
  """
  l = max(lengths)
  ids = rng.integers(low, vocab, size=(len(lengths), l)).astype(np.int32)
  mask = (np.arange(l)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
  return np.where(mask == 1, ids, pad_id).astype(np.int32), mask


def installed_model_dir(name: str) -> pathlib.Path:
  """An offline model's dir in the model cache; skips the test when it is not installed.

  Args:
    name: an offline model (see `install.INSTALLS`).

  Returns:
    The dir, holding a complete install.
  """
  d = registry.models_cache_dir() / name
  if not install.marker_ok(d, install.INSTALLS[name]):
    pytest.skip(
        f"{name} not installed in {d.parent} "
        f"(run python -m lead_jax.encoders.install --models={name})"
    )
  return d
