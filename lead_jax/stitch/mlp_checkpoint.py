"""Orbax checkpoints of an all-pairs MLP run; resuming after SIGKILL.

Layout of one run directory (one architecture/objective), an Orbax ``CheckpointManager``:

    <dir>/<step>/state/…      the whole train state pytree (:func:`mlp.init_state`): params,
                              optimizer state, step, RNG keys, per-pair best metrics and
                              best params, train/val loss curves
    <dir>/<step>/meta/…       JSON: config, model names, dims, pairs, plan layout
    <dir>/curves.parquet|csv  loss curves (written at the end, also inside the state)

Saves happen every ``save_every`` steps (at evaluation boundaries) and at the last step.
Orbax writes each step into a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous step as the latest; :func:`fit` restores it
and continues.  Minibatches depend only on (seed, pair, step), so the resumed run ends
with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
from absl import logging

from lead_jax import files
from lead_jax.stitch import mlp

STATE, META = "state", "meta"


def manager(directory: str | os.PathLike, max_to_keep: int | None = 2):
  import orbax.checkpoint as ocp

  opts = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
  )
  return ocp.CheckpointManager(Path(directory).absolute(), options=opts, item_names=(STATE, META))


def run_meta(
    plan: mlp.Plan,
    cfg: mlp.StitchConfig,
    tcfg: mlp.TrainConfig,
    names: Sequence[str],
    extra: dict | None = None,
) -> dict:
  return {
      **mlp.config_dict(cfg, tcfg),
      "names": list(names),
      "dims": list(plan.dims),
      "pairs": [list(p) for p in plan.pairs],
      "layout": plan.layout,
      "method": cfg.method,
      **(extra or {}),
  }


def save(mngr, state: dict, meta: dict, force: bool = False) -> bool:
  import orbax.checkpoint as ocp

  step = int(state["step"])
  ok = mngr.save(
      step,
      args=ocp.args.Composite(
          **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
      ),
      force=force,
  )
  mngr.wait_until_finished()
  return ok


def restore(
    mngr, plan: mlp.Plan, cfg: mlp.StitchConfig, tcfg: mlp.TrainConfig, step: int | None = None
) -> dict | None:
  """The state at ``step`` (default: latest), or None when the directory has none."""
  import orbax.checkpoint as ocp

  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  abstract = jax.eval_shape(lambda: mlp.init_state(plan, cfg, tcfg))
  out = mngr.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract)}))
  return out[STATE]


def read_meta(directory: str | os.PathLike, step: int | None = None) -> dict:
  import orbax.checkpoint as ocp

  mngr = manager(directory, max_to_keep=None)
  step = mngr.latest_step() if step is None else step
  return mngr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]


def restore_any(directory: str | os.PathLike, step: int | None = None) -> tuple[dict, dict]:
  """(state as nested dicts/lists of numpy arrays, meta) without knowing the config."""

  mngr = manager(directory, max_to_keep=None)
  step = mngr.latest_step() if step is None else step
  meta = read_meta(directory, step)
  cfg = mlp.StitchConfig(**meta["stitch"])
  tcfg = mlp.TrainConfig(**meta["train"])
  plan = mlp.make_plan(
      meta["dims"], cfg, [tuple(p) for p in meta["pairs"]], meta.get("layout", "group")
  )
  return restore(mngr, plan, cfg, tcfg, step), meta


def fit(
    directory: str | os.PathLike,
    plan: mlp.Plan,
    train,
    val,
    cfg: mlp.StitchConfig,
    tcfg: mlp.TrainConfig,
    names: Sequence[str],
    *,
    save_every: int | None = None,
    extra_meta: dict | None = None,
    on_eval: Callable[[dict], None] | None = None,
    max_to_keep: int | None = 2,
    mesh=None,
) -> dict:
  """:func:`mlp.fit` with Orbax checkpoints; resumes from the latest step in ``directory``.

  ``mesh`` shards the pairs (and minibatch rows) as in :func:`mlp.fit`.

  ``save_every`` (default ``tcfg.eval_every``) is rounded to the evaluation boundaries
  at which the host regains control; the final step is always saved.
  """
  mngr = manager(directory, max_to_keep)
  meta = run_meta(plan, cfg, tcfg, names, extra_meta)
  state = restore(mngr, plan, cfg, tcfg)
  if state is not None:
    old = read_meta(directory)
    for k in ("stitch", "train", "dims", "pairs", "layout"):
      if old.get(k) != meta.get(k):
        raise ValueError(
            f"{directory}: checkpoint was written with a different {k!r}: "
            f"{old.get(k)} vs {meta.get(k)}"
        )
  every = save_every or tcfg.eval_every
  last_saved = [int(state["step"]) if state is not None else 0]
  t0, step0 = time.time(), last_saved[0]
  if step0:
    logging.info("%s: resuming at step %d/%d", cfg.method, step0, tcfg.steps)

  def hook(st):
    step = int(st["step"])
    rate = (step - step0) / max(time.time() - t0, 1e-9)
    logging.info(
        "%s: step %d/%d, %.1f steps/s (all pairs), ETA %.0fs",
        cfg.method,
        step,
        tcfg.steps,
        rate,
        (tcfg.steps - step) / max(rate, 1e-9),
    )
    if step - last_saved[0] >= every or step >= tcfg.steps:
      save(mngr, st, meta, force=step >= tcfg.steps)
      last_saved[0] = step
    if on_eval is not None:
      on_eval(st)

  state = mlp.fit(plan, train, val, cfg, tcfg, state=state, on_eval=hook, mesh=mesh)
  if mngr.latest_step() != int(state["step"]):
    save(mngr, state, meta, force=True)
  curves = mlp.curves_to_table(state, plan, tcfg, names)

  files.save_table(curves, directory, "curves")
  mngr.close()
  return state


def state_max_abs_diff(a: dict, b: dict) -> float:
  """Largest |a − b| over every floating leaf of two states (for resume tests)."""
  diffs = jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
      if np.asarray(x).size and np.issubdtype(np.asarray(x).dtype, np.floating)
      else 0.0,
      a,
      b,
  )
  return max(jax.tree.leaves(diffs), default=0.0)
