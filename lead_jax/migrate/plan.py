"""Plan: what is in a collection, what is wrong with it, and what calibration will cost.

    from lead_jax.migrate import plan
    report = plan.run(cfg)       # cfg.migrate.source (+ target_model for the cost)

Reads the collection (never writes), and reports its count, dim, the model its metadata
records, the L2 norms of its vectors (min / mean / max / std, and the share within 1e-3
of 1), how many rows have texts, and every problem (`stores.check_rows` in report mode:
missing and duplicate ids, rows without vectors, dim mismatches, NaN/Inf vectors; texts
missing for the ids calibrate will sample). The cost of calibration is the texts to embed
(the K sampled ones, plus the queries judging them with `migrate.queries`) and the time
at the new model's rate, measured here by embedding `migrate.probe` sampled texts (after
one warm-up call, so compile time is left out and reported apart).
"""

from __future__ import annotations

import time

import numpy as np

from lead_jax.config import StudyConfig
from lead_jax.migrate import calibrate, stores


def run(cfg: StudyConfig) -> dict:
  """The plan report of `cfg.migrate.source` (module docstring).

  Args:
    cfg: the study config (`migrate`).

  Returns:
    `{"collection", "rows", "dim", "model", "norms", "texts", "problems", "ok",
    "calibration": {…}}`.

  Raises:
    MigrateError: the collection does not exist or is empty, or its address is bad.
  """
  m = cfg.migrate
  problems: list[str] = []
  col = stores.read(m.source, cfg, report=problems)
  finite = np.isfinite(col.vectors).all(axis=1)
  norms = np.linalg.norm(col.vectors[finite], axis=1) if finite.any() else np.zeros(1)
  idx = calibrate.sample(col.n, m.k, m.seed)
  have_text = 0 if col.texts is None else sum(t is not None and t != "" for t in col.texts)
  missing_sampled = []
  if col.texts is None:
    problems.append("the collection has no texts (give them with config.migrate.texts)")
  else:
    missing_sampled = [col.ids[i] for i in idx if not col.texts[i]]
    if missing_sampled:
      problems.append(
          f"{len(missing_sampled)} of the {len(idx)} sampled ids have no text "
          f"(first {missing_sampled[:3]})"
      )
  model = col.meta.get("model") or col.meta.get("target_model") or m.source_model or ""
  if m.source_model and model and m.source_model != model:
    problems.append(f"config.migrate.source_model {m.source_model!r} != recorded model {model!r}")
  cal: dict = {"k": int(len(idx)), "texts_to_embed": int(len(idx))}
  if m.queries and col.texts is not None:
    try:
      qids, _, _ = calibrate._queries(cfg, [col.ids[i] for i in idx])  # noqa: SLF001
      cal["queries_to_embed"] = len(qids)
      cal["texts_to_embed"] += len(qids)
    except stores.MigrateError as e:
      problems.append(str(e))
  if m.target_model and m.probe and col.texts is not None and not missing_sampled:
    probe_idx = idx[: min(m.probe, len(idx))]
    texts = [col.texts[i] for i in probe_idx]
    t0 = time.time()
    fn, dim, _, (_, pp) = calibrate.encoder(cfg, m.target_model)
    fn([pp + t for t in texts])  # warm-up: loads and compiles
    t1 = time.time()
    fn([pp + t for t in texts])
    rate = len(texts) / max(time.time() - t1, 1e-9)
    cal.update(
        {
            "target_model": m.target_model,
            "target_dim": int(dim),
            "probe_texts": len(texts),
            "load_and_compile_seconds": round(t1 - t0, 2),
            "rate_texts_per_s": round(rate, 1),
            "estimated_seconds": round(cal["texts_to_embed"] / rate, 1),
        }
    )
  return {
      "collection": str(col.address),
      "rows": col.n,
      "dim": col.dim,
      "model": model,
      "norms": {
          "min": float(norms.min()),
          "mean": float(norms.mean()),
          "max": float(norms.max()),
          "std": float(norms.std()),
          "unit_fraction": float(np.mean(np.abs(norms - 1) < 1e-3)),
      },
      "texts": {"rows_with_text": int(have_text), "rows_without_text": int(col.n - have_text)},
      "problems": problems,
      "ok": not problems,
      "calibration": cal,
  }
