"""Query-side serving latency and batch throughput of a 1024 → 1024 ridge stitch, on CPU.

    .venv/bin/python benchmarks/bench_serve.py [--quick]

The stitch is a real ridge fit (the engine's `fit_all_pairs` through
`lead_jax.migrate.calibrate.fit_ridge`, λ = 1) between two synthetic 1024-d spaces,
saved and loaded back with `lead_jax.migrate.serve.Stitch.load`, as a server would.

  * one query: median wall time of `Stitch.apply(x)` for one [1024] vector (the numpy
    mat-vec path), beside the jitted XLA path on the same vector (`apply_jit`, dispatch
    included) and a bare numpy `x @ W + b`; goal ≤ 50 µs median;
  * batch: 10,000 vectors through `Stitch.apply` (the jitted path) against a plain numpy
    matmul `X @ W + b` in the same run: ours_s, baseline_s, ratio = baseline / ours, and
    max_abs_diff between the two.

Last stdout line: the JSON record (ARCHITECTURE.md), latency figures included.
"""

import argparse
import pathlib
import platform
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import _common  # noqa: E402
from lead_jax.migrate import calibrate, serve  # noqa: E402

D = 1024
GOAL_US = 50.0


def _latency_us(fn, n: int) -> dict:
  for _ in range(min(200, n)):
    fn()
  ts = []
  for _ in range(n):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  ts = np.asarray(ts) * 1e6
  return {"median_us": float(np.median(ts)), "p90_us": float(np.quantile(ts, 0.9))}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args()
  n_batch = 2_000 if args.quick else 10_000
  n_lat = 2_000 if args.quick else 20_000
  repeats = 5 if args.quick else 15
  x_old, x_new = _common.correlated_embeddings([D, D], 3 * D, seed=0)
  pairs = calibrate.fit_ridge(x_new, x_old, {(0, 1): 1.0, (1, 0): 1.0})
  with tempfile.TemporaryDirectory() as tmp:
    calibrate.save_affine(pathlib.Path(tmp), pairs, ["new", "old"])
    st = serve.Stitch.load(tmp, source="new", target="old")
    w = np.asarray(st.saved.params["W"], np.float32)
    b = np.asarray(st.saved.params["b"], np.float32)
    q = np.random.default_rng(1).standard_normal((n_lat, D)).astype(np.float32)
    it = iter(range(10**9))
    one = lambda: st.apply(q[next(it) % n_lat])
    lat = _latency_us(one, n_lat)
    lat_jit = _latency_us(lambda: st.apply_jit(q[next(it) % n_lat][None]), n_lat // 4)
    lat_np = _latency_us(lambda: q[next(it) % n_lat] @ w + b, n_lat // 4)
    single_diff = max(
        float(np.max(np.abs(st.apply(q[i]) - st.apply_jit(q[i][None])[0]))) for i in range(200)
    )
    xb = np.random.default_rng(2).standard_normal((n_batch, D)).astype(np.float32)
    ours, y_ours, _ = _common.time_median(lambda: st.apply(xb), repeats)
    base, y_base, _ = _common.time_median(lambda: xb @ w + b, repeats)
    diff = float(np.max(np.abs(np.asarray(y_ours) - y_base)))
  rec = {
      "name": "serve_ridge_1024" + ("_quick" if args.quick else ""),
      "ours_s": ours,
      "baseline_s": base,
      "ratio": base / ours,
      "max_abs_diff": diff,
      "batch_rows": n_batch,
      "batch_rows_per_s": n_batch / ours,
      "single_median_us": lat["median_us"],
      "single_p90_us": lat["p90_us"],
      "single_goal_us": GOAL_US,
      "single_meets_goal": lat["median_us"] <= GOAL_US,
      "single_jit_median_us": lat_jit["median_us"],
      "single_numpy_xw_median_us": lat_np["median_us"],
      "single_vs_jit_max_abs_diff": single_diff,
      "machine": platform.processor() or platform.machine(),
  }
  print(
      f"one query: {lat['median_us']:.1f} µs median (goal ≤ {GOAL_US:.0f}), jitted path "
      f"{lat_jit['median_us']:.1f} µs; batch {n_batch}: ours {ours * 1e3:.2f} ms, numpy "
      f"{base * 1e3:.2f} ms",
      file=sys.stderr,
  )
  _common.emit(rec)


if __name__ == "__main__":
  main()
