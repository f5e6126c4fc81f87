"""Translate stage: a store array mapped into another model's space by a saved stitch.

Reads `<store>/<dataset>/<split>/<kind>/<source>` block by block, applies the stitch
source→target found in `config.translate.stitch` (a closed-form `closed_form/` or an MLP
`mlp/d{k}_{objective}/` directory) and writes the new array (default
`<source>__to__<target>`) through the resumable store writer: a killed run resumes at the
last committed block and ends with the same bytes. The array is row-aligned with the
source (same rows_digest), so it can be searched with the target's own queries.

Its meta.json records provenance: source model and weights digest, stitch kind, method,
checkpoint directory, pair key, parameter digest (the array's `weights_digest`, so a
resume with a different stitch is refused), and λ (closed form) or depth/objective (MLP).
A stitch whose source model or dim does not match the array is refused.
"""

from __future__ import annotations

import time

import numpy as np
from absl import logging

from lead_jax import data, logs, numerics, store
from lead_jax.config import StudyConfig
from lead_jax.layout import RunLayout
from lead_jax.stitch import io as stitch_io


def run(cfg: StudyConfig, layout: RunLayout, stop_after_blocks: int | None = None) -> dict:
  """Translates one array as `cfg.translate` says; returns a summary.

  Args:
    cfg: the study config (`dataset`, `translate`).
    layout: the run layout (the store read, and the default stitch directory).
    stop_after_blocks: stop, unfinished, after this many blocks (tests of resumption).

  Returns:
    `{"array", "model", "rows", "resumed_from", "dim", "stitch", "method", "lam", "depth",
    "complete": True}`, or `{"array", "committed_rows", "complete": False}` when stopped.

  Raises:
    ValueError: `translate.source` / `target` unset, or the new name is a model's own.
    store.StoreError: the source array is missing, incomplete or not finite.
    stitch_io.StitchError: no stitch source→target, or it does not fit the array.
  """
  t = cfg.translate
  if not (t.source and t.target):
    raise ValueError("config.translate.source and config.translate.target must be set")
  name = data.dataset_name(cfg.dataset)
  root = layout.store_root
  path, meta, arr = store.open_complete(root, name, t.split, t.kind, t.source)
  stitch_dir = t.stitch or str(layout.closed_form)
  st = stitch_io.find(stitch_io.load(stitch_dir), t.source, t.target, where=stitch_dir)
  stitch_io.check_fits(st, meta["model"], int(meta["dim"]), str(path), meta.get("weights_digest"))
  new = t.name or f"{t.source}__to__{t.target}"
  if new in (t.source, t.target):
    raise ValueError(f"config.translate.name {new!r} would overwrite a model's own array")
  n = int(meta["n_rows"])
  keep = ("rows_digest", "pooling", "prefix", "chunker", "dataset_seed", "qrels_split")
  wmeta = {
      "weights_digest": st.digest,
      **{k: meta.get(k) for k in keep},
      "normalize": bool(t.normalize),
      "source": "translated",
      "source_weights_digest": meta.get("weights_digest"),
      "source_array": str(path.absolute()) if hasattr(path, "absolute") else str(path),
      **st.provenance(),
  }
  w = store.open_writer(
      t.out_store or root,
      name,
      t.split,
      t.kind,
      new,
      n_rows=n,
      dim=st.target_dim,
      meta=wmeta,
      dtype=t.store_dtype,
      block_rows=t.block_rows,
      overwrite=t.overwrite,
  )
  t0, start0 = time.time(), w.committed_rows
  progress = logs.Progress(f"translate {new}", n, "rows", start=start0)
  for done, start in enumerate(range(w.committed_rows, n, w.block_rows)):
    if stop_after_blocks is not None and done >= stop_after_blocks:
      return {"array": str(w.path), "committed_rows": w.committed_rows, "complete": False}
    x = np.asarray(arr[start : min(start + w.block_rows, n)].read().result(), np.float32)
    store.check_finite(x, str(path), start)
    y = st.apply(x)
    w.write(start, numerics.l2_normalize(y) if t.normalize else y)
    progress.set(w.next_row)
  w.finish({"translate_seconds": round(time.time() - t0, 3)})
  logging.info("%s: %d rows (%d resumed) in %.2fs", w.path, n, start0, time.time() - t0)
  return {
      "array": str(w.path),
      "model": new,
      "rows": n,
      "resumed_from": start0,
      "dim": st.target_dim,
      "stitch": st.checkpoint,
      "method": st.method,
      "lam": st.lam,
      "depth": st.depth,
      "complete": True,
  }
