"""Shared test fixtures: toy store writers, correlated synthetic and real WordNet embeddings."""

import numpy as np

from lead_jax import config, pipeline, store


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


def wordnet_rows(out, models, max_docs, n_train, n_val, splits=("train",)):
  """Real embeddings: the embed stage over WordNet's first `max_docs` documents into `out`.

  Args:
    out: the run directory (its store is written).
    models: the offline models.
    max_docs, n_train, n_val: the data cap and split (`config.DataConfig`).
    splits: the splits whose corpus rows are embedded and returned.

  Returns:
    Per split, the models' corpus rows (float32 arrays, in `models` order).
  """
  cfg = config.StudyConfig(models=tuple(models), out=str(out))
  cfg.data.max_docs, cfg.data.n_train, cfg.data.n_val = max_docs, n_train, n_val
  cfg.embed.arrays = tuple(f"{s}/corpus" for s in splits)
  layout = pipeline.RunLayout.from_config(cfg)
  pipeline.stage("embed")(cfg, layout)
  return [
      store.read_models(layout.store_root, "wordnet", s, "corpus", list(models))[1] for s in splits
  ]
