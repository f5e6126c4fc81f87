"""Unsupervised (mini-vec2vec style) alignment: a planted rotated copy is recovered unpaired."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lead_jax.config import UnsupervisedConfig
from lead_jax.errors import InputError
from lead_jax.stitch import unsupervised as un


def _mixture(rng, n, d, c=30):
  means = rng.normal(size=(c, d)) * rng.uniform(0.5, 1.5, size=d)
  lab = rng.integers(0, c, n)
  return means[lab] + 0.6 * rng.normal(size=(n, d)) * rng.uniform(0.3, 1.0, size=d)


@pytest.fixture(scope="module")
def planted():
  """Source: a clustered, anisotropic space (24-d). Target: a rotated copy embedded in
  32-d (semi-orthogonal map) with noise; a third model is independent noise."""
  rng = np.random.default_rng(0)
  n, nv = 1600, 400
  x = _mixture(rng, n + nv, 24)
  q = np.linalg.qr(rng.normal(size=(32, 32)))[0][:24]
  y = x @ q + 0.05 * rng.normal(size=(n + nv, 32))
  g = rng.normal(size=(n + nv, 28))
  cfg = UnsupervisedConfig(pca_k=24, clusters=24, fit_rows=700, refine_iters=8)
  out = un.unsupervised_all_pairs([x[:n], y[:n], g[:n]], [x[n:], y[n:], g[n:]], cfg)
  return out, nv


def test_planted_rotation_is_recovered_without_pairs(planted):
  out, nv = planted
  top1 = dict(zip(out["methods"], out["top1"]))
  rank = dict(zip(out["methods"], out["mean_rank"]))
  assert out["k"] == 24
  for i, j in ((0, 1), (1, 0)):
    assert top1["unsupervised"][i, j] >= 0.95, (i, j, top1["unsupervised"])
    assert top1["procrustes"][i, j] >= 0.95 and top1["ridge"][i, j] >= 0.95
    assert top1["random"][i, j] < 0.05
    assert rank["random"][i, j] > nv / 4  # chance is (n + 1) / 2
  # a space with no shared structure stays at the floor, supervised or not
  assert top1["procrustes"][0, 2] < 0.05 and top1["unsupervised"][0, 2] < 0.05
  assert np.isnan(top1["unsupervised"][1, 1])
  starts = out["start"][~np.eye(3, dtype=bool)]
  assert ((starts >= 0) & (starts <= UnsupervisedConfig.restarts + 1)).all()


def test_match_centroids_recovers_a_permutation():
  """Centroids of one space against a rotated, shuffled copy: the QAP matching finds the
  shuffle."""
  rng = np.random.default_rng(3)
  c = un._unit(jnp.asarray(rng.normal(size=(16, 10)) + 2.0 * rng.normal(size=10), jnp.float32))
  q = np.linalg.qr(rng.normal(size=(10, 10)))[0]
  perm = rng.permutation(16)
  p = un.match_centroids(c, (c @ q)[perm], 40, jax.random.key(0), restarts=6)
  np.testing.assert_array_equal(np.asarray(p).argmax(1), np.argsort(perm))


def test_rank_metrics():
  v = un._unit(jnp.asarray(np.random.default_rng(1).normal(size=(50, 8)), jnp.float32))
  top1, mrank = un.rank_metrics(v, v, jnp.eye(8))
  assert float(top1) == 1.0 and float(mrank) == 1.0
  top1, mrank = un.rank_metrics(v, -v, jnp.eye(8))  # every true row is the farthest
  assert float(top1) == 0.0 and float(mrank) == 50.0


def test_bad_input():
  rng = np.random.default_rng(0)
  tr = [rng.normal(size=(200, 8)), rng.normal(size=(200, 6))]
  va = [rng.normal(size=(50, 8)), rng.normal(size=(50, 6))]
  va[1][4, 2] = np.nan
  cfg = dataclasses.replace(UnsupervisedConfig(), clusters=8)
  with pytest.raises(InputError, match=r"val\[1\].*row 4"):
    un.unsupervised_all_pairs(tr, va, cfg)
  with pytest.raises(InputError, match="too few"):
    un.unsupervised_all_pairs(tr, [rng.normal(size=(50, 8)), rng.normal(size=(50, 6))])
