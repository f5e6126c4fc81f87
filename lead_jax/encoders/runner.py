"""Encoding runner: texts -> embeddings -> the resumable store.

Rows are processed block by block, in store order (the resumable writer takes
blocks strictly in order). Inside a block, texts are tokenized once, sorted by
length and cut into batches padded to one of a few bucket lengths, so jit compiles
at most one program per bucket and little compute goes to padding. Each batch runs
one jitted forward (fp32, or bf16 compute with `compute_dtype`), pooling, Dense and
L2 normalization, data-parallel over the local devices (batch axis sharded over a
1-D mesh, params replicated). Results are unsorted back to row order and written.

In a multi-process run (jax.distributed) each process embeds and writes only its
own block-aligned range of rows, on its own local devices; the store marks the
array complete once every range is in (see `lead_jax.store`). Blocks are the same
as in a one-process run, so each is embedded in the same batches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lead_jax import numerics


def bucket_lengths(max_length: int, smallest: int = 16) -> tuple[int, ...]:
  """The padded lengths a batch may take, so jit compiles one program per bucket.

  Args:
    max_length: the encoder's longest input, in tokens.
    smallest: the shortest bucket.

  Returns:
    Powers of two from `smallest` below `max_length`, then `max_length` itself.
  """
  out, b = [], smallest
  while b < max_length:
    out.append(b)
    b *= 2
  return tuple(out) + (max_length,)


@dataclasses.dataclass
class Runner:
  """Runs one encoder over lists of texts (length-bucketed, data-parallel).

  Attributes:
    encoder: has `tokenizer` (HF tokenizers, truncating at max_length), `params`,
      `embed_fn(params, ids, mask) -> [B, D]`, `max_length` and optionally
      `pad_token_id`.
    normalize: L2-normalise the embeddings.
    batch_size: sequences per forward pass (rounded up to a multiple of the devices).
    devices: the devices the batch is sharded over; default all local ones.
  """

  encoder: Any
  normalize: bool
  batch_size: int = 64
  devices: Sequence[Any] | None = None

  def __post_init__(self):
    devices = list(self.devices or jax.local_devices())
    self.n_dev = len(devices)
    self.batch_size = int(math.ceil(self.batch_size / self.n_dev) * self.n_dev)
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    self._batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self._params = jax.device_put(self.encoder.params, replicated)
    embed_fn, normalize = self.encoder.embed_fn, self.normalize

    def fwd(params, ids, mask):
      x = embed_fn(params, ids, mask).astype(jnp.float32)
      return numerics.l2_normalize(x) if normalize else x

    self._fwd: Callable = jax.jit(fwd)
    self.buckets = bucket_lengths(int(self.encoder.max_length))
    self.pad_id = int(getattr(self.encoder, "pad_token_id", 0) or 0)

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.encoder.tokenizer.encode_batch(list(texts))]

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """[len(texts), D] float32, in input order."""
    ids = self.tokenize(texts)
    lengths = np.fromiter((max(len(t), 1) for t in ids), np.int64, len(ids))
    order = np.argsort(lengths, kind="stable")
    out: list[tuple[np.ndarray, jax.Array]] = []
    B = self.batch_size
    for s in range(0, len(order), B):
      idx = order[s : s + B]
      L = next(b for b in self.buckets if b >= lengths[idx].max())
      ids_bl = np.full((B, L), self.pad_id, np.int32)
      mask_bl = np.zeros((B, L), np.int32)
      for r, i in enumerate(idx):
        t = ids[i][:L]
        ids_bl[r, : len(t)] = t
        mask_bl[r, : len(t)] = 1
      mask_bl[len(idx) :, 0] = 1  # padding rows: one visible token, results dropped
      ids_d = jax.device_put(ids_bl, self._batch_sharding)
      mask_d = jax.device_put(mask_bl, self._batch_sharding)
      out.append((idx, self._fwd(self._params, ids_d, mask_d)))  # async dispatch
    dim = out[0][1].shape[-1] if out else 0
    result = np.empty((len(texts), dim), np.float32)
    for idx, emb in out:
      result[idx] = np.asarray(emb)[: len(idx)]
    return result


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A registry model ready to embed: the runner-facing encoder plus what goes in meta.json."""

  spec: Any  # registry.ModelSpec, after spec_for_dir
  encoder: Any
  meta: dict


def load_encoder(
    name: str, *, compute_dtype: Any = jnp.float32, allow_pickle: bool = False
) -> Prepared:
  """A registry model (or a model directory) ready to embed, with its card's settings.

  The model card gives pooling, prefixes and normalisation; a directory's own
  sentence-transformers files win where present.

  Args:
    name: a registry name or a local model directory.
    compute_dtype: the forward pass's dtype (float32, or bfloat16 on accelerators).
    allow_pickle: allow `pytorch_model.bin` (pickle) weights.

  Returns:
    The encoder, its registry spec and the store metadata it writes.

  Raises:
    ValueError: an OpenAI model (they go through the OpenAI encoder).
  """
  from lead_jax.encoders import registry

  try:
    spec = registry.get(name)
  except KeyError:
    # An unregistered local directory: an HF BERT/MPNet/T5/XLM-R dir described by its own files.
    spec = registry.ModelSpec(name=name, hf_id=name, arch="bert", pooling="mean", normalize=True)
  if spec.source == "openai":
    raise ValueError(
        f"{name}: OpenAI models are embedded through the OpenAI encoder, not the Flax runner"
    )
  model_dir = registry.resolve_model_dir(name)
  spec = registry.spec_for_dir(spec, model_dir)
  if spec.arch == "static":
    from lead_jax.encoders.static import load_static_encoder

    encoder = load_static_encoder(model_dir)
    pooling = "mean"
  else:
    from lead_jax.encoders import loader
    from lead_jax.encoders import pooling as pooling_lib

    st = pooling_lib.read_st_modules(model_dir)
    has_st_pooling = st is not None and st.pooling is not None
    encoder = loader.load_hf_encoder(
        model_dir,
        allow_pickle=allow_pickle,
        dtype=compute_dtype,
        max_length=spec.max_length,
        pooling=None if has_st_pooling else pooling_lib.PoolingSpec(modes=(spec.pooling,)),
    )
    pooling = "+".join(encoder.pooling.modes)
  meta = {
      "model": name,
      "hf_id": spec.hf_id,
      "arch": spec.arch,
      "source": spec.source,
      "weights_digest": encoder.weights_digest,
      "pooling": pooling,
      "normalize": bool(spec.normalize),
      "max_length": int(encoder.max_length),
      "compute_dtype": jnp.dtype(compute_dtype).name,
  }
  return Prepared(spec, encoder, meta)
