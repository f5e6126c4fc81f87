"""CKNNA, SVCCA, PWCCA, Procrustes angle and RSA against plain float64 numpy formulas."""

import jax
import numpy as np
import pytest
from scipy import stats

from lead_jax.errors import InputError
from lead_jax.similarity import gram as gram_lib
from lead_jax.similarity import measures as ms


def _hsic_unbiased(k, l):
  """platonic-rep's hsic_unbiased, transpose included."""
  m = k.shape[0]
  k, l = k.copy(), l.copy()
  np.fill_diagonal(k, 0)
  np.fill_diagonal(l, 0)
  return (
      np.sum(k * l.T) + k.sum() * l.sum() / ((m - 1) * (m - 2)) - 2 * np.sum(k @ l) / (m - 2)
  ) / (m * (m - 3))


def ref_cknna(a, b, topk):
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  n = a.shape[0]
  ka, kb = a @ a.T, b @ b.T

  def mask(k):
    kh = k.copy()
    np.fill_diagonal(kh, -np.inf)
    idx = np.argsort(-kh, axis=1)[:, :topk]
    out = np.zeros((n, n))
    np.put_along_axis(out, idx, 1.0, axis=1)
    return out

  def sim(k, l):
    mk = mask(k) * mask(l)
    return _hsic_unbiased(mk * k, mk * l)

  return sim(ka, kb) / np.sqrt(sim(ka, ka) * sim(kb, kb))


def _basis(x):
  u, _, _ = np.linalg.svd(x - x.mean(0), full_matrices=False)
  return u


def ref_svcca(a, b, k):
  ua, ub = _basis(a)[:, :k], _basis(b)[:, :k]
  return np.mean(np.linalg.svd(ua.T @ ub, compute_uv=False))


def ref_pwcca(a, b):
  """Morcos et al.: CCA, canonical variates of a, weights Σ_p |⟨h_m, a_p⟩|."""
  ac = a - a.mean(0)
  qa, qb = _basis(a), _basis(b)
  u, rho, _ = np.linalg.svd(qa.T @ qb, full_matrices=False)
  h = qa @ u  # canonical variates of a, [N, min(d_a, d_b)]
  q, _ = np.linalg.qr(h)  # Morcos orthonormalise them (a no-op up to signs here)
  w = np.abs(q.T @ ac).sum(axis=1)
  w = w / w.sum()
  return np.sum(w * rho)


def ref_procrustes_angle(a, b):
  ac, bc = a - a.mean(0), b - b.mean(0)
  nuc = np.linalg.svd(ac.T @ bc, compute_uv=False).sum()
  return np.arccos(min(1.0, nuc / (np.linalg.norm(ac) * np.linalg.norm(bc))))


def ref_rsa(a, b, idx):
  def rdm(x):
    x = x[idx]
    return 1 - np.corrcoef(x)[np.triu_indices(len(idx), 1)]

  return stats.spearmanr(rdm(a), rdm(b)).statistic


def _xs(n=160, seed=0):
  rng = np.random.default_rng(seed)
  lat = rng.normal(size=(n, 4))
  return [
      np.tanh(lat @ rng.normal(size=(4, d))) + 0.5 * rng.normal(size=(n, d)) + rng.normal(size=d)
      for d in (6, 9, 6, 4)
  ]


@pytest.fixture(scope="module")
def synthetic():
  xs = _xs()
  with jax.enable_x64(True):
    out = ms.measures_all_pairs(
        xs, control_dim=5, control_seed=2, cknna_k=6, svcca_k=3, rsa_n=90, dtype=np.float64
    )
    ctrl = np.asarray(gram_lib.gaussian_control(160, 5, 2, np.float64))
  return xs + [ctrl], out


@pytest.mark.parametrize(
    "name,ref",
    [
        ("cknna", lambda a, b: ref_cknna(a, b, 6)),
        ("svcca", lambda a, b: ref_svcca(a, b, 3)),
        ("pwcca", ref_pwcca),
        ("procrustes_angle", ref_procrustes_angle),
        ("rsa", lambda a, b: ref_rsa(a, b, ms.rsa_rows(0, 160, 90))),
    ],
)
def test_matches_float64_reference(synthetic, name, ref):
  xs, out = synthetic
  got = out[name]
  assert got.shape == (5, 5)
  for i in range(5):
    for j in range(5):
      if i != j:
        np.testing.assert_allclose(got[i, j], ref(xs[i], xs[j]), rtol=1e-6, atol=1e-6, err_msg=name)
  if name not in ("pwcca", "cknna"):  # PWCCA weighs by the row model's columns; CKNNA's 1ᵀÃB̃1
    np.testing.assert_allclose(got, got.T, atol=1e-12)


def test_identities():
  """A rotated, shifted, scaled copy: every similarity 1 (angle 0); RSA's RDM is not
  rotation invariant (row-centred correlation), so it is left out."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(120, 6))
  q = np.linalg.qr(rng.normal(size=(6, 6)))[0]
  with jax.enable_x64(True):
    out = ms.measures_all_pairs(
        [x, 3.0 * x @ q + 1.0, 3.0 * x @ q], control_dim=None, cknna_k=5, rsa_n=60, dtype=np.float64
    )
  for name in ("svcca", "pwcca"):
    np.testing.assert_allclose(out[name][0, 1], 1.0, atol=1e-9, err_msg=name)
  np.testing.assert_allclose(out["cknna"][0, 2], 1.0, atol=1e-9)  # cosine kernels: no shift
  np.testing.assert_allclose(out["procrustes_angle"][0, 1], 0.0, atol=2e-6)


def test_rsa_ties_use_average_ranks():
  v = np.array([3.0, 1.0, 3.0, 2.0, 1.0, 3.0])
  with jax.enable_x64(True):
    np.testing.assert_allclose(np.asarray(ms._ranks(jax.numpy.asarray(v))), stats.rankdata(v))


def test_bad_input():
  xs = _xs()
  xs[2] = xs[2].copy()
  xs[2][11, 0] = np.inf
  with pytest.raises(InputError, match=r"xs\[2\].*row 11"):
    ms.measures_all_pairs(xs)
  with pytest.raises(InputError, match="cknna_k"):
    ms.measures_all_pairs(_xs(), cknna_k=1)


def test_shared_knn_lists_give_the_same_numbers():
  """The stage computes the kNN lists once for the null and CKNNA."""
  from lead_jax.similarity import knn as knn_lib
  from lead_jax.similarity import null as null_lib

  xs = [x.astype(np.float32) for x in _xs()]
  lists = knn_lib.knn_all(xs, 6, control_dim=5, control_seed=1)
  a = ms.measures_all_pairs(xs, control_dim=5, control_seed=1, cknna_k=6, rsa_n=50)
  b = ms.measures_all_pairs(xs, control_dim=5, control_seed=1, cknna_k=6, rsa_n=50, knn=lists)
  np.testing.assert_array_equal(a["cknna"], b["cknna"])
  kw = dict(n_perm=3, knn_k=6, control_dim=5, control_seed=1)
  np.testing.assert_array_equal(
      null_lib.null_all_pairs(xs, **kw)["null"]["mutual_knn"],
      null_lib.null_all_pairs(xs, knn=lists, **kw)["null"]["mutual_knn"],
  )
  with pytest.raises(InputError, match="knn"):
    ms.measures_all_pairs(xs, control_dim=5, cknna_k=6, knn=lists[:, :, :3])
