"""Shared test fixtures: toy store writers and correlated synthetic embeddings."""

import numpy as np

from lead_jax import store


def toy_writer(root, **kw):
  """`store.open_writer` for the toy array `ds/train/corpus/m` under `root`."""
  return store.open_writer(root, "ds", "train", "corpus", "m", **kw)


def correlated(dims, n, seed=0, noise=0.3):
  """Models sharing a 5-d latent: `lat W_d + noise + offset_d`, one [n, d] array per dim."""
  rng = np.random.default_rng(seed)
  lat = rng.normal(size=(n, 5))
  return [
      lat @ rng.normal(size=(5, d)) + noise * rng.normal(size=(n, d)) + rng.normal(size=d)
      for d in dims
  ]


def process_writer(root, p, **kw):
  """Process p's writer of the toy array in a two-process run."""
  return toy_writer(root, process_index=p, process_count=2, **kw)
