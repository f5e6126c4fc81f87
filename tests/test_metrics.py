"""Metrics, controls, k-fold CV and the results table against plain numpy."""

import jax
import jax.numpy as jnp
import numpy as np

from lead_jax.stitch import closed_form as cf
from lead_jax.stitch import metrics
from tests._helpers import correlated

LAMS = np.array([0.0, 1e-2, 1.0, 100.0])


_data = correlated


def ref_fit_metrics(xtr, ytr, xv, yv, lam):
  xm, ym = xtr.mean(0), ytr.mean(0)
  xc, yc = xtr - xm, ytr - ym
  w = (
      np.linalg.lstsq(xc, yc, rcond=None)[0]
      if lam == 0
      else np.linalg.solve(xc.T @ xc + lam * np.eye(xc.shape[1]), xc.T @ yc)
  )
  p = (xv - xm) @ w + ym
  return ref_metrics(yv, p)


def ref_metrics(y, p):
  r = y - p
  sse = (r**2).sum(0)
  sst = ((y - y.mean(0)) ** 2).sum(0)
  out = {
      "mse": (r**2).mean(),
      "r2": np.mean(1 - sse / sst),
      "r2_vw": 1 - sse.sum() / sst.sum(),
      "mae": np.abs(r).mean(),
      "eav": 1 - np.abs(r).sum() / np.abs(y - np.median(y, 0)).sum(),
  }
  with np.errstate(invalid="ignore", divide="ignore"):
    out["cos"] = np.mean((p * y).sum(1) / np.linalg.norm(p, axis=1) / np.linalg.norm(y, axis=1))
  return out


def test_regression_metrics_plain_definition():
  rng = np.random.default_rng(0)
  y, p = rng.normal(size=(50, 4)) + 1, rng.normal(size=(50, 4))
  got = jax.jit(metrics.regression_metrics)(jnp.asarray(y), jnp.asarray(p))
  host = metrics.regression_metrics(y.astype(np.float32), p.astype(np.float32), xp=np)
  ref = ref_metrics(y, p)
  for k, v in ref.items():
    np.testing.assert_allclose(np.asarray(got[k]), v, rtol=1e-5)
    np.testing.assert_allclose(host[k], v, rtol=1e-5)


def test_controls_train_mean_and_zero():
  xs = _data([5, 7], 150, seed=2)
  tr, va = [x[:100] for x in xs], [x[100:] for x in xs]
  with jax.enable_x64(True):
    on_val = jax.tree.map(
        np.asarray, cf.fit_all_pairs(tr, va, LAMS, control_dim=6, dtype=np.float64)
    )
    on_train = jax.tree.map(
        np.asarray, cf.fit_all_pairs(tr, tr, LAMS, control_dim=6, dtype=np.float64)
    )
  for j in range(2):
    # train-mean estimator: R² = 0 by construction on the train split, ≤ 0 on val.
    np.testing.assert_allclose(on_train["controls"]["train_mean"]["r2"][j], 0.0, atol=1e-12)
    np.testing.assert_allclose(on_train["controls"]["train_mean"]["r2_vw"][j], 0.0, atol=1e-12)
    mu = tr[j].mean(0)
    ref = ref_metrics(va[j], np.broadcast_to(mu, va[j].shape))
    for k in ("mse", "r2", "r2_vw", "mae", "eav", "cos"):
      np.testing.assert_allclose(on_val["controls"]["train_mean"][k][j], ref[k], rtol=1e-9)
    assert on_val["controls"]["train_mean"]["r2"][j] <= 0
    ref = ref_metrics(va[j], np.zeros_like(va[j]))
    for k in ("mse", "r2", "r2_vw", "mae", "eav"):
      np.testing.assert_allclose(on_val["controls"]["zero"][k][j], ref[k], rtol=1e-9)
    assert np.isnan(on_val["controls"]["zero"]["cos"][j])
    # the random Gaussian source explains ~nothing (chosen λ is large, R² ≤ small).
    assert on_val["chosen"]["r2_vw"][2, j] < 0.05


