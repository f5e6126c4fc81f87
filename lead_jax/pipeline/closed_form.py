"""Closed-form stage: ridge λ-path, OLS, Procrustes, controls and k-fold CV for every pair.

Fits on the train split's corpus rows, chooses λ per pair on the val split, and writes
under `closed_form/`:
  results.parquet|csv        one row per (pair, method, λ, fold, metric): fold "val" is the
                             held-out split; folds "0".."K-1", "mean", "std" are k-fold CV
                             on train (from per-fold Grams)
  stitches/ + stitches.json  the chosen W, b, λ per pair (Orbax) and their metadata
  run.json                   models, their store metadata, the settings used
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from absl import logging

from lead_jax import data, distributed, files, store
from lead_jax.config import StudyConfig
from lead_jax.layout import RunLayout
from lead_jax.pipeline import _common
from lead_jax.stitch import cross_validate_all_pairs, fit_all_pairs
from lead_jax.stitch import io as stitch_io
from lead_jax.stitch.metrics import results_to_table

# what run.json keeps of each model's store meta: enough to refuse a stitch on other weights
MODEL_META_KEYS = ("hf_id", "weights_digest", "dim", "pooling", "normalize", "rows_digest")


def run(cfg: StudyConfig, layout: RunLayout) -> dict:
  """Fits, validates and saves the closed-form stitches of every ordered pair.

  Args:
    cfg: the study config (`dataset`, `models`, `control`, `closed_form`, `mesh`).
    layout: the run layout (the store read, and `closed_form/` written).

  Returns:
    `{"out", "rows", "val_r2_at_chosen_lambda": {"a->b": R²}}`.
  """
  c = cfg.closed_form
  name = data.dataset_name(cfg.dataset)
  names, train = store.read_models(layout.store_root, name, "train", "corpus", cfg.models)
  _, val = store.read_models(layout.store_root, name, "val", "corpus", names)
  lambdas = np.asarray(c.lambdas)
  logging.info(
      "stitching %d models (%d ordered pairs) on %d train / %d val rows, %d λ",
      len(names),
      len(names) * (len(names) - 1),
      len(train[0]),
      len(val[0]),
      len(lambdas),
  )
  t0 = time.time()
  mesh = _common.mesh(cfg)
  kw = dict(
      control_dim=cfg.control.dim or None, seed=cfg.control.seed, exact_ols=c.exact_ols, mesh=mesh
  )
  with _common.precision(c.float64):
    kw["dtype"] = _common.dtype(c.float64)
    fit = _common.on_engine(fit_all_pairs, train, val, lambdas=lambdas, **kw)
    tables = [results_to_table(fit, names, name)]
    logging.info("fit + val metrics: %.2fs", time.time() - t0)
    if c.folds:
      t1 = time.time()
      cv = _common.on_engine(
          cross_validate_all_pairs,
          train,
          lambdas=lambdas,
          n_folds=c.folds,
          fold_seed=c.fold_seed,
          **kw,
      )
      tables.append(results_to_table(cv, names, name))
      logging.info("%d-fold CV: %.2fs", c.folds, time.time() - t1)
  table = pd.concat(tables, ignore_index=True)
  if not distributed.is_writer():
    return {"out": str(layout.closed_form), "rows": len(table), "writer": False}
  files.save_table(table, layout.closed_form, "results")
  stitch_io.save_stitches(fit, layout.closed_form, names)
  metas = {m: store.read_meta(layout.store_root, name, "train", "corpus", m) for m in names}
  run_info = {
      "dataset": name,
      "models": names,
      "lambdas": [float(x) for x in lambdas],
      "folds": c.folds,
      "control_dim": cfg.control.dim,
      "seed": cfg.control.seed,
      "float64": c.float64,
      "model_meta": {
          m: {k: v for k, v in meta.items() if k in MODEL_META_KEYS} for m, meta in metas.items()
      },
      "seconds": round(time.time() - t0, 2),
  }
  files.write_json(layout.closed_form / "run.json", run_info)
  chosen = table[
      (table.method == "ridge") & (table.fold == "val") & (table.metric == "r2") & table.chosen
  ]
  summary = {f"{r.source}->{r.target}": round(float(r.value), 4) for r in chosen.itertuples()}
  return {"out": str(layout.closed_form), "rows": len(table), "val_r2_at_chosen_lambda": summary}
