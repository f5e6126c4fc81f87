"""MLP stage: one all-pairs, resumable training run per depth, and its results table.

Writes
    mlp/d{depth}_{objective}/   Orbax checkpoints (state + meta) and curves.parquet|csv
    mlp_results.parquet|csv     val metrics per pair in the shared results schema (method
                                mlp_d{depth}_{objective}); the Gaussian control is a source
                                model like any other. The train-mean and zero controls are
                                in closed_form/results (same val rows, same definitions).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from absl import logging

from lead_jax import data, files, store
from lead_jax.config import StudyConfig
from lead_jax.layout import RunLayout
from lead_jax.pipeline import _common
from lead_jax.similarity import gram
from lead_jax.stitch import mlp, mlp_checkpoint


def with_control(cfg: StudyConfig, train: list, val: list, names: list) -> list | None:
  """Appends the Gaussian control (a source only) to the models; returns the pair list.

  Args:
    cfg: the study config (`control`).
    train: the models' train rows; the control's are appended in place.
    val: the models' val rows; the control's are appended in place.
    names: the model names; `gram.CONTROL_NAME` is appended in place.

  Returns:
    The ordered pairs to train (every model pair, plus control → every model), or None
    (all pairs) when `cfg.control.dim` is 0.
  """
  if not cfg.control.dim:
    return None
  g_tr, g_v = gram.control_split(
      len(train[0]), len(val[0]), cfg.control.dim, cfg.control.seed, np.float32
  )
  train.append(np.asarray(g_tr))
  val.append(np.asarray(g_v))
  names.append(gram.CONTROL_NAME)
  m = len(names)
  return [(s, t) for s in range(m) for t in range(m - 1) if s != t]


def run(cfg: StudyConfig, layout: RunLayout) -> pd.DataFrame:
  """Trains every configured depth for every ordered pair; writes checkpoints and tables.

  Args:
    cfg: the study config (`dataset`, `models`, `control`, `mlp`, `mesh`).
    layout: the run layout (the store read, `mlp/` and `mlp_results` written).

  Returns:
    The `mlp_results` table.

  Raises:
    store.StoreError: fewer than two models in the store.
  """
  c = cfg.mlp
  name = data.dataset_name(cfg.dataset)
  names, train = store.read_models(layout.store_root, name, "train", c.kind, cfg.models)
  if len(names) < 2:
    raise store.StoreError(
        f"{layout.store_root}/{name}/train/{c.kind}: need ≥ 2 models, got {names}"
    )
  _, val = store.read_models(layout.store_root, name, "val", c.kind, names)
  pairs = with_control(cfg, train, val, names)
  logging.info("models %s, train %d rows, val %d rows", names, len(train[0]), len(val[0]))
  tcfg = mlp.TrainConfig.from_config(c)
  tables = []
  for depth in c.depths:
    scfg = mlp.StitchConfig.from_config(c, depth)
    plan = mlp.make_plan([x.shape[1] for x in train], scfg, pairs)
    tr, va = mlp.stack_data(train, plan), mlp.stack_data(val, plan)
    state = mlp_checkpoint.fit(
        layout.mlp_run(depth, c.objective),
        plan,
        tr,
        va,
        scfg,
        tcfg,
        names,
        save_every=c.save_every,
        extra_meta={"dataset": name, "store": layout.store_root, "kind": c.kind},
        mesh=_common.mesh(cfg),
    )
    tab = mlp.results_to_table(state, plan, va, scfg, names, dataset=name)
    tables.append(tab)
    mse = tab[tab.metric == "mse"]
    logging.info(
        "%s: val MSE per pair mean %.4g (min %.4g, max %.4g)",
        scfg.method,
        mse.value.mean(),
        mse.value.min(),
        mse.value.max(),
    )
  df = pd.concat(tables, ignore_index=True)
  pq, _ = files.save_table(df, layout.root, "mlp_results")
  logging.info("wrote %s (%d rows)", pq, len(df))
  return df
