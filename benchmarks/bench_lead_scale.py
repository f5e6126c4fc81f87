"""The reference study's shape end to end: 17 models × 6 datasets, ridge λ-path + CKA.

  .venv/bin/python benchmarks/bench_lead_scale.py [--quick]

Full shape: dims 384×3, 768×7, 1024×5, 1536, 3072; 20000 rows per dataset (16000 train /
4000 val), default λ-path, all pairs (17·16 = 272 per dataset, 1632 in all), CKA on all
20000 rows.  Inputs are made device-resident first; `load_s` (host → device) is reported
separately from `ours_s` (compute).  --quick divides dims by 8 and uses 2000 rows, 2
datasets (CPU).  The baseline is the per-pair float32 numpy loop of bench_closed_form,
timed on `--baseline-pairs` pairs and extrapolated linearly to all pairs × datasets
(the reference took 162 s on an H100 for the full shape, loading included).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common
from benchmarks.bench_closed_form import baseline as pair_loop
from lead_jax.similarity import cka as cka_lib
from lead_jax.stitch import closed_form

DIMS = [384] * 3 + [768] * 7 + [1024] * 5 + [1536, 3072]


def run_all(datasets, lambdas, n_tr, predictions):
  out = []
  for xs in datasets:
    c = cka_lib.cka_all_pairs(xs, control_dim=768)
    f = closed_form.fit_all_pairs(
        [x[:n_tr] for x in xs],
        [x[n_tr:] for x in xs],
        lambdas,
        procrustes=False,
        spectra=False,
        predictions=predictions,
    )
    out.append((c["debiased"], f["ridge"]["mse"], f["chosen"]["lambda"]))
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--datasets", type=int, default=None)
  ap.add_argument("--baseline-pairs", type=int, default=4)
  ap.add_argument("--no-predictions", action="store_true")
  args = ap.parse_args()
  if args.quick:
    dims, n, n_ds = [d // 8 for d in DIMS], 2000, 2
  else:
    dims, n, n_ds = DIMS, 20000, 6
  n_ds = args.datasets or n_ds
  n_tr = int(0.8 * n)
  lambdas = closed_form.DEFAULT_LAMBDAS
  host = [_common.correlated_embeddings(dims, n, seed=s) for s in range(n_ds)]
  t = time.perf_counter()
  datasets = [[jax.device_put(jnp.asarray(x)) for x in xs] for xs in host]
  _common.block(datasets)
  load_s = time.perf_counter() - t
  print(
      f"data on {jax.devices()[0]} in {load_s:.1f}s; first call (compiles)…",
      file=sys.stderr,
      flush=True,
  )
  t = time.perf_counter()
  _common.block(run_all(datasets, lambdas, n_tr, not args.no_predictions))
  first_s = time.perf_counter() - t
  print(f"first call {first_s:.1f}s; timing {args.repeats} repeats…", file=sys.stderr, flush=True)
  ours_s, res, times = _common.time_median(
      lambda: run_all(datasets, lambdas, n_tr, not args.no_predictions), args.repeats, warmup=0
  )

  # Baseline: the per-pair loop on a few pairs of dataset 0, extrapolated.
  xs = host[0]
  pairs = [(i, (i + 1 + 7 * i) % len(dims)) for i in range(args.baseline_pairs)]
  pairs = [(i, j) for i, j in pairs if i != j]
  t = time.perf_counter()
  worst = 0.0
  for i, j in pairs:
    ref = pair_loop([xs[i][:n_tr], xs[j][:n_tr]], [xs[i][n_tr:], xs[j][n_tr:]], lambdas, np.float32)
    ours = np.asarray(res[0][1])[i, j]
    worst = max(
        worst, float(np.max(np.abs(ours[1:] - ref["mse"][0, 1, 1:]) / ref["mse"][0, 1, 1:]))
    )
  per_pair = (time.perf_counter() - t) / len(pairs)
  n_pairs = len(dims) * (len(dims) - 1) * n_ds
  base_s = per_pair * n_pairs
  _common.emit(
      {
          "name": "lead_scale" + ("_quick" if args.quick else ""),
          "ours_s": ours_s,
          "baseline_s": base_s,
          "ratio": base_s / ours_s,
          "max_rel_diff": worst,
          "max_rel_diff_note": "ridge val MSE, λ>0, vs float32 per-pair loop on the timed pairs",
          "baseline_extrapolated_from_pairs": len(pairs),
          "load_s": load_s,
          "first_call_s": first_s,
          "ours_times": times,
          "reference_study_s": 162.0,
          "goal_s_h100": 2.0,
          "shape": {
              "dims": dims,
              "rows": n,
              "n_train": n_tr,
              "datasets": n_ds,
              "pairs": n_pairs,
              "n_lambdas": len(lambdas),
              "predictions": not args.no_predictions,
          },
          "backend": jax.default_backend(),
          "device": str(jax.devices()[0]),
          "cpu_count": os.cpu_count(),
      }
  )


if __name__ == "__main__":
  main()
