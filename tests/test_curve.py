"""The calibration-size curve against float64 numpy refits, and against the engine at K = N."""

import jax
import numpy as np
import pytest

from lead_jax.errors import InputError
from lead_jax.stitch import closed_form as cf
from lead_jax.stitch import curve

LAMBDAS = (1e-2, 1e-1, 1.0, 10.0, 100.0)


def _spaces(n_train=900, n_val=300, dims=(16, 24, 12), seed=0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n_train + n_val, 20))
  xs = [z @ rng.normal(size=(20, d)) + 0.3 * rng.normal(size=(len(z), d)) + 1.0 for d in dims]
  xs[1][:, 3] = 0.5  # a dead dimension, as real spaces have
  xs = [x.astype(np.float32) for x in xs]
  return [x[:n_train] for x in xs], [x[n_train:] for x in xs]


def _refit(x, y, xv, yv, lambdas):
  """float64 ridge on the rows given, λ by val MSE: (λ, mse, r2, r2_vw, predictions)."""
  x, y, xv, yv = (a.astype(np.float64) for a in (x, y, xv, yv))
  mx, my = x.mean(0), y.mean(0)
  best = None
  for lam in lambdas:
    w = np.linalg.solve((x - mx).T @ (x - mx) + lam * np.eye(x.shape[1]), (x - mx).T @ (y - my))
    pred = (xv - mx) @ w + my
    mse = np.mean((yv - pred) ** 2)
    if best is None or mse < best[1]:
      best = (lam, mse, pred)
  lam, mse, pred = best
  sse, sst = ((yv - pred) ** 2).sum(0), ((yv - yv.mean(0)) ** 2).sum(0)
  ok = sst > 1e-8 * sst.max()
  return lam, mse, np.mean(1 - sse[ok] / sst[ok]), 1 - sse.sum() / sst.sum(), pred


@pytest.mark.parametrize("x64", [False, True])
def test_every_prefix_equals_a_float64_refit(x64):
  tr, va = _spaces()
  sizes, seed = (40, 200, 500), 3
  order = curve.permutation(len(tr[0]), seed)
  with jax.enable_x64(x64):
    got = list(
        curve.source_curves(tr, va, sizes, LAMBDAS, seed=seed, dtype="float64" if x64 else None)
    )
  tol = 1e-9 if x64 else 2e-5
  assert [list(g.sizes) for g in got] == [[40, 200, 500, 900]] * 3
  for g in got:
    for t in range(3):
      if t == g.source:
        continue
      for j, k in enumerate(g.sizes):
        rows = order[:k]
        lam, mse, r2, r2_vw, pred = _refit(
            tr[g.source][rows], tr[t][rows], va[g.source], va[t], LAMBDAS
        )
        w, b = g.stitch(j, t)
        ours = va[g.source].astype(np.float64) @ w.astype(np.float64) + b
        assert g.lam[j, t] == pytest.approx(lam), (g.source, t, k)
        assert abs(g.mse[j, t] - mse) <= tol * mse, (g.source, t, k)
        assert abs(g.r2[j, t] - r2) <= tol and abs(g.r2_vw[j, t] - r2_vw) <= tol
        assert np.abs(ours - pred).max() <= 10 * tol * np.abs(pred).max(), (g.source, t, k)


def test_all_rows_equal_the_engines_chosen_ridge():
  tr, va = _spaces(seed=1)
  fit = cf.fit_all_pairs(tr, va, LAMBDAS, control_dim=None, spectra=False, predictions=False)
  ch = {m: np.asarray(fit["chosen"][m]) for m in ("lambda", "mse", "r2", "r2_vw")}
  for g in curve.source_curves(tr, va, (), LAMBDAS):
    for t in range(3):
      if t != g.source:
        a = (g.source, t)
        lam, mse, *_ = _refit(tr[g.source], tr[t], va[g.source], va[t], LAMBDAS)
        assert g.lam[0, t] == pytest.approx(ch["lambda"][a]) == pytest.approx(lam)
        # Both are float32 fits of a source with a dead dimension at λ = 0.01: each is
        # within ~5e-6 of the float64 refit (the curve's bound is 2e-5, test above), so
        # they agree to the sum of their errors, not to either one's.
        assert ch["mse"][a] == pytest.approx(mse, rel=1e-5)
        assert g.mse[0, t] == pytest.approx(ch["mse"][a], rel=2e-5)
        assert g.r2[0, t] == pytest.approx(ch["r2"][a], abs=1e-5)
        assert g.r2_vw[0, t] == pytest.approx(ch["r2_vw"][a], abs=1e-5)


def test_sizes_and_bad_input():
  assert curve.curve_sizes(1000, (250, 500, 1000, 2000)) == (250, 500, 1000)
  assert curve.curve_sizes(150, (250, 500)) == (150,)
  with pytest.raises(InputError, match="≥ 2"):
    curve.curve_sizes(100, (1, 50))
  tr, va = _spaces(n_train=60, n_val=20)
  with pytest.raises(InputError, match="positive"):
    next(curve.source_curves(tr, va, (20,), (0.0, 1.0)))
  with pytest.raises(ValueError, match=r"val\[1\]"):
    next(curve.source_curves(tr, [va[0], va[1][:, :5], va[2]], (20,), LAMBDAS))
  bad = [x.copy() for x in tr]
  bad[2][7, 0] = np.nan
  with pytest.raises(ValueError, match=r"train\[2\].*row 7"):
    next(curve.source_curves(bad, va, (20,), LAMBDAS))
