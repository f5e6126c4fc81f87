"""All-pairs MLP stitch training, vmapped in one jit vs a per-pair loop of the same step.

    .venv/bin/python benchmarks/bench_mlp.py --quick
    .venv/bin/python benchmarks/bench_mlp.py                  # 6 models, dims 384…1536
    .venv/bin/python benchmarks/bench_mlp.py --quick --pad    # also time pad-to-max layout

Ours: :func:`lead_jax.stitch.mlp.fit`: every ordered pair of 6 synthetic correlated
models (30 pairs), grouped by (d_in, d_out) and vmapped, ``eval_every`` steps per jitted
call with validation in the jit.  Baseline: for each pair, a Python loop calling the
jitted single-pair step (:func:`mlp.pair_step`, the function ours vmaps) ``steps`` times,
then the same val loss.  Both use the same seeds, so the final val losses agree up to
float reassociation; ``max_abs_diff`` is the largest difference.

``--pad`` also times the other layout of :func:`mlp.make_plan` (``pad``: every model
zero-padded to the largest dim, one vmapped group, true widths masked).  Measured on the
2-core CPU box, --quick: group 0.31 s, pad 0.65 s, per-pair loop 2.23 s; so ``group`` is
the default.  At the full dims (384…1536) the step is FLOP/memory bound and vmapping
gains ~nothing over the loop (ratio ≈ 0.7–0.9 measured); the ≥ 5 goal holds where
per-call overhead dominates (--quick: 7.2).

The last stdout line is one JSON object (see benchmarks/_common.py).
"""

from __future__ import annotations

import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import _common
from lead_jax.stitch import mlp

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Small dims (< 1 min on 2 cores).")
flags.DEFINE_list(
    "dims", None, "Model dims (default 384,384,768,768,1024,1536; quick 32,32,48,48,64,96)."
)
flags.DEFINE_integer("depth", 2, "Nonlinearities per stitch.")
flags.DEFINE_integer("steps", 500, "Training steps per pair.")
flags.DEFINE_integer("batch_size", None, "Minibatch rows (default 32; quick 32).")
flags.DEFINE_integer("n_rows", None, "Train rows (default 4096; quick 2048); val = n_rows / 4.")
flags.DEFINE_integer("eval_every", 100, "Steps per jitted call (ours).")
flags.DEFINE_integer("repeats", None, "Timed repeats of ours (median; default 3 quick, 1 full).")
flags.DEFINE_enum(
    "layout",
    None,
    mlp.LAYOUTS,
    "Layout of ours (group: measured faster, see the module docstring).",
)
flags.DEFINE_bool("pad", False, "Also time the other layout.")


def _baseline(plan, train, val, cfg, tcfg):
  """Per pair: init as ours, then `steps` calls of the jitted single-pair step."""
  step = jax.jit(functools.partial(mlp.pair_step, cfg=cfg, tcfg=tcfg))
  vloss = jax.jit(lambda p, x, y: mlp.pair_val_loss(p, x, y, cfg, tcfg.batch_size))
  state0 = mlp.init_state(plan, cfg, tcfg)
  out = np.zeros(len(plan.pairs))
  return state0, step, vloss, out


def _baseline_run(plan, train, val, cfg, tcfg, prepared):
  state0, step, vloss, out = prepared
  for g, gs in zip(plan.groups, state0["groups"]):
    xs, ys = train[plan.stack_of(g.d_in)], train[plan.stack_of(g.d_out)]
    xv, yv = val[plan.stack_of(g.d_in)], val[plan.stack_of(g.d_out)]
    for i, k in enumerate(g.pair_index):
      params, opt = jax.tree.map(lambda a: a[i], (gs["params"], gs["opt"]))
      key, active = gs["keys"][i], jnp.asarray(True)
      for t in range(tcfg.steps):
        params, opt, _ = step(
            params,
            opt,
            active,
            key,
            jnp.asarray(t, jnp.int32),
            xs,
            ys,
            g.src_local[i],
            g.tgt_local[i],
        )
      out[k] = float(vloss(params, xv[g.src_local[i]], yv[g.tgt_local[i]]))
  return out


