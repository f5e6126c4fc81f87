"""A demo collection: one split of the configured dataset embedded with one model, in a store.

    python experiments/migrate.py build_demo --config.migrate.source=lancedb:/tmp/db#wordnet \\
        --config.migrate.source_model=all-MiniLM-L6-v2

The rows are the corpus rows of split `train` under the study's data settings (the default job's 6,000 WordNet training glosses), so the val split stays out
of the collection and `retrieval_eval` on val is a held-out check. Ids are the documents'
ids (`doc#j` for the j-th chunk of a longer document), texts the chunk texts, and the
collection's metadata records `{"model": …}`.
"""

from __future__ import annotations

import time

import numpy as np
from absl import logging

from lead_jax.config import StudyConfig
from lead_jax.migrate import calibrate, stores


def build(cfg: StudyConfig, split: str = "train") -> dict:
  """Embeds the split's corpus rows with `migrate.source_model` into `migrate.source`.

  Args:
    cfg: the study config (`dataset`, `data`, `embed`, `migrate.source`,
      `migrate.source_model`, `migrate.batch_rows`).
    split: `train` or `val`.

  Returns:
    `{"collection", "model", "rows", "dim", "seconds"}`.

  Raises:
    MigrateError: the collection exists already, or no model is named.
  """
  from lead_jax.pipeline import embed

  m = cfg.migrate
  addr = stores.parse(m.source, "config.migrate.source")
  if not m.source_model:
    raise stores.MigrateError("config.migrate.source_model must name the demo's model")
  b = stores.backend(addr)
  if b.exists(addr):
    raise stores.MigrateError(f"{addr}: already exists; delete it to rebuild the demo")
  t0 = time.time()
  _, _, rows = embed.split_rows(cfg, [f"{split}/corpus"])
  r = rows[split, "corpus"]
  fn, dim, _, (_, pp) = calibrate.encoder(cfg, m.source_model)
  x = np.asarray(fn([pp + t for t in r.texts]), np.float32)
  ids = stores.row_ids(r)
  meta = {"model": m.source_model, "dataset": r.dataset, "split": split, "rows_digest": r.digest}
  if addr.backend == "zarr":
    meta.update({"_ids": ids, "_texts": list(r.texts), "_block_rows": m.batch_rows})
  b.create(addr, dim, meta)
  b.begin(addr, dim, meta)
  for s in range(0, len(ids), m.batch_rows):
    e = min(s + m.batch_rows, len(ids))
    b.write(addr, s, ids[s:e], x[s:e], list(r.texts[s:e]))
  b.finish(addr, {k: v for k, v in meta.items() if not k.startswith("_")})
  logging.info(
      "%s: %d rows of %s/%s embedded with %s", addr, len(ids), r.dataset, split, m.source_model
  )
  return {
      "collection": str(addr),
      "model": m.source_model,
      "rows": len(ids),
      "dim": int(dim),
      "seconds": round(time.time() - t0, 1),
  }
