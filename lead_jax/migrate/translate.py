"""Translate: the whole collection through the calibrated stitch into a NEW collection.

    from lead_jax.migrate import translate
    translate.run(cfg)    # cfg.migrate.source → cfg.migrate.target, stitch from the work dir

The source is only read. Everything is checked before the target exists (the source's
ids, dims and vectors; the stitch against the source's model and dim; the target's
address), so bad input leaves nothing behind. The target is created with its provenance
in the collection's metadata (source, models, stitch method and digest, K, the retention
estimate and gate verdict), then written in batches of `migrate.batch_rows` rows in
source order, each batch one atomic (LanceDB, zarr) or idempotent-by-id (Chroma) write,
and finally marked complete.

Resume (`migrate.resume`): a killed run leaves a target whose metadata says incomplete.
Rerunning with `resume` checks the target was started from the same source with the
same stitch digest, reads the ids already in it, and writes only the batches' missing
ids, so after any SIGKILL every id ends up in the target exactly once. It then verifies
the target holds exactly the source's ids before marking it complete. Without `resume`
an existing target is refused.
"""

from __future__ import annotations

import time

import numpy as np
from absl import logging

from lead_jax import files, logs
from lead_jax.config import StudyConfig
from lead_jax.migrate import calibrate, serve, stores

PROVENANCE_VERSION = 1


def provenance(cfg: StudyConfig, col: stores.Collection, st: serve.Stitch, calib: dict) -> dict:
  """What the target collection's metadata records of the migration (no secrets).

  Args:
    cfg: the study config.
    col: the source collection.
    st: the translate-direction stitch.
    calib: calibration.json.

  Returns:
    The provenance dict.
  """
  est = calib["estimates"][st.method]["translate"]
  primary = calib["primary"]
  gate = files.read_json(calibrate.work_dir(cfg) / "gate.json", missing_ok=True) or {}
  return {
      "lead_jax_migration": PROVENANCE_VERSION,
      "model": calib["target_model"],  # the space the vectors are in now
      "source": str(col.address),
      "source_model": calib["source_model"],
      "target_model": calib["target_model"],
      "stitch_method": st.method,
      "stitch_digest": st.digest,
      "stitch_dir": str(st.saved.checkpoint),
      "k": calib["k"],
      "retention_metric": primary,
      "retention_estimate": est[primary]["estimate"],
      "retention_ci": [est[primary]["lo"], est[primary]["hi"]],
      "gate": gate.get("verdict", ""),
      "normalize": bool(cfg.migrate.normalize),
      "n_rows": col.n,
      "dim": st.target_dim,
  }


def _check_target(b, target: stores.Address, prov: dict, resume: bool) -> bool:
  """Whether the target exists and is resumable; raises when it may not be written."""
  if not b.exists(target):
    return False
  if not resume:
    raise stores.MigrateError(
        f"{target}: the target collection already exists; pass --config.migrate.resume=True "
        "to continue a killed translate, or name a new target"
    )
  have = b.read_meta(target)
  for key in ("source", "stitch_digest", "source_model", "target_model"):
    if have.get(key) != prov[key]:
      raise stores.MigrateError(
          f"{target}: cannot resume: it was written with {key} = {have.get(key)!r}, this run "
          f"has {prov[key]!r}"
      )
  return True


def run(cfg: StudyConfig) -> dict:
  """Translates `migrate.source` into the new collection `migrate.target` (module docstring).

  Args:
    cfg: the study config (`migrate`).

  Returns:
    `{"target", "rows", "written", "resumed", "method", "stitch_digest", "complete"}`
    (`complete` False when stopped by `migrate.stop_after_batches`).

  Raises:
    MigrateError: bad source, a stitch for other models or dims, the target is the
      source, or it exists without `resume` (or with other provenance).
  """
  m = cfg.migrate
  t0 = time.time()
  if not m.target:
    raise stores.MigrateError("config.migrate.target must name the new collection")
  src = stores.parse(m.source, "config.migrate.source")
  target = stores.parse(m.target, "config.migrate.target")
  if (src.backend, src.location, src.name) == (target.backend, target.location, target.name):
    raise stores.MigrateError(f"{target}: the target is the source; translate never overwrites it")
  work = calibrate.work_dir(cfg)
  calib = files.read_json(work / serve.CALIBRATION_JSON, missing_ok=True)
  if calib is None:
    raise stores.MigrateError(f"{work}: no calibration.json; run calibrate first")
  col = stores.read(src, cfg)
  model = stores.model_of(col, m.source_model)
  st = serve.Stitch.load(
      work, direction="translate", method=None if m.method == "auto" else m.method
  )
  if st.source != model or (m.target_model and st.target != m.target_model):
    raise stores.MigrateError(
        f"{col.address}: the stitch in {work} maps {st.source!r} → {st.target!r}, but the "
        f"collection holds {model!r} vectors"
        + (f" and the new model is {m.target_model!r}" if m.target_model else "")
    )
  if st.source_dim != col.dim:
    raise stores.MigrateError(
        f"{col.address}: dim mismatch: the collection has dim {col.dim}, the stitch "
        f"{st.source}→{st.target} takes dim {st.source_dim} (id {col.ids[0]!r})"
    )
  if calib["source"] != str(col.address):
    logging.warning("calibrated on %s, translating %s", calib["source"], col.address)
  prov = provenance(cfg, col, st, calib)
  b = stores.backend(target)
  resumed = _check_target(b, target, prov, m.resume)
  meta = dict(prov)
  if target.backend == "zarr":
    meta.update({"_ids": col.ids, "_texts": col.texts, "_block_rows": m.batch_rows})
  if not resumed:
    b.create(target, st.target_dim, meta)
  b.begin(target, st.target_dim, meta)
  done = b.done_ids(target) if resumed else set()
  extra = done - set(col.ids)
  if extra:
    raise stores.MigrateError(f"{target}: holds id {sorted(extra)[0]!r}, which the source lacks")
  n, written, batches = col.n, 0, 0
  progress = logs.Progress(f"translate {target.name}", n, "rows", start=len(done))
  for s in range(0, n, m.batch_rows):
    e = min(s + m.batch_rows, n)
    todo = [i for i in range(s, e) if col.ids[i] not in done]
    if not todo:
      continue
    if m.stop_after_batches and batches >= m.stop_after_batches:
      return {"target": str(target), "written": written, "complete": False}
    sel = np.arange(s, e) if target.backend == "zarr" else np.asarray(todo)
    y = st.apply(col.vectors[sel]) if len(sel) > 1 else st.apply_jit(col.vectors[sel])
    texts = [col.texts[i] for i in sel] if col.texts is not None else None
    b.write(target, s, [col.ids[i] for i in sel], y, texts)
    written += len(todo)
    batches += 1
    progress.set(len(done) + written)
  have = b.done_ids(target)
  if have != set(col.ids):
    missing = sorted(set(col.ids) - have)
    raise stores.MigrateError(
        f"{target}: after writing, {len(missing)} ids are missing (first {missing[:1]})"
    )
  b.finish(target, {**prov, "translate_seconds": round(time.time() - t0, 2)})
  logging.info("%s: %d rows (%d written now) in %.1fs", target, n, written, time.time() - t0)
  return {
      "target": str(target),
      "rows": n,
      "written": written,
      "resumed": resumed,
      "method": st.method,
      "stitch_digest": st.digest,
      "complete": True,
  }
