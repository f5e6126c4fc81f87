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
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lead_jax import data, store
from lead_jax.data import ChunkConfig, Rows


def bucket_lengths(max_length: int, smallest: int = 16) -> tuple[int, ...]:
  """Powers of two from `smallest` below max_length, then max_length itself."""
  out, b = [], smallest
  while b < max_length:
    out.append(b)
    b *= 2
  return tuple(out) + (max_length,)


def _l2_normalize(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclasses.dataclass
class Runner:
  """Runs one encoder over lists of texts. `encoder` has `tokenizer` (HF tokenizers,
  truncating at max_length), `params`, `embed_fn(params, ids, mask) -> [B, D]`,
  `max_length` and optionally `pad_token_id`."""

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
      return _l2_normalize(x) if normalize else x

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


def embed_rows_to_store(
    embed: Callable[[list[str]], np.ndarray],
    dim: int,
    rows: Rows,
    root,
    model: str,
    *,
    prefix: str = "",
    meta: dict,
    dtype: str = "float32",
    block_rows: int = 2048,
    overwrite: bool = False,
    log_every_s: float = 10.0,
    final_meta: Callable[[], dict] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> store.Writer:
  """Embeds `rows` (with `prefix` prepended) into the store, resuming a partial array.

  `embed(texts) -> [len(texts), dim]` is any encoder (`Runner.embed`, the OpenAI
  embedder); `final_meta()` adds run facts (e.g. truncation counts) at the end.
  With several processes (default: jax's) each embeds its own rows; all must call this,
  and process 0's `final_meta()` is the one recorded.
  """
  p = jax.process_index() if process_index is None else process_index
  n = jax.process_count() if process_count is None else process_count
  writer = store.open_writer(
      root,
      rows.dataset,
      rows.split,
      rows.kind,
      model,
      n_rows=len(rows),
      dim=dim,
      dtype=dtype,
      block_rows=block_rows,
      overwrite=overwrite,
      meta={**meta, "rows_digest": rows.digest, "prefix": prefix},
      process_index=p,
      process_count=n,
  )
  name = f"{rows.dataset}/{rows.split}/{rows.kind}/{model}" + (
      f" (process {p}/{n})" if n > 1 else ""
  )
  if writer.complete:
    logging.info("%s: complete (%d rows), skipping", name, writer.n_rows)
    return writer
  if writer.committed_rows:
    logging.info(
        "%s: resuming at row %d of [%d, %d)", name, writer.next_row, writer.start, writer.stop
    )
  t0, done0, last = time.time(), writer.next_row, 0.0
  for start in range(writer.next_row, writer.stop, writer.block_rows):
    stop = min(start + writer.block_rows, writer.stop)
    writer.write(start, embed([prefix + t for t in rows.texts[start:stop]]))
    now = time.time()
    if now - last >= log_every_s or stop == writer.stop:
      rate = (stop - done0) / max(now - t0, 1e-9)
      eta = (writer.stop - stop) / max(rate, 1e-9)
      logging.info(
          "%s: %d/%d rows, %.1f rows/s, ETA %.0fs",
          name,
          stop - writer.start,
          writer.stop - writer.start,
          rate,
          eta,
      )
      last = now
  writer.finish(final_meta() if final_meta else None)
  return writer


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A registry model ready to embed: the runner-facing encoder plus what goes in meta.json."""

  spec: Any  # registry.ModelSpec, after spec_for_dir
  encoder: Any
  meta: dict


def load_encoder(
    name: str, *, compute_dtype: Any = jnp.float32, allow_pickle: bool = False
) -> Prepared:
  """Registry name (or a model directory) -> encoder with the model card's pooling,
  prefixes and normalization; the directory's sentence-transformers files win where present."""
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


def embed_dataset(
    *,
    dataset,
    models,
    splits=("train", "val"),
    kinds=("corpus", "query"),
    out="checkpoints/store",
    max_docs=None,
    n_train=20_000,
    n_val=5_000,
    seed=0,
    qrels_split=None,
    chunk_cfg=None,
    batch_size=64,
    block_rows=2048,
    bf16=False,
    store_dtype="float32",
    allow_pickle=False,
    overwrite=False,
    openai_cfg=None,
    openai_api_key=None,
) -> dict:
  """Embeds a dataset's rows (each split × kind) with each model into the store at `out`.

  Complete arrays holding the same rows are skipped; partial ones resume. Names starting
  with "openai/" go through the OpenAI embedder, the rest through the Flax runner.
  Returns {model: "complete" | {"seconds", "rows"}}.
  """
  from lead_jax.encoders import openai_encoder

  chunk_cfg = chunk_cfg or ChunkConfig()
  ds = data.load(dataset, qrels_split)
  split_map = data.split_dataset(ds, n_train=n_train, n_val=n_val, max_docs=max_docs, seed=seed)
  rows = {(s, k): data.build_rows(ds, split_map[s], k, chunk_cfg) for s in splits for k in kinds}
  summary = {}
  for name in models:
    # an array with other rows (another cap or chunker) is not complete: open_writer refuses it below
    pending = [
        r
        for r in rows.values()
        if not store.is_complete(out, ds.name, r.split, r.kind, name, r.digest)
    ]
    if not pending:
      logging.info("%s: all arrays complete, skipping", name)
      summary[name] = "complete"
      continue
    t0 = time.time()
    if name.startswith(openai_encoder.PREFIX):
      cfg = dataclasses.replace(
          openai_cfg or openai_encoder.OpenAIConfig(model=""), model=openai_encoder.api_name(name)
      )
      emb = openai_encoder.OpenAIEmbedder(cfg, api_key=openai_api_key)
      embed, dim, model_meta, prefixes = emb.embed, emb.dim, emb.meta(), ("", "")
      final = emb.counters  # per array: each call reports and resets
    else:
      prep = load_encoder(
          name, compute_dtype=jnp.bfloat16 if bf16 else jnp.float32, allow_pickle=allow_pickle
      )
      run_ = Runner(prep.encoder, normalize=prep.spec.normalize, batch_size=batch_size)
      embed, dim, model_meta, final = run_.embed, int(prep.encoder.dim), prep.meta, None
      prefixes = (prep.spec.query_prefix, prep.spec.passage_prefix)
    meta = {
        **model_meta,
        "chunker": chunk_cfg.to_json(),
        "dataset_seed": seed,
        "qrels_split": ds.qrels_split,
        "dataset_cap": {"n_train": n_train, "n_val": n_val, "max_docs": max_docs, "seed": seed},
    }
    for r in pending:
      prefix = prefixes[0] if r.kind == "query" else prefixes[1]
      embed_rows_to_store(
          embed,
          dim,
          r,
          out,
          name,
          prefix=prefix,
          meta=meta,
          dtype=store_dtype,
          block_rows=block_rows,
          overwrite=overwrite,
          final_meta=final,
      )
    summary[name] = {"seconds": round(time.time() - t0, 1), "rows": sum(len(r) for r in pending)}
  return summary
