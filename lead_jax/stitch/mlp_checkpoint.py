"""Orbax checkpoints of an all-pairs MLP run; resuming after SIGKILL.

Layout of one run directory (one architecture/objective), an Orbax `CheckpointManager`:

    <dir>/<step>/state/…      the whole train state pytree (`mlp.init_state`): params,
                              optimizer state, step, RNG keys, per-pair best metrics and
                              best params, train/val loss curves
    <dir>/<step>/meta/…       JSON: config, model names, dims, pairs
    <dir>/curves.{parquet,csv} loss curves (written at the end, also inside the state)

Saves happen every `save_every` steps (at evaluation boundaries) and at the last step.
Orbax writes each step into a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous step as the latest; `fit` restores it and
continues.  Minibatches depend only on (seed, pair, step), so the resumed run ends with
the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
from absl import logging

from lead_jax import files, logs
from lead_jax.stitch import mlp

STATE, META = "state", "meta"


def manager(directory: str | os.PathLike, max_to_keep: int | None = 2):
  """A synchronous Orbax `CheckpointManager` of a run directory (created if missing).

  Args:
    directory: the run directory.
    max_to_keep: steps kept on disk; None keeps every step.

  Returns:
    The manager, with items `state` and `meta`.
  """
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
  """The JSON meta saved with every step.

  Args:
    plan: the run's plan.
    cfg: the stitch architecture and objective.
    tcfg: the optimisation settings.
    names: model names, in `plan.dims` order.
    extra: further JSON-able entries (e.g. dataset, store).

  Returns:
    {stitch, train, names, dims, pairs, method, **extra}.
  """
  return {
      **mlp.config_dict(cfg, tcfg),
      "names": list(names),
      "dims": list(plan.dims),
      "pairs": [list(p) for p in plan.pairs],
      "method": cfg.method,
      **(extra or {}),
  }


def save(mngr, state: dict, meta: dict, force: bool = False) -> bool:
  """Saves the state and meta at the state's step and waits until written.

  Args:
    mngr: the run's manager.
    state: the train state.
    meta: the run meta (`run_meta`).
    force: save even when the manager's save policy would skip this step.

  Returns:
    Whether a checkpoint was written.
  """
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
  """The train state saved at a step.

  Args:
    mngr: the run's manager.
    plan: the run's plan.
    cfg: the stitch architecture and objective.
    tcfg: the optimisation settings.
    step: the step; default the latest.

  Returns:
    The state, or None when the directory has no saved step.
  """
  import orbax.checkpoint as ocp

  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  abstract = mlp.abstract_state(plan, cfg, tcfg)
  out = mngr.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract)}))
  return out[STATE]


def read_meta(directory: str | os.PathLike, step: int | None = None) -> dict:
  """The run meta saved at a step.

  Args:
    directory: the run directory.
    step: the step; default the latest.

  Returns:
    The meta dict (`run_meta`).
  """
  import orbax.checkpoint as ocp

  mngr = manager(directory, max_to_keep=None)
  step = mngr.latest_step() if step is None else step
  return mngr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]


def restore_any(directory: str | os.PathLike, step: int | None = None) -> tuple[dict, dict]:
  """Restores a run without knowing its config (it is read from the saved meta).

  Args:
    directory: the run directory.
    step: the step; default the latest.

  Returns:
    (the train state, the meta).
  """
  mngr = manager(directory, max_to_keep=None)
  step = mngr.latest_step() if step is None else step
  meta = read_meta(directory, step)
  cfg = mlp.StitchConfig(**meta["stitch"])
  tcfg = mlp.TrainConfig(**meta["train"])
  plan = mlp.make_plan(meta["dims"], cfg, [tuple(p) for p in meta["pairs"]])
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
    mesh=None,
) -> dict:
  """`mlp.fit` with Orbax checkpoints; resumes from the latest step in `directory`.

  Writes the loss curves as `curves.parquet` and `curves.csv` into `directory` at the end.

  Args:
    directory: the run directory (created if missing).
    plan: the plan from `mlp.make_plan`.
    train: the train stacks (`mlp.stack_data`).
    val: the val stacks.
    cfg: the stitch architecture and objective.
    tcfg: the optimisation settings.
    names: model names, in `plan.dims` order.
    save_every: checkpoint period in steps (default `tcfg.eval_every`), rounded to the
      evaluation boundaries at which the host regains control; the final step is always
      saved.
    extra_meta: further JSON-able entries for the meta.
    on_eval: called with the state after each chunk, after any save.
    mesh: optional mesh; shards the pairs (and minibatch rows) as in `mlp.fit`.

  Returns:
    The final train state.

  Raises:
    ValueError: the directory holds a checkpoint of a different config, dims or pairs.
  """
  mngr = manager(directory)
  meta = run_meta(plan, cfg, tcfg, names, extra_meta)
  state = restore(mngr, plan, cfg, tcfg)
  if state is not None:
    old = read_meta(directory)
    for k in ("stitch", "train", "dims", "pairs"):
      if old.get(k) != meta.get(k):
        raise ValueError(
            f"{directory}: checkpoint was written with a different {k!r}: "
            f"{old.get(k)} vs {meta.get(k)}"
        )
  every = save_every or tcfg.eval_every
  last_saved = [int(state["step"]) if state is not None else 0]
  step0 = last_saved[0]
  if step0:
    logging.info("%s: resuming at step %d/%d", cfg.method, step0, tcfg.steps)
  progress = logs.Progress(f"{cfg.method} (all pairs)", tcfg.steps, "steps", start=step0)

  def hook(st):
    step = int(st["step"])
    progress.set(step)
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
  """Largest |a − b| over every floating leaf of two states (for resume tests).

  Args:
    a: a pytree.
    b: a pytree of the same structure.

  Returns:
    The largest absolute difference (0.0 when there are no floating leaves).
  """
  diffs = jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
      if np.asarray(x).size and np.issubdtype(np.asarray(x).dtype, np.floating)
      else 0.0,
      a,
      b,
  )
  return max(jax.tree.leaves(diffs), default=0.0)
