"""Scaling over devices: CKA, the closed-form fit and MLP training on 1, 2, 4, 8 devices.

  .venv/bin/python benchmarks/bench_scaling.py [--quick]

On CPU each device count runs in its own process with
``--xla_force_host_platform_device_count=n`` and a mesh of ``data=n`` (rows) for CKA
and the fit, ``pairs=n`` for MLP training.  Every count's results are compared with the
1-device run (``max_rel_diff``).  The forced devices share this machine's real cores
(2 here), so times do not fall with n; they show the cost of partitioning, not a
speed-up.  On a GPU (one device) only the single-device figures are reported.

The last stdout line is one JSON object; ``ours_s`` is the largest count's time and
``baseline_s`` the 1-device time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def shape(quick: bool) -> dict:
  if quick:
    return {"dims": [48, 48, 96, 96, 128, 192], "rows": 2048, "mlp_rows": 1024, "mlp_steps": 50}
  return {
      "dims": [384, 384, 768, 768, 1024, 1536],
      "rows": 8192,
      "mlp_rows": 4096,
      "mlp_steps": 100,
  }


def child(n_dev: int, quick: bool, repeats: int, out_path: str) -> None:
  """Runs in a process with n_dev devices: times each stage, saves results for comparison."""
  import jax
  import numpy as np

  from benchmarks import _common
  from lead_jax import distributed
  from lead_jax.similarity import cka as cka_lib
  from lead_jax.stitch import closed_form, mlp

  assert jax.device_count() == n_dev, (jax.device_count(), n_dev)
  sh = shape(quick)
  xs = _common.correlated_embeddings(sh["dims"], sh["rows"])
  n_tr = int(0.8 * sh["rows"])
  tr, va = [x[:n_tr] for x in xs], [x[n_tr:] for x in xs]
  rows_mesh = distributed.make_mesh(data=n_dev, pairs=1) if n_dev > 1 else None
  pairs_mesh = distributed.make_mesh(data=1, pairs=n_dev) if n_dev > 1 else None
  times, res = {}, {}
  t, out, _ = _common.time_median(
      lambda: cka_lib.cka_all_pairs(xs, control_dim=768, mesh=rows_mesh), repeats
  )
  times["cka_s"], res["cka"] = t, np.asarray(out["debiased"])
  fit = lambda: closed_form.fit_all_pairs(tr, va, control_dim=768, mesh=rows_mesh)
  t, out, _ = _common.time_median(fit, repeats)
  times["fit_s"], res["fit_mse"] = t, np.asarray(out["ridge"]["mse"])
  res["fit_cos"] = np.asarray(out["chosen"]["cos"])
  cfg = mlp.StitchConfig(depth=1)
  tcfg = mlp.TrainConfig(
      steps=sh["mlp_steps"], eval_every=sh["mlp_steps"], batch_size=128, warmup_steps=10, patience=0
  )
  plan = mlp.make_plan(sh["dims"], cfg)
  m_tr = mlp.stack_data([x[: sh["mlp_rows"]] for x in tr], plan)
  m_va = mlp.stack_data(va, plan)
  run = lambda: mlp.fit(plan, m_tr, m_va, cfg, tcfg, mesh=pairs_mesh)
  t, state, _ = _common.time_median(run, repeats)
  times["mlp_s"] = t
  res["mlp_val"] = np.concatenate([np.asarray(g["best"]["val"]) for g in state["groups"]])
  np.savez(out_path, **res)
  with open(out_path + ".json", "w") as f:
    json.dump({**times, "backend": jax.default_backend(), "device": str(jax.devices()[0])}, f)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--counts", default="1,2,4,8")
  ap.add_argument("--_child", type=int, default=0, help=argparse.SUPPRESS)
  ap.add_argument("--_out", default="", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args._child:
    child(args._child, args.quick, args.repeats, args._out)
    return

  import jax
  import numpy as np

  from benchmarks import _common

  on_cpu = jax.default_backend() == "cpu"
  counts = [int(c) for c in args.counts.split(",")] if on_cpu else [1]
  per, results = {}, {}
  with tempfile.TemporaryDirectory() as tmp:
    for n in counts:
      path = os.path.join(tmp, f"n{n}.npz")
      env = dict(os.environ)
      if on_cpu:
        env.update(
            JAX_PLATFORMS="cpu",
            XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
            TF_CPP_MIN_LOG_LEVEL="2",
        )
      cmd = [
          sys.executable,
          os.path.abspath(__file__),
          f"--_child={n}",
          f"--_out={path}",
          f"--repeats={args.repeats}",
      ] + (["--quick"] if args.quick else [])
      proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
      if proc.returncode != 0:
        raise SystemExit(f"{n} devices failed:\n{proc.stderr[-3000:]}")
      with open(path + ".json") as f:
        per[n] = json.load(f)
      results[n] = dict(np.load(path))
      print(
          f"{n} device(s): "
          + ", ".join(f"{k} {v:.3f}" for k, v in per[n].items() if k.endswith("_s")),
          flush=True,
      )
  worst = 0.0
  for n in counts[1:]:
    for k, ref in results[1].items():
      got, ok = results[n][k], np.isfinite(ref)
      worst = max(
          worst, float(np.max(np.abs(got[ok] - ref[ok])) / max(np.max(np.abs(ref[ok])), 1e-30))
      )
  total = lambda d: d["cka_s"] + d["fit_s"] + d["mlp_s"]
  last = counts[-1]
  _common.emit(
      {
          "name": "scaling" + ("_quick" if args.quick else ""),
          "ours_s": total(per[last]),
          "baseline_s": total(per[1]),
          "ratio": total(per[1]) / total(per[last]),
          "max_rel_diff": worst,
          "max_rel_diff_note": "max |diff| / max |1-device value| per result array (CKA, val MSE path, "
          "cosine, MLP val loss), float32, every count vs 1 device",
          "counts": counts,
          "per_count": {str(n): per[n] for n in counts},
          "note": (
              "forced CPU devices share the machine's real cores: times show partitioning cost, not speed-up"
              if on_cpu
              else "one accelerator: single-device figures only"
          ),
          "shape": shape(args.quick),
          "backend": jax.default_backend(),
          "cpu_count": os.cpu_count(),
      }
  )


if __name__ == "__main__":
  main()
