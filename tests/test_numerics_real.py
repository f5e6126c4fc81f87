"""Closed-form numerics on real embeddings, against float64 numpy.

Real spaces have what synthetic tests lack: dead dimensions (all-MiniLM-L6-v2 has a
few whose variance is float32 rounding noise) and near-singular Grams
(paraphrase-MiniLM-L3-v2's centred Gram spans eigenvalues 1e-6 … 1e2). The rows are
WordNet glosses embedded by the shipped offline models (1,500 train / 1,000 val).
"""

import numpy as np
import pytest

from lead_jax.encoders import registry
from lead_jax.stitch import closed_form as cf
from tests._helpers import wordnet_rows

MODELS = ("all-MiniLM-L6-v2", "paraphrase-MiniLM-L3-v2", "wordllama")
pytestmark = pytest.mark.skipif(
    not all((registry.models_cache_dir() / m).is_dir() for m in MODELS),
    reason="offline models not installed: run `bash scripts/setup.sh`",
)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
  out = tmp_path_factory.mktemp("real")
  tr, va = wordnet_rows(out, MODELS, 2_500, 1_500, 1_000, splits=("train", "val"))
  names = list(MODELS)
  fit = cf.fit_all_pairs(tr, va, [0.0, 1.0], control_dim=None, spectra=False, predictions=False)
  return names, tr, va, fit


def _centred(tr, va, i):
  x = tr[i].astype(np.float64)
  mu = x.mean(0)
  return x - mu, va[i].astype(np.float64) - mu


def test_the_data_is_hard(real):
  """The regime the float32 shortcuts broke in: a dead dimension and a near-singular Gram."""
  _, tr, _, _ = real
  var = tr[0].astype(np.float64).var(0)
  assert var.min() < 1e-10 * var.max()  # MiniLM-L6: dead dims
  s = np.linalg.eigvalsh(_centred(tr, tr, 1)[0].T @ _centred(tr, tr, 1)[0])
  assert s[0] < 1e-7 * s[-1]  # MiniLM-L3: condition number of the Gram ≥ 1e7


def test_procrustes_is_orthogonal_exact_and_symmetric(real):
  names, tr, va, fit = real
  mse = np.asarray(fit["procrustes"]["mse"])
  for i in range(len(names)):
    for j in range(len(names)):
      if i == j:
        continue
      xc, xv = _centred(tr, va, i)
      yc, yv = _centred(tr, va, j)
      u, _, vt = np.linalg.svd(xc.T @ yc, full_matrices=False)
      ref = np.mean((xv @ (u @ vt) - yv) ** 2)
      assert abs(mse[i, j] - ref) <= 1e-5 * ref, (names[i], names[j], mse[i, j], ref)
      r, _ = cf.polar(np.asarray(xc.T @ yc, np.float32))  # float32 in, like the engine
      r = np.asarray(r, np.float64)
      small = r.T @ r if r.shape[0] >= r.shape[1] else r @ r.T  # semi-orthogonal if unequal
      assert np.abs(small - np.eye(len(small))).max() <= 1e-5, (names[i], names[j])
  # equal widths (MiniLM-L6 ↔ MiniLM-L3, 384 ↔ 384): any rotation errs the same both ways
  assert abs(mse[0, 1] - mse[1, 0]) <= 1e-5 * mse[0, 1]


def test_ridge_matches_float64(real):
  names, tr, va, fit = real
  mse = np.asarray(fit["ridge"]["mse"])[..., 1]  # λ = 1
  for i in range(len(names)):
    for j in range(len(names)):
      if i != j:
        xc, xv = _centred(tr, va, i)
        yc, yv = _centred(tr, va, j)
        w = np.linalg.solve(xc.T @ xc + np.eye(xc.shape[1]), xc.T @ yc)
        ref = np.mean((xv @ w - yv) ** 2)
        assert abs(mse[i, j] - ref) <= 1e-5 * ref, (names[i], names[j])


def test_ols_matches_float64_min_norm_lstsq(real):
  names, tr, va, fit = real
  mse = np.asarray(fit["ridge"]["mse"])[..., 0]  # λ = 0
  worst = 0.0
  for i in range(len(names)):
    for j in range(len(names)):
      if i != j:
        xc, xv = _centred(tr, va, i)
        yc, yv = _centred(tr, va, j)
        ref = np.mean((xv @ np.linalg.lstsq(xc, yc, rcond=None)[0] - yv) ** 2)
        worst = max(worst, abs(mse[i, j] - ref) / ref)
  assert worst <= 1e-5, worst


def test_kfold_ols_matches_float64_min_norm_lstsq(real):
  """Each fold's λ = 0 entry is lstsq on that fold's train rows (float32 inputs)."""
  names, tr, _, _ = real
  cv = cf.cross_validate_all_pairs(
      tr, [0.0, 1.0], n_folds=3, control_dim=None, spectra=False, predictions=False
  )
  mse = np.asarray(cv["folds"]["ridge"]["mse"])[..., 0]  # [K, M, M]
  idx, mask = cf.metrics.fold_indices(len(tr[0]), 3, 0)
  worst = 0.0
  for f in range(3):
    val = idx[f][mask[f] > 0]
    fit = np.setdiff1d(np.arange(len(tr[0])), val)
    for i in range(len(names)):
      for j in range(len(names)):
        if i != j:
          x, y = tr[i].astype(np.float64), tr[j].astype(np.float64)
          mx, my = x[fit].mean(0), y[fit].mean(0)
          w = np.linalg.lstsq(x[fit] - mx, y[fit] - my, rcond=None)[0]
          ref = np.mean(((x[val] - mx) @ w - (y[val] - my)) ** 2)
          worst = max(worst, abs(mse[f, i, j] - ref) / ref)
  assert worst <= 1e-5, worst


def test_calibration_curve_matches_float64_refits(real):
  """Every prefix's chosen ridge (val MSE, R², predictions) against a float64 refit on those rows."""
  from lead_jax.stitch import curve

  names, tr, va, _ = real
  lambdas = (1e-3, 1e-1, 1.0, 10.0, 1e3)
  order = curve.permutation(len(tr[0]), 0)
  for g in curve.source_curves(tr, va, (250, 750), lambdas):
    xv = va[g.source].astype(np.float64)
    for t in range(len(names)):
      if t == g.source:
        continue
      for j, k in enumerate(g.sizes):
        x, y = tr[g.source][order[:k]].astype(np.float64), tr[t][order[:k]].astype(np.float64)
        mx, my = x.mean(0), y.mean(0)
        yv = va[t].astype(np.float64)
        refs = []
        for lam in lambdas:
          w = np.linalg.solve(
              (x - mx).T @ (x - mx) + lam * np.eye(x.shape[1]), (x - mx).T @ (y - my)
          )
          refs.append((np.mean((yv - (xv - mx) @ w - my) ** 2), lam, (xv - mx) @ w + my))
        mse, lam, pred = min(refs, key=lambda r: r[0])
        w, b = g.stitch(j, t)
        ours = xv @ w.astype(np.float64) + b
        where = (names[g.source], names[t], int(k))
        assert g.lam[j, t] == pytest.approx(lam), where
        assert abs(g.mse[j, t] - mse) <= 1e-5 * mse, (where, g.mse[j, t], mse)
        assert np.abs(ours - pred).max() <= 1e-4 * np.abs(pred).max(), where
