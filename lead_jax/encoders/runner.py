"""Encoding runner: texts -> embeddings -> the resumable store.

Rows are processed block by block, in store order (the resumable writer takes
blocks strictly in order). Inside a block, texts are tokenized once and run in one of
two ways, both giving every text the embedding it gets alone (up to float rounding):

* Packed (encoders with a `packed_embed_fn`: BERT, XLM-R, MPNet): texts are packed,
  longest first (first-fit decreasing), several to a row of `L` tokens, where `L` is the
  block's longest text rounded up to a power of two (at least `pack_length`); attention
  stays inside each text, positions restart at each text and pooling is per text. Rows
  go at most `batch_size` to a forward pass, shared evenly over the block's batches
  (`balanced_rows`). Short texts then cost what their own tokens cost, not a padded
  bucket's, and a block compiles one program.
* Padded (the other encoders, or `pack=False`): texts sorted longest first, cut into
  batches of `batch_size` (the last, partly filled batch holds the shortest texts),
  each padded to one of a few bucket lengths so jit compiles at most one program per
  bucket.

Each batch runs one jitted forward (fp32, or bf16 compute with `compute_dtype`; on CPU
compiled with `CPU_COMPILER_OPTIONS`), pooling, Dense and L2 normalization, data-parallel
over the local devices (batch axis sharded over a 1-D mesh, params replicated). Every batch is dispatched before any result is read
(JAX dispatch is asynchronous: the host builds and sends the next batch while the
current one runs); results are put back in row order and written.

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


# XLA:CPU routes dots through YNNPACK fusions by default (jax 0.10); on the 2-core AVX-512
# machine measured, its own (Eigen) dot kernels ran the encoders' matmuls ~25% faster and
# the whole forward ~8% faster (notes in BUILD_NOTES.md). Only for CPU devices.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
_options_ok: dict[str, bool] = {}


def compiler_options(devices: Sequence[Any] | None = None) -> dict[str, Any] | None:
  """The XLA options the runner compiles its forward passes with on `devices`.

  Args:
    devices: the devices the forward runs on; default the local ones.

  Returns:
    `CPU_COMPILER_OPTIONS` when every device is a CPU and this jaxlib accepts them (checked
    once, on a tiny program), else None (XLA's defaults).
  """
  devices = list(devices or jax.local_devices())
  if any(d.platform != "cpu" for d in devices):
    return None
  if "cpu" not in _options_ok:
    try:
      jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(
          np.zeros(2, np.float32)
      ).compile()
      _options_ok["cpu"] = True
    except Exception:  # noqa: BLE001 - an XLA without the option: run with its defaults
      _options_ok["cpu"] = False
  return dict(CPU_COMPILER_OPTIONS) if _options_ok["cpu"] else None


def pack_rows(lengths: Sequence[int], row_tokens: int, max_segments: int) -> list[list[int]]:
  """Packs texts into rows of `row_tokens` tokens, first-fit decreasing.

  Texts are placed longest first (ties in input order), each into the first row with
  room for it and fewer than `max_segments` texts, else into a new row. Deterministic:
  the same lengths always give the same rows.

  Args:
    lengths: tokens of each text, each in [1, row_tokens].
    row_tokens: tokens per row.
    max_segments: the most texts one row may hold.

  Returns:
    The rows, each a list of text indices in the order they sit in the row.

  Raises:
    ValueError: a length outside [1, row_tokens].
  """
  lengths = np.asarray(lengths, np.int64)
  if len(lengths) and (lengths.min() < 1 or lengths.max() > row_tokens):
    raise ValueError(f"text lengths must lie in [1, {row_tokens}]")
  order = np.argsort(-lengths, kind="stable")
  room = np.zeros(len(lengths), np.int64)
  count = np.zeros(len(lengths), np.int64)
  rows: list[list[int]] = []
  lo = 0  # rows before lo are closed: full, or with no room for the shortest text
  shortest = int(lengths.min()) if len(lengths) else 1
  for i in order:
    n = lengths[i]
    fits = (room[lo : len(rows)] >= n) & (count[lo : len(rows)] < max_segments)
    j = lo + int(np.argmax(fits)) if fits.size and fits.any() else len(rows)
    if j == len(rows):
      rows.append([])
      room[j] = row_tokens
    rows[j].append(int(i))
    room[j] -= n
    count[j] += 1
    while lo < len(rows) and (room[lo] < shortest or count[lo] >= max_segments):
      lo += 1
  return rows


def balanced_rows(n_rows: int, batch_size: int, step: int) -> int:
  """Rows per batch when `n_rows` rows go out in as few batches of <= `batch_size` as can.

  The rows are shared evenly over those batches and rounded up to a multiple of `step`,
  so every batch of a call has one shape (one compile) and padding stays under `step`
  rows a batch, where a fixed size would leave one short, mostly empty last batch.

  Args:
    n_rows: rows to send (> 0).
    batch_size: the most rows a batch may hold (a multiple of `step`, or below it).
    step: the row granularity (a multiple of the device count).

  Returns:
    Rows per batch, at most `batch_size`.
  """
  n_batches = -(-n_rows // batch_size)
  per = -(-n_rows // n_batches)
  return min(batch_size, -(-per // step) * step)


@dataclasses.dataclass
class Runner:
  """Runs one encoder over lists of texts (packed or length-bucketed, data-parallel).

  Attributes:
    encoder: has `tokenizer` (HF tokenizers, truncating at max_length), `params`,
      `embed_fn(params, ids, mask) -> [B, D]`, `max_length`, optionally `pad_token_id`,
      and, for packed rows, `packed_embed_fn` (see `loader.make_packed_embed_fn`) and a
      `module` whose `position_ids(ids)` gives a text's positions.
    normalize: L2-normalise the embeddings.
    batch_size: rows per forward pass (rounded up to a multiple of the devices): texts
      when padded, packed rows (each holding one or more texts) when packed.
    devices: the devices the batch is sharded over; default all local ones.
    pack: pack several texts into a row when the encoder can (see the module docstring).
    pack_length: the shortest packed row, in tokens.
  """

  encoder: Any
  normalize: bool
  batch_size: int = 64
  devices: Sequence[Any] | None = None
  pack: bool = True
  pack_length: int = 64

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

    opts = compiler_options(devices)
    self._fwd: Callable = jax.jit(fwd, compiler_options=opts)
    self.buckets = bucket_lengths(int(self.encoder.max_length))
    self.pad_id = int(getattr(self.encoder, "pad_token_id", 0) or 0)
    packed_fn = getattr(self.encoder, "packed_embed_fn", None) if self.pack else None
    self._packed_fwd: Callable | None = None
    if packed_fn is not None:

      def packed_fwd(params, ids, segment_ids, position_ids, n_segments):
        x = packed_fn(params, ids, segment_ids, position_ids, n_segments).astype(jnp.float32)
        return numerics.l2_normalize(x) if normalize else x

      self._packed_fwd = jax.jit(packed_fwd, static_argnames="n_segments", compiler_options=opts)
      self.pack_buckets = bucket_lengths(
          int(self.encoder.max_length), min(self.pack_length, int(self.encoder.max_length))
      )
    self._positions: dict[int, np.ndarray] = {}

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.encoder.tokenizer.encode_batch(list(texts))]

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """[len(texts), D] float32, in input order."""
    ids = self.tokenize(texts)
    if self._packed_fwd is not None and ids and min(map(len, ids)) > 0:
      return self._embed_packed(ids)
    return self._embed_padded(ids)

  def _put(self, *arrays: np.ndarray) -> list[jax.Array]:
    return [jax.device_put(a, self._batch_sharding) for a in arrays]

  def _embed_padded(self, ids: list[list[int]]) -> np.ndarray:
    lengths = np.fromiter((max(len(t), 1) for t in ids), np.int64, len(ids))
    order = np.argsort(-lengths, kind="stable")  # longest first: the last batch is the shortest
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
      out.append((idx, self._fwd(self._params, *self._put(ids_bl, mask_bl))))  # async dispatch
    return self._gather(len(ids), out)

  def positions(self, length: int) -> np.ndarray:
    """int32 [length]: the position ids the encoder gives a text of `length` tokens alone."""
    if length not in self._positions:
      module = getattr(self.encoder, "module", None)
      if module is not None and hasattr(module, "position_ids"):
        row = jnp.full((1, length), self.pad_id + 1, jnp.int32)  # no padding in the row
        self._positions[length] = np.asarray(module.position_ids(row), np.int32)[0]
      else:
        self._positions[length] = np.arange(length, dtype=np.int32)
    return self._positions[length]

  def _embed_packed(self, ids: list[list[int]]) -> np.ndarray:
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    L = next(b for b in self.pack_buckets if b >= lengths.max())
    S = max(1, L // 4)  # texts per row; a row of shorter texts is cut at S of them
    rows = pack_rows(lengths, L, S)
    pos_l = self.positions(L)
    out: list[tuple[np.ndarray, jax.Array]] = []
    step = min(self.batch_size, math.lcm(8, self.n_dev))
    R = balanced_rows(len(rows), self.batch_size, step)
    for r0 in range(0, len(rows), R):
      chunk = rows[r0 : r0 + R]
      ids_bl = np.full((R, L), self.pad_id, np.int32)
      seg_bl = np.zeros((R, L), np.int32)
      pos_bl = np.zeros((R, L), np.int32)
      slot_text = np.full(R * S, -1, np.int64)
      for r, row in enumerate(chunk):
        off = 0
        for s, i in enumerate(row):
          n = len(ids[i])
          ids_bl[r, off : off + n] = ids[i]
          seg_bl[r, off : off + n] = s + 1
          pos_bl[r, off : off + n] = pos_l[:n]
          slot_text[r * S + s] = i
          off += n
      emb = self._packed_fwd(self._params, *self._put(ids_bl, seg_bl, pos_bl), n_segments=S)
      out.append((slot_text, emb))  # async dispatch: the next batch is built while this runs
    return self._gather(len(ids), out)

  @staticmethod
  def _gather(n: int, out: list[tuple[np.ndarray, jax.Array]]) -> np.ndarray:
    """Puts batch results back in input order: index -1 (or past the index list) is padding."""
    dim = out[0][1].shape[-1] if out else 0
    result = np.empty((n, dim), np.float32)
    for idx, emb in out:
      emb = np.asarray(emb)[: len(idx)]
      keep = idx >= 0
      result[idx[keep]] = emb[keep]
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
