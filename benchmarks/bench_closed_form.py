"""All-pairs closed-form stitches vs the reference's per-pair loop.

  .venv/bin/python benchmarks/bench_closed_form.py [--quick]

6 models (dims 384, 384, 768, 768, 1024, 1536), 4000 train / 1000 val rows of correlated
synthetic embeddings, an 8-value λ-path, all metrics.  `ours_s` does the baseline's work
(no Gaussian control, Procrustes or spectra); `ours_with_control_procrustes_spectra_s`
adds those, as stitch_all_pairs runs it.  Baseline: for each ordered pair and
λ, build [X,1]ᵀ[X,1] + λ·diag(1,…,1,0) in float32 numpy, solve, predict val, compute
metrics (the intercept is unpenalised, as in ours).  Accuracy is checked against the same
loop in float64.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common
from lead_jax.stitch import closed_form

METRICS = ("mse", "log10_mse", "r2", "r2_vw", "mae", "eav", "cos")


def baseline(train, val, lambdas, dtype):
  """The reference: one pair, one λ at a time.  Returns {metric: [M, M, L]}."""
  m = len(train)
  out = {k: np.full((m, m, len(lambdas)), np.nan) for k in METRICS}
  tr = [x.astype(dtype) for x in train]
  va = [x.astype(dtype) for x in val]
  for i in range(m):
    xa = np.concatenate([tr[i], np.ones((len(tr[i]), 1), dtype)], axis=1)
    xva = np.concatenate([va[i], np.ones((len(va[i]), 1), dtype)], axis=1)
    for j in range(m):
      if i == j:
        continue
      y, yv = tr[j], va[j]
      for l, lam in enumerate(lambdas):
        a = xa.T @ xa
        pen = np.full(a.shape[0], lam, dtype)
        pen[-1] = 0
        a[np.diag_indices_from(a)] += pen
        w = np.linalg.solve(a, xa.T @ y)
        p = xva @ w
        r = yv - p
        sse_j = (r * r).sum(0)
        sst_j = ((yv - yv.mean(0)) ** 2).sum(0)
        out["mse"][i, j, l] = (r * r).mean()
        out["log10_mse"][i, j, l] = np.log10(out["mse"][i, j, l])
        out["r2"][i, j, l] = np.mean(1 - sse_j / sst_j)
        out["r2_vw"][i, j, l] = 1 - sse_j.sum() / sst_j.sum()
        out["mae"][i, j, l] = np.abs(r).mean()
        out["eav"][i, j, l] = 1 - np.abs(r).sum() / np.abs(yv - np.median(yv, axis=0)).sum()
        cos = (p * yv).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(yv, axis=1))
        out["cos"][i, j, l] = cos.mean()
  return out


def est_flops(dims, n_tr, n_v, n_l):
  """Matmul + decomposition flops of the same-work fit (estimate; eigh counted as 9a³)."""
  dims = list(dims)
  d = sum(dims)
  sq = sum(x * x for x in dims)
  f = n_tr * (d * d + sq)  # symmetric train Gram (blocks b ≥ a)
  f += 2 * 2 * n_v * sq  # projected val rows x̂ = x̃V and M = x̂ᵀx̂
  f += 2 * n_v * d * d  # Q = x̂ᵀỹ for every pair
  f += 2 * sq * d  # P = Vᵀ C_AB
  f += 2 * 2 * sq * d  # P Pᵀ, P Ω Pᵀ
  f += 2 * 2 * n_l * sq * len(dims)  # λ quadratic forms
  f += 2 * sq * d  # W at the chosen λ
  f += 2 * n_v * d * d  # predictions at the chosen λ
  f += sum(9 * a**3 for a in dims)  # eigh
  return float(f)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--no-procrustes", action="store_true")
  args = ap.parse_args()
  if args.quick:
    dims, n_tr, n_v = [96, 96, 192, 192, 256, 384], 1000, 250
  else:
    dims, n_tr, n_v = [384, 384, 768, 768, 1024, 1536], 4000, 1000
  lambdas = np.concatenate([[0.0], np.logspace(-3, 3, 7)])
  xs = _common.correlated_embeddings(dims, n_tr + n_v)
  train_np = [x[:n_tr] for x in xs]
  val_np = [x[n_tr:] for x in xs]
  train = [jnp.asarray(x) for x in train_np]
  val = [jnp.asarray(x) for x in val_np]
  # Headline: the same work as the baseline (λ-path + every metric, predictions at the chosen λ).
  # (λ = 0 from the Gram, as the baseline's float32 normal equations; the exact float64
  # OLS on the rows, the default, is timed beside it.)
  same = dict(control_dim=None, procrustes=False, spectra=False, predictions=True, exact_ols=False)
  # What stitch_all_pairs also does: the Gaussian control model, Procrustes, singular-value spectra.
  full = dict(control_dim=768, procrustes=not args.no_procrustes, spectra=True, predictions=True)

  ours_s, res, times = _common.time_median(
      lambda: closed_form.fit_all_pairs(train, val, lambdas, **same), args.repeats
  )
  exact_s, _, _ = _common.time_median(
      lambda: closed_form.fit_all_pairs(train, val, lambdas, **{**same, "exact_ols": True}),
      args.repeats,
  )
  full_s, _, _ = _common.time_median(
      lambda: closed_form.fit_all_pairs(train, val, lambdas, **full), args.repeats
  )
  base_s, _, btimes = _common.time_median(
      lambda: baseline(train_np, val_np, lambdas, np.float32), 1, warmup=0
  )
  ref64 = baseline(train_np, val_np, lambdas, np.float64)

  m = len(dims)
  off = ~np.eye(m, dtype=bool)
  rel = {}
  for k in ("mse", "log10_mse", "r2", "r2_vw"):
    ours = np.asarray(res["ridge"][k])[:m, :m]
    d = np.abs(ours - ref64[k]) / np.abs(ref64[k])
    rel[k] = (float(np.max(d[off][:, 1:])), float(np.max(d[off][:, 0])))
  idx = np.nan_to_num(np.asarray(res["chosen"]["lambda_index"])[:m, :m]).astype(int)
  for k in ("mae", "eav", "cos"):
    ours = np.asarray(res["chosen"][k])[:m, :m]
    ref = np.take_along_axis(ref64[k], idx[..., None], -1)[..., 0]
    d = np.abs(ours - ref) / np.abs(ref)
    at0 = idx[off] == 0
    rel[k] = (float(np.max(d[off][~at0], initial=0)), float(np.max(d[off][at0], initial=0)))
  max_rel = max(v[0] for v in rel.values())
  max_rel0 = max(v[1] for v in rel.values())
  rate = _common.matmul_rate()
  flops = est_flops(dims, n_tr, n_v, len(lambdas))
  record = {
      "name": "closed_form_all_pairs" + ("_quick" if args.quick else ""),
      "ours_s": ours_s,
      "baseline_s": base_s,
      "ratio": base_s / ours_s,
      "ours_with_exact_ols_s": exact_s,
      "ours_with_control_procrustes_spectra_s": full_s,
      "ratio_with_diagnostics": base_s / full_s,
      "max_rel_diff": max_rel,
      "max_rel_diff_lambda0": max_rel0,
      "max_rel_diff_by_metric": {k: v[0] for k, v in rel.items()},
      "goal_ratio_10": base_s / ours_s >= 10,
      "goal_accuracy": max_rel <= 1e-4 and max_rel0 <= 1e-3,
      "ours_est_gflops": flops / ours_s / 1e9,
      "matmul_gflops": rate / 1e9,
      "fraction_of_matmul_rate": flops / ours_s / rate,
      "ours_times": times,
      "baseline_times": btimes,
      "shape": {
          "dims": dims,
          "n_train": n_tr,
          "n_val": n_v,
          "n_lambdas": len(lambdas),
          "pairs": m * (m - 1),
      },
      "backend": jax.default_backend(),
      "cpu_count": os.cpu_count(),
  }
  _common.emit(record)


if __name__ == "__main__":
  main()
