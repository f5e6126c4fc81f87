"""CKA against explicit N×N HSIC references (sharding: tests/test_sharding.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from lead_jax.similarity import cka as cka_lib
from lead_jax.similarity import gram as gram_lib


def hsic_u(k, l):
  n = k.shape[0]
  k, l = k.copy(), l.copy()
  np.fill_diagonal(k, 0)
  np.fill_diagonal(l, 0)
  o = np.ones(n)
  return (
      np.trace(k @ l)
      + (o @ k @ o) * (o @ l @ o) / ((n - 1) * (n - 2))
      - 2 / (n - 2) * o @ k @ l @ o
  ) / (n * (n - 3))


def ref_cka(xs):
  n = xs[0].shape[0]
  h = np.eye(n) - 1.0 / n
  ks = [x @ x.T for x in xs]
  lin = np.array(
      [
          [
              np.trace(h @ a @ h @ b) / np.sqrt(np.trace(h @ a @ h @ a) * np.trace(h @ b @ h @ b))
              for b in ks
          ]
          for a in ks
      ]
  )
  deb = np.array([[hsic_u(a, b) / np.sqrt(hsic_u(a, a) * hsic_u(b, b)) for b in ks] for a in ks])
  return lin, deb


def _xs(n=60, seed=0):
  rng = np.random.default_rng(seed)
  lat = rng.normal(size=(n, 4))
  return [
      lat @ rng.normal(size=(4, d)) + rng.normal(size=(n, d)) + 5 * rng.normal(size=d)
      for d in (6, 9, 6, 3)
  ]


def test_matches_explicit_kernels_float64():
  xs = _xs()
  with jax.enable_x64(True):
    out = cka_lib.cka_all_pairs(xs, control_dim=7, seed=3, dtype=np.float64)
    ctrl = np.asarray(gram_lib.gaussian_control(60, 7, 3, jnp.float64))
  lin, deb = ref_cka(xs + [ctrl])
  np.testing.assert_allclose(np.asarray(out["linear"]), lin, rtol=1e-10)
  np.testing.assert_allclose(np.asarray(out["debiased"]), deb, rtol=1e-9, atol=1e-12)
  assert out["linear"].shape == (5, 5)


def test_float32_within_1e3():
  xs = _xs()
  out = cka_lib.cka_all_pairs([x.astype(np.float32) for x in xs], control_dim=None)
  lin, deb = ref_cka(xs)
  np.testing.assert_allclose(np.asarray(out["linear"]), lin, rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out["debiased"]), deb, rtol=1e-3, atol=1e-4)


def test_orthogonal_and_isotropic_scale_invariance():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(80, 8))
  q = np.linalg.qr(rng.normal(size=(8, 8)))[0]
  with jax.enable_x64(True):
    out = cka_lib.cka_all_pairs(
        [x, x @ q, 7.5 * x + 3.0, rng.normal(size=(80, 5))], control_dim=None, dtype=np.float64
    )
  for kind in ("linear", "debiased"):
    a = np.asarray(out[kind])
    np.testing.assert_allclose(a[0, 1], 1.0, rtol=1e-12)
    np.testing.assert_allclose(a[0, 2], 1.0, rtol=1e-12)
    np.testing.assert_allclose(a[1, 3], a[0, 3], rtol=1e-10)


def test_from_stats_under_jit():
  xs = [x - x.mean(0) for x in _xs()]
  f2 = np.array([[np.linalg.norm(a.T @ b) ** 2 for b in xs] for a in xs])
  r = np.stack([(x**2).sum(1) for x in xs])
  with jax.enable_x64(True):
    out = jax.jit(cka_lib.cka_from_stats, static_argnums=3)(
        jnp.asarray(f2), jnp.asarray(r @ r.T), jnp.asarray(r.sum(1)), 60
    )
  lin, deb = ref_cka(xs)
  np.testing.assert_allclose(np.asarray(out["debiased"]), deb, rtol=1e-9)


def test_bad_rows_are_named_on_the_host_and_on_device_paths():
  """check_rows names the array and the first non-finite row, whether it reads the rows
  in place (numpy, CPU jax arrays: no compiled program) or with the jitted check."""
  import pytest

  rng = np.random.default_rng(0)
  xs = [rng.standard_normal((40, d)).astype(np.float32) for d in (3, 5, 7)]
  xs[1][17, 2] = np.nan
  xs[1][30, 0] = np.inf
  xs[2][39, 6] = -np.inf
  assert gram_lib._on_host(xs) and gram_lib._on_host([jnp.asarray(x) for x in xs])
  host = gram_lib._first_bad_rows_host(xs)
  jitted = np.asarray(gram_lib._first_bad_rows(tuple(jnp.asarray(x) for x in xs))).tolist()
  assert host == jitted == [-1, 17, 39]
  for arrays in (xs, [jnp.asarray(x) for x in xs]):
    with pytest.raises(ValueError, match=r"^xs\[1\]: non-finite value in row 17$"):
      cka_lib.cka_all_pairs(arrays)