def _warm(plan, train, val, prepared):
  state0, step, vloss, _ = prepared
  for g, gs in zip(plan.groups, state0["groups"]):
    xs, ys = train[plan.stack_of(g.d_in)], train[plan.stack_of(g.d_out)]
    params, opt = jax.tree.map(lambda a: a[0], (gs["params"], gs["opt"]))
    p, _, _ = step(
        params,
        opt,
        jnp.asarray(True),
        gs["keys"][0],
        jnp.asarray(0, jnp.int32),
        xs,
        ys,
        g.src_local[0],
        g.tgt_local[0],
    )
    xv, yv = val[plan.stack_of(g.d_in)], val[plan.stack_of(g.d_out)]
    _common.block(vloss(p, xv[g.src_local[0]], yv[g.tgt_local[0]]))


def _ours(plan, train, val, cfg, tcfg):
  st = mlp.fit(plan, train, val, cfg, tcfg)
  last = mlp.per_pair(st, plan, ("history", "val"))
  return np.asarray([v[-1] for v in last], np.float64)


def main(argv):
  del argv
  q = FLAGS.quick
  FLAGS.layout = FLAGS.layout or "group"
  dims = [
      int(d)
      for d in (FLAGS.dims or ([32, 32, 48, 48, 64, 96] if q else [384, 384, 768, 768, 1024, 1536]))
  ]
  n = FLAGS.n_rows or (2048 if q else 4096)
  bs = FLAGS.batch_size or 32
  xs = _common.correlated_embeddings(dims, n + n // 4, seed=0, latent=min(dims))
  cfg = mlp.StitchConfig(depth=FLAGS.depth)
  tcfg = mlp.TrainConfig(
      steps=FLAGS.steps,
      batch_size=bs,
      lr=1e-3,
      warmup_steps=min(50, FLAGS.steps // 10),
      eval_every=FLAGS.eval_every,
  )
  plan = mlp.make_plan(dims, cfg, layout=FLAGS.layout)
  bplan = mlp.make_plan(dims, cfg)  # the baseline trains each pair at its own shape
  train = mlp.stack_data([x[:n] for x in xs], plan)
  val = mlp.stack_data([x[n:] for x in xs], plan)
  print(
      f"devices={jax.devices()} dims={dims} pairs={len(plan.pairs)} groups={len(plan.groups)} "
      f"n_rows={n} batch={bs} steps={tcfg.steps} depth={cfg.depth}",
      flush=True,
  )

  ours_s, ours, _ = _common.time_median(
      lambda: _ours(plan, train, val, cfg, tcfg), FLAGS.repeats or (3 if q else 1)
  )
  print(f"ours, layout={FLAGS.layout}: {ours_s:.2f}s", flush=True)
  rec = {"name": "mlp_all_pairs_quick" if q else "mlp_all_pairs"}
  other = {"group": "pad", "pad": "group"}[FLAGS.layout]
  if FLAGS.pad:
    oplan = mlp.make_plan(dims, cfg, layout=other)
    otrain = mlp.stack_data([x[:n] for x in xs], oplan)
    oval = mlp.stack_data([x[n:] for x in xs], oplan)
    o_s, o_out, _ = _common.time_median(
        lambda: _ours(oplan, otrain, oval, cfg, tcfg), FLAGS.repeats or (3 if q else 1)
    )
    print(f"ours, layout={other}: {o_s:.2f}s", flush=True)
    rec[f"{other}_s"] = o_s
    rec[f"{other}_max_abs_diff"] = float(np.max(np.abs(o_out - ours)))
  btrain = mlp.stack_data([x[:n] for x in xs], bplan)
  bval = mlp.stack_data([x[n:] for x in xs], bplan)
  prepared = _baseline(bplan, btrain, bval, cfg, tcfg)
  _warm(bplan, btrain, bval, prepared)  # compile once per shape, untimed (as ours)
  t0 = time.perf_counter()
  base = _common.block(_baseline_run(bplan, btrain, bval, cfg, tcfg, prepared))
  base_s = time.perf_counter() - t0
  print(f"baseline (per-pair loop of the jitted single-pair step): {base_s:.2f}s", flush=True)
  rec.update(
      {
          "ours_s": ours_s,
          "baseline_s": base_s,
          "ratio": base_s / ours_s,
          "max_abs_diff": float(np.max(np.abs(ours - base))),
          "dims": dims,
          "pairs": len(plan.pairs),
          "steps": tcfg.steps,
          "batch_size": bs,
          "depth": cfg.depth,
          "ours_final_val_loss_mean": float(np.mean(ours)),
      }
  )
  _common.emit(rec)


if __name__ == "__main__":
  app.run(main)
