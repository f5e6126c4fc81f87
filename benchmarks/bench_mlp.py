"""All-pairs MLP stitch training, vmapped in one jit vs a per-pair loop of the same step.

    .venv/bin/python benchmarks/bench_mlp.py --quick
    .venv/bin/python benchmarks/bench_mlp.py                  # 6 models, dims 384…1536

Ours: `lead_jax.stitch.mlp.fit`: every ordered pair of 6 synthetic correlated models
(30 pairs), grouped by (d_in, d_out) and vmapped, `eval_every` steps per jitted call with
validation in the jit.  Baseline: for each pair, a Python loop calling the jitted
single-pair step (`pair_step` below: the minibatch draw plus `mlp.pair_update`, the
function ours vmaps) `steps` times, then the same val loss.  Both use the same seeds and
no early stopping (`patience=0`: every pair trains every step), so the final val losses
agree up to float reassociation; `max_abs_diff` is the largest difference.

Figures and their machines are in BUILD_NOTES (§4.4, §7).  Two things decide the
ratio on CPU.  At the quick shape per-kernel overhead dominates, so ours gains by
running every group inside one loop step (no `lax.cond` per group and step: its
operand copies made ours 2.3× slower).  At the full dims (384…1536) a step is bound by
AdamW's memory traffic; both sides run `mlp.pair_update`, whose Adam step stores its
masked moments before the update reads them (without that, XLA copied every parameter
and moment buffer each step inside the loop), and vmapped groups run as fast as the
loop's single-pair GEMMs.  `lax.map` over a group's pairs was measured slower than
vmap at both shapes and is not used.

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


def pair_step(params, opt_state, active, key, step, xs_mnd, ys_mnd, src, tgt, *, cfg, tcfg):
  """The single-pair step: draw the minibatch of `step`, then `mlp.pair_update`.

  `xs_mnd` / `ys_mnd` are the dim stacks holding the source / target rows; `src` / `tgt`
  index them.  The all-pairs chunk computes exactly this, with the minibatch indices of
  all its steps drawn up front.
  """
  idx = mlp.batch_indices(key, step, xs_mnd.shape[1], tcfg.batch_size)
  return mlp.pair_update(
      params, opt_state, active, xs_mnd[src, idx], ys_mnd[tgt, idx], cfg=cfg, tcfg=tcfg
  )


def _baseline(plan, cfg, tcfg):
  """Per pair: init as ours, the jitted single-pair step and the jitted val loss."""
  step = jax.jit(functools.partial(pair_step, cfg=cfg, tcfg=tcfg))
  vloss = jax.jit(lambda p, x, y: mlp.pair_val_loss(p, x, y, cfg, tcfg.batch_size))
  return mlp.init_state(plan, cfg, tcfg), step, vloss


def _baseline_run(plan, train, val, tcfg, prepared):
  """`steps` calls of the single-pair step per pair, then its val loss."""
  state0, step, vloss = prepared
  out = np.zeros(len(plan.pairs))
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
  """Compiles the baseline's step and val loss once per group shape."""
  state0, step, vloss = prepared
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
      patience=0,  # no early stopping: ours and the baseline both train every step
  )
  plan = mlp.make_plan(dims, cfg)
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
  print(f"ours: {ours_s:.2f}s", flush=True)
  prepared = _baseline(plan, cfg, tcfg)
  _warm(plan, train, val, prepared)  # compile once per shape, untimed (as ours)
  t0 = time.perf_counter()
  base = _common.block(_baseline_run(plan, train, val, tcfg, prepared))
  base_s = time.perf_counter() - t0
  print(f"baseline (per-pair loop of the jitted single-pair step): {base_s:.2f}s", flush=True)
  _common.emit(
      {
          "name": "mlp_all_pairs_quick" if q else "mlp_all_pairs",
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


if __name__ == "__main__":
  app.run(main)
