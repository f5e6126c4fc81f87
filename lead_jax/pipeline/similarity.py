"""Similarity stage: CKA between every pair of models (+ the control), then (issue 17,
each behind its switch) permutation nulls with calibrated scores and p-values, the
other measures, and unsupervised alignment of every ordered pair."""

from __future__ import annotations

import time

from absl import logging

from lead_jax import data, distributed, files, store
from lead_jax.config import StudyConfig
from lead_jax.layout import RunLayout
from lead_jax.pipeline import _common
from lead_jax.similarity import cka_all_pairs
from lead_jax.similarity import io as similarity_io
from lead_jax.similarity.gram import CONTROL_NAME


def run(cfg: StudyConfig, layout: RunLayout) -> dict:
  """Reads `config.cka.split`'s corpus rows, writes `similarity/cka.npz` and the `cka` table.

  Args:
    cfg: the study config (`dataset`, `models`, `control`, `cka`, `mesh`).
    layout: the run layout (the store read, and `similarity/` written).

  Returns:
    `{"models", "linear", "debiased"}`: names and the matrices rounded to 4 places.
  """
  name = data.dataset_name(cfg.dataset)
  names, xs = store.read_models(layout.store_root, name, cfg.cka.split, "corpus", cfg.models)
  logging.info("CKA over %d models x %d rows (%s/%s)", len(names), len(xs[0]), name, cfg.cka.split)
  t0 = time.time()
  with _common.precision(cfg.cka.float64):
    cka = _common.on_engine(
        cka_all_pairs,
        xs,
        mesh=_common.mesh(cfg),
        control_dim=cfg.control.dim or None,
        seed=cfg.control.seed,
        dtype=_common.dtype(cfg.cka.float64),
    )
  all_names = names + ([CONTROL_NAME] if cfg.control.dim else [])
  if distributed.is_writer():
    similarity_io.save_cka(cka, all_names, layout.similarity, name)
  logging.info("CKA done in %.2fs -> %s", time.time() - t0, layout.similarity)
  rnd = lambda m: [[round(float(v), 4) for v in r] for r in m]
  out = {"models": all_names, "linear": rnd(cka["linear"]), "debiased": rnd(cka["debiased"])}
  out.update(calibrated(cfg, layout, name, names, xs))
  return out


def calibrated(cfg: StudyConfig, layout: RunLayout, dataset: str, names, xs) -> dict:
  """The issue-17 part of the stage: nulls, measures, unsupervised alignment (each if on).

  Runs on this host's copy of the rows (every process reads them all; process 0 writes).
  Writes `similarity/calibrated.npz`, the `null`, `measures` and `unsupervised` tables.

  Args:
    cfg: the study config (`null`, `measures`, `unsupervised`, `control`, `cka`).
    layout: the run layout.
    dataset: the dataset name.
    names: the models' names.
    xs: their `cfg.cka.split` corpus rows.

  Returns:
    `{"seconds": {part: s}}` plus the p-values of linear CKA when the null ran.
  """
  from lead_jax.similarity import knn as knn_lib
  from lead_jax.similarity import measures as measures_lib
  from lead_jax.similarity import null as null_lib

  ctrl = dict(control_dim=cfg.control.dim or None, control_seed=cfg.control.seed)
  all_names = names + ([CONTROL_NAME] if cfg.control.dim else [])
  secs, nul, meas, out = {}, None, None, {}
  with _common.precision(cfg.cka.float64):
    dtype = _common.dtype(cfg.cka.float64)
    lists = None
    if cfg.null.enabled and cfg.measures.enabled and cfg.null.knn_k == cfg.measures.cknna_k:
      t0 = time.time()
      lists = knn_lib.knn_all(xs, cfg.null.knn_k, **ctrl)  # once for the null and CKNNA
      secs["knn"] = time.time() - t0
    if cfg.null.enabled:
      t0 = time.time()
      nul = null_lib.null_all_pairs(
          xs,
          n_perm=cfg.null.permutations,
          seed=cfg.null.seed,
          knn_k=cfg.null.knn_k,
          batch=cfg.null.batch,
          knn=lists,
          dtype=dtype,
          **ctrl,
      )
      secs["null"] = time.time() - t0
      p = null_lib.calibrate(nul["observed"]["linear"], nul["null"]["linear"])["p_value"]
      out["p_linear"] = [[round(float(v), 4) for v in r] for r in p]
    if cfg.measures.enabled:
      t0 = time.time()
      m = cfg.measures
      meas = measures_lib.measures_all_pairs(
          xs,
          cknna_k=m.cknna_k,
          svcca_k=m.svcca_k,
          rcond=m.rcond,
          rsa_n=m.rsa_rows,
          rsa_seed=m.rsa_seed,
          knn=lists,
          dtype=dtype,
          **ctrl,
      )
      secs["measures"] = time.time() - t0
  if distributed.is_writer() and (nul is not None or meas is not None):
    similarity_io.save_calibrated(layout.similarity, all_names, nul, meas, dataset)
  u = cfg.unsupervised
  half = min(len(xs[0]) // 2, u.fit_rows)
  if u.enabled and half < 4 * u.clusters:
    logging.info(
        "unsupervised alignment skipped: %d unpaired rows per side, fewer than 4 per cluster "
        "(unsupervised.clusters=%d)",
        half,
        u.clusters,
    )
  elif u.enabled and len(names) >= 2:
    t0 = time.time()
    _, val = store.read_models(layout.store_root, dataset, "val", "corpus", names)
    table = unsupervised_table(cfg, names, xs, val)
    if distributed.is_writer():
      files.save_table(table.assign(dataset=dataset), layout.similarity, "unsupervised")
    secs["unsupervised"] = time.time() - t0
  logging.info(
      "calibrated similarity: %s", ", ".join(f"{k} {v:.1f}s" for k, v in secs.items()) or "off"
  )
  out["seconds"] = {k: round(v, 2) for k, v in secs.items()}
  return out


def unsupervised_table(cfg: StudyConfig, names, train, val):
  """The unsupervised-vs-supervised table: one row per (ordered pair, method).

  Args:
    cfg: the study config (`unsupervised`).
    names: the models' names.
    train: their train corpus rows (the fit sees disjoint halves, unpaired).
    val: their val corpus rows (the evaluation).

  Returns:
    Columns source, target, method, top1, mean_rank, n_val, k, start.
  """
  import pandas as pd

  from lead_jax.stitch import unsupervised as unsup

  res = unsup.unsupervised_all_pairs(train, val, cfg.unsupervised)
  rows = [
      {
          "source": names[i],
          "target": names[j],
          "method": meth,
          "top1": float(res["top1"][a, i, j]),
          "mean_rank": float(res["mean_rank"][a, i, j]),
          "n_val": int(len(val[0])),
          "k": int(res["k"]),
          "start": int(res["start"][i, j]),
      }
      for a, meth in enumerate(res["methods"])
      for i in range(len(names))
      for j in range(len(names))
      if i != j
  ]
  return pd.DataFrame(rows)
