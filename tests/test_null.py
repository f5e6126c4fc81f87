"""Permutation nulls: float64 references, uniform p-values under H0, power, one shared shuffle."""

import jax
import numpy as np
import pytest
from scipy import stats

from lead_jax.errors import InputError
from lead_jax.similarity import null as null_lib
from lead_jax.similarity.cka import cka_all_pairs


def _ref_knn(x, k):
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  s = x @ x.T
  np.fill_diagonal(s, -np.inf)
  return np.argsort(-s, axis=1, kind="stable")[:, :k]


def _ref_mknn(a, b, k):
  la, lb = _ref_knn(a, k), _ref_knn(b, k)
  return np.mean([len(set(u) & set(v)) / k for u, v in zip(la, lb)])


def _ref_cka(x, y):
  """Linear and debiased CKA from explicit N×N kernels (tests/test_cka.py's formulas)."""
  from tests.test_cka import hsic_u

  n = x.shape[0]
  h = np.eye(n) - 1.0 / n
  k, l = x @ x.T, y @ y.T
  lin = np.trace(h @ k @ h @ l) / np.sqrt(np.trace(h @ k @ h @ k) * np.trace(h @ l @ h @ l))
  deb = hsic_u(k, l) / np.sqrt(hsic_u(k, k) * hsic_u(l, l))
  return lin, deb


def _planted(n=120, seed=0):
  rng = np.random.default_rng(seed)
  lat = rng.normal(size=(n, 3))
  return [
      lat @ rng.normal(size=(3, d)) + 0.3 * rng.normal(size=(n, d)) + rng.normal(size=d)
      for d in (5, 8, 5)
  ]


def test_null_samples_match_float64_references_with_one_shared_shuffle():
  """Every null draw of all three statistics equals the reference on X_i vs X_j[π_p]
  with the same π_p: one set of permutations serves every pair and statistic."""
  xs = _planted()
  perms = np.asarray(null_lib.permutations(3, 4, 120))
  with jax.enable_x64(True):
    out = null_lib.null_all_pairs(xs, perms=perms, knn_k=5, control_dim=None, dtype=np.float64)
  for p, pi in enumerate(perms):
    for i in range(3):
      for j in range(i + 1, 3):
        lin, deb = _ref_cka(xs[i] - xs[i].mean(0), xs[j][pi] - xs[j].mean(0))
        for stat, ref in (
            ("linear", lin),
            ("debiased", deb),
            ("mutual_knn", _ref_mknn(xs[i], xs[j][pi], 5)),
        ):
          got = out["null"][stat][p]
          np.testing.assert_allclose(got[i, j], ref, rtol=1e-9, atol=1e-12, err_msg=stat)
          np.testing.assert_allclose(got[j, i], ref, rtol=1e-9, atol=1e-12, err_msg=stat)
  assert np.isnan(out["null"]["linear"][:, 0, 0]).all()
  # observed values: the CKA stage's numbers and the reference mKNN
  with jax.enable_x64(True):
    cka = cka_all_pairs(xs, control_dim=None, dtype=np.float64)
  np.testing.assert_allclose(out["observed"]["linear"], cka["linear"], rtol=1e-10)
  np.testing.assert_allclose(out["observed"]["debiased"], cka["debiased"], rtol=1e-10)
  np.testing.assert_allclose(out["observed"]["mutual_knn"][0, 1], _ref_mknn(xs[0], xs[1], 5))


def test_permutations_drawn_once_per_call(monkeypatch):
  calls = []
  real = null_lib.permutations
  monkeypatch.setattr(null_lib, "permutations", lambda *a: calls.append(a) or real(*a))
  null_lib.null_all_pairs(_planted(), n_perm=8, knn_k=5, control_dim=4)
  assert len(calls) == 1


def test_p_values_uniform_on_independent_spaces():
  """Under H0 (independent Gaussian spaces) the p-values of all pairs are uniform (KS)."""
  rng = np.random.default_rng(0)
  xs = [rng.normal(size=(200, d)) for d in (4, 6, 4, 8, 6, 4, 5, 7, 4, 6, 5, 4)]
  out = null_lib.null_all_pairs(xs, n_perm=200, seed=1, knn_k=10, control_dim=None)
  iu = np.triu_indices(len(xs), 1)
  for stat in null_lib.STATISTICS:
    cal = null_lib.calibrate(out["observed"][stat], out["null"][stat])
    p = cal["p_value"][iu]
    assert p.min() >= 1 / 201
    ks = stats.kstest(p, "uniform")
    assert ks.pvalue > 0.01, (stat, ks, np.sort(p))
    assert abs(np.nanmean(cal["calibrated"][iu])) < 0.05, stat  # chance-corrected ≈ 0


def test_planted_shared_subspace_is_significant():
  out = null_lib.null_all_pairs(_planted(200), n_perm=200, knn_k=10, control_dim=6)
  for stat in null_lib.STATISTICS:
    cal = null_lib.calibrate(out["observed"][stat], out["null"][stat])
    p = cal["p_value"]
    np.testing.assert_array_equal(p[:3, :3][~np.eye(3, dtype=bool)], 1 / 201)
    assert (p[:3, 3] > 1 / 201).any() or stat == "mutual_knn", stat  # the control is null
    assert (cal["calibrated"][:3, :3][~np.eye(3, dtype=bool)] > 0.1).all(), stat


def test_calibrate_definitions():
  obs = np.array([[1.0, 0.5], [0.5, 1.0]])
  nul = np.zeros((4, 2, 2))
  nul[:, 0, 1] = nul[:, 1, 0] = [0.1, 0.2, 0.5, 0.6]
  c = null_lib.calibrate(obs, nul)
  np.testing.assert_allclose(c["null_mean"][0, 1], 0.35)
  np.testing.assert_allclose(c["calibrated"][0, 1], (0.5 - 0.35) / 0.65)
  np.testing.assert_allclose(c["z"][0, 1], 0.15 / np.std([0.1, 0.2, 0.5, 0.6], ddof=1))
  np.testing.assert_allclose(c["p_value"][0, 1], (1 + 2) / 5)  # ties count as ≥
  assert np.isnan(c["p_value"][0, 0])


def test_bad_input_names_the_array_and_row():
  xs = _planted()
  xs[1] = xs[1].copy()
  xs[1][7, 2] = np.nan
  with pytest.raises(InputError, match=r"xs\[1\].*row 7"):
    null_lib.null_all_pairs(xs, n_perm=2, knn_k=5)
  with pytest.raises(InputError, match="knn_k"):
    null_lib.null_all_pairs(_planted(), n_perm=2, knn_k=500)
