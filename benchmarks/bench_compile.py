"""First call (compile + run) against steady state, at 4, 8 and 17 models.

    .venv/bin/python benchmarks/bench_compile.py            # study dims ÷ 8, 512 / 128 rows
    .venv/bin/python benchmarks/bench_compile.py --quick    # 4 and 17 models only, ÷ 16

The study's widths (384×3, 768×7, 1024×5, 1536, 3072; ÷ 8 on CPU) are taken 4, 8 and 17
at a time (3, 4 and 5 width groups). Each count runs in a fresh process with the
persistent compilation cache off, so the first call pays the whole compile. Timed per
count: `cka_all_pairs`, `fit_all_pairs` with and without predictions,
`cross_validate_all_pairs` (3 folds) and one MLP chunk (depth 1, `eval_every` steps).

The last line is JSON: per function and count `first_s`, `steady_s` (median of 3) and
their ratio; `ours_s` / `baseline_s` are the fit's first call at 17 and at 4 models
(ratio = 4-model / 17-model, so ≥ 0.67 meets "≤ 1.5×"); `max_abs_diff` is between the
first and the steady call's results (the same inputs: 0 unless something is stale).
Goals (issue 14, CPU): at 17 models the fit's and CKA's first call ≤ 10× steady and ≤ 1.5×
the 4-model first call.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = [384, 768, 1024, 768, 384, 1024, 768, 1536, 384, 768, 1024, 3072, 768, 1024, 768, 1024, 768]
COUNTS = (4, 8, 17)


def child(m: int, div: int, n_train: int, n_val: int) -> dict:
  sys.path.insert(0, ROOT)
  import jax
  import numpy as np

  from benchmarks import _common
  from lead_jax.similarity import cka
  from lead_jax.stitch import closed_form as cf
  from lead_jax.stitch import mlp

  dims = [d // div for d in STUDY[:m]]
  xs = _common.correlated_embeddings(dims, n_train + n_val, seed=0, latent=min(dims))
  tr, va = [x[:n_train] for x in xs], [x[n_train:] for x in xs]
  lams = np.concatenate([[0.0], np.logspace(-4, 4, 9)])
  scfg = mlp.StitchConfig(depth=1)
  tcfg = mlp.TrainConfig(steps=50, eval_every=50, batch_size=64, warmup_steps=5, patience=0)
  plan = mlp.make_plan(dims, scfg)
  m_tr, m_va = mlp.stack_data(tr, plan), mlp.stack_data(va, plan)
  jobs = {
      "cka": lambda: cka.cka_all_pairs(tr),
      "fit": lambda: cf.fit_all_pairs(tr, va, lams),
      "fit_no_predictions": lambda: cf.fit_all_pairs(tr, va, lams, predictions=False),
      "kfold": lambda: cf.cross_validate_all_pairs(tr, lams, n_folds=3),
      "mlp_chunk": lambda: [g["params"] for g in mlp.fit(plan, m_tr, m_va, scfg, tcfg)["groups"]],
  }
  jax.block_until_ready(jax.numpy.zeros(8) + 1)  # backend start-up is not a compile
  out = {"groups": len(set(dims)), "dims": dims}
  for name, fn in jobs.items():
    t = time.perf_counter()
    first = _common.block(fn())
    first_s = time.perf_counter() - t
    steady_s, again, _ = _common.time_median(fn, 3, warmup=0)
    diff = max(
        (
            float(np.nanmax(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
            for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again))
            if np.size(a) and np.issubdtype(np.asarray(a).dtype, np.floating)
        ),
        default=0.0,
    )
    out[name] = {
        "first_s": first_s,
        "steady_s": steady_s,
        "ratio": first_s / steady_s,
        "max_abs_diff": diff,
    }
    print(f"[{m} models] {name}: first {first_s:.2f}s, steady {steady_s:.3f}s", flush=True)
  return out


def main():
  ap = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--_child", type=int, default=0)
  args = ap.parse_args()
  div, counts = (16, (4, 17)) if args.quick else (8, COUNTS)
  if args._child:
    print(json.dumps(child(args._child, div, 512, 128)))
    return
  sys.path.insert(0, ROOT)
  from benchmarks import _common

  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": "", "JAX_ENABLE_COMPILATION_CACHE": "false"}
  res = {}
  for m in counts:
    cmd = [sys.executable, os.path.abspath(__file__), f"--_child={m}"] + (
        ["--quick"] if args.quick else []
    )
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
      sys.stderr.write(proc.stderr[-4000:])
      raise SystemExit(f"child with {m} models failed ({proc.returncode})")
    print("\n".join(ln for ln in proc.stdout.splitlines() if ln.startswith("[")), flush=True)
    res[m] = json.loads(proc.stdout.strip().splitlines()[-1])
  lo, hi = counts[0], counts[-1]
  summary = {
      f"{name}_first_over_steady_{hi}": res[hi][name]["ratio"]
      for name in ("cka", "fit", "fit_no_predictions", "kfold", "mlp_chunk")
  }
  summary.update(
      {
          f"{name}_first_{hi}_over_first_{lo}": res[hi][name]["first_s"] / res[lo][name]["first_s"]
          for name in ("cka", "fit", "fit_no_predictions", "kfold", "mlp_chunk")
      }
  )
  goals = {
      "fit_first_le_10x_steady": summary[f"fit_first_over_steady_{hi}"] <= 10,
      "fit_first_le_1.5x_4_models": summary[f"fit_first_{hi}_over_first_{lo}"] <= 1.5,
      "cka_first_le_10x_steady": summary[f"cka_first_over_steady_{hi}"] <= 10,
      "cka_first_le_1.5x_4_models": summary[f"cka_first_{hi}_over_first_{lo}"] <= 1.5,
  }
  print(
      json.dumps(
          {
              "name": "compile" + ("_quick" if args.quick else ""),
              "ours_s": res[hi]["fit"]["first_s"],
              "baseline_s": res[lo]["fit"]["first_s"],
              "ratio": res[lo]["fit"]["first_s"] / res[hi]["fit"]["first_s"],
              "max_abs_diff": max(
                  r[n]["max_abs_diff"] for r in res.values() for n in r if isinstance(r[n], dict)
              ),
              **summary,
              "goals": goals,
              "per_count": res,
              "matmul_gflops": round(_common.matmul_rate() / 1e9, 1),
              "cpu_avx512": "avx512f" in open("/proc/cpuinfo").read()
              if os.path.exists("/proc/cpuinfo")
              else None,
              "backend": __import__("jax").default_backend(),
          }
      )
  )


if __name__ == "__main__":
  main()