def test_planted_linear_map_recovers_expected_r2():
  rng = np.random.default_rng(4)
  n, d_a, d_b, sigma = 6000, 10, 6, 0.5
  x = rng.normal(size=(n, d_a))
  a = rng.normal(size=(d_a, d_b)) / np.sqrt(d_a)
  y = x @ a + sigma * rng.normal(size=(n, d_b)) + 2.0
  signal = (a**2).sum(0)  # per-dim var of x @ a
  expect_vw = signal.sum() / (signal.sum() + d_b * sigma**2)
  expect_avg = np.mean(signal / (signal + sigma**2))
  out = cf.fit_all_pairs([x[:5000], y[:5000]], [x[5000:], y[5000:]], LAMS, control_dim=None)
  assert abs(float(out["chosen"]["r2_vw"][0, 1]) - expect_vw) < 0.02
  assert abs(float(out["chosen"]["r2"][0, 1]) - expect_avg) < 0.02


def test_kfold_matches_refit_per_fold():
  xs = _data([5, 7, 4], 103, seed=6)
  k = 4
  with jax.enable_x64(True):
    cv = cf.cross_validate_all_pairs(
        xs, LAMS, n_folds=k, fold_seed=1, control_dim=3, dtype=np.float64
    )
    cv = {
        **jax.tree.map(np.asarray, {k_: v for k_, v in cv.items() if k_ != "meta"}),
        "meta": cv["meta"],
    }
  idx, mask = metrics.fold_indices(103, k, 1)
  assert sorted(np.concatenate([i[m > 0] for i, m in zip(idx, mask)])) == list(range(103))
  for f in range(k):
    val_rows = idx[f][mask[f] > 0]
    tr_rows = np.setdiff1d(np.arange(103), val_rows)
    for i, j in [(0, 1), (1, 2), (2, 0)]:
      for l, lam in enumerate(LAMS):
        ref = ref_fit_metrics(xs[i][tr_rows], xs[j][tr_rows], xs[i][val_rows], xs[j][val_rows], lam)
        for m in ("mse", "r2", "r2_vw"):
          np.testing.assert_allclose(
              cv["folds"]["ridge"][m][f, i, j, l], ref[m], rtol=1e-7, err_msg=f"{m} f{f}"
          )
      l = int(cv["folds"]["chosen"]["lambda_index"][f, i, j])
      assert l == int(np.argmin(cv["mean"]["ridge"]["mse"][i, j]))
      ref = ref_fit_metrics(
          xs[i][tr_rows], xs[j][tr_rows], xs[i][val_rows], xs[j][val_rows], LAMS[l]
      )
      for m in ("mae", "eav", "cos"):
        np.testing.assert_allclose(
            cv["folds"]["chosen"][m][f, i, j], ref[m], rtol=1e-7, err_msg=f"{m} f{f}"
        )
  np.testing.assert_allclose(cv["mean"]["chosen"]["mae"], cv["folds"]["chosen"]["mae"].mean(0))
  np.testing.assert_allclose(
      cv["std"]["chosen"]["mae"], cv["folds"]["chosen"]["mae"].std(0, ddof=1)
  )


def test_results_table_long_format():
  xs = _data([5, 7, 4], 90, seed=7)
  out = cf.fit_all_pairs([x[:70] for x in xs], [x[70:] for x in xs], LAMS, control_dim=3)
  df = metrics.results_to_table(out, names=["a", "b", "c"], dataset="toy")
  assert list(df.columns) == ["dataset"] + list(metrics.TABLE_COLUMNS)
  m, n_l = 4, len(LAMS)
  ridge_path = df[(df.method == "ridge") & (df.metric == "mse")]
  assert len(ridge_path) == m * (m - 1) * n_l
  assert ridge_path.groupby(["source", "target"]).chosen.sum().eq(1).all()
  row = df[(df.source == "a") & (df.target == "b") & (df.metric == "mae")]
  assert len(row) == 1 and row.chosen.item()
  np.testing.assert_allclose(row.value.item(), float(out["chosen"]["mae"][0, 1]))
  assert set(df[df.method == "zero"].target) == {"a", "b", "c", "gaussian_control"}
  cv = cf.cross_validate_all_pairs(xs, LAMS, n_folds=3, control_dim=None, procrustes=False)
  dcv = metrics.results_to_table(cv)
  assert set(dcv.fold) == {"0", "1", "2", "mean", "std"}
