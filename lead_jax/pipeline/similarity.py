"""Similarity stage: linear and debiased CKA between every pair of models (+ the control)."""

from __future__ import annotations

import time

from absl import logging

from lead_jax import data, distributed, store
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
  return {"models": all_names, "linear": rnd(cka["linear"]), "debiased": rnd(cka["debiased"])}
