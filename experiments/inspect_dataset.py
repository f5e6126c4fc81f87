"""Counts a dataset's documents, queries, qrels and chunks.

    python experiments/inspect_dataset.py --dataset=wordnet
    python experiments/inspect_dataset.py --dataset=/data/beir/scifact --max_docs=5000

Prints per-split detail, then one JSON object as its last line. Bad input exits
non-zero with the offending file and line.
"""

import json
import sys

from absl import app, flags

from lead_jax import data, distributed
from lead_jax.data import chunking

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "wordnet", "'wordnet' (shipped) or a BEIR directory.")
flags.DEFINE_string(
    "qrels_split", None, "qrels/<split>.tsv to use (default: test, else the first)."
)
flags.DEFINE_integer("n_train", 20_000, "Train documents cap.")
flags.DEFINE_integer("n_val", 5_000, "Validation documents cap.")
flags.DEFINE_integer(
    "max_docs", None, "Cap on train+val documents (split in the n_train:n_val ratio)."
)
flags.DEFINE_integer("seed", 0, "Seed of the document cap/split.")
flags.DEFINE_integer("chunk_tokens", 256, "Chunk window, cl100k tokens.")
flags.DEFINE_integer("chunk_overlap", 25, "Overlap between consecutive chunks, tokens.")


def run(
    dataset: str,
    *,
    qrels_split=None,
    n_train=20_000,
    n_val=5_000,
    max_docs=None,
    seed=0,
    chunk_cfg=chunking.ChunkConfig(),
) -> dict:
  ds = data.load(dataset, qrels_split)
  splits = data.split_dataset(ds, n_train=n_train, n_val=n_val, max_docs=max_docs, seed=seed)
  out = {
      "dataset": ds.name,
      "path": str(ds.path),
      "qrels_split": ds.qrels_split,
      "docs": len(ds.corpus),
      "queries": len(ds.queries),
      "qrels": sum(len(v) for v in ds.qrels.values()),
      "splits": {},
  }
  for name, sp in splits.items():
    rows = data.build_rows(ds, sp, "corpus", chunk_cfg)
    out["splits"][name] = {
        "docs": len(sp.doc_ids),
        "chunks": len(rows),
        "queries": len(sp.query_ids),
        "qrels": sum(len(v) for v in sp.qrels.values()),
    }
  out["chunks"] = sum(s["chunks"] for s in out["splits"].values())
  return out


def main(argv):
  del argv
  distributed.initialize_from_flags()
  try:
    stats = run(
        FLAGS.dataset,
        qrels_split=FLAGS.qrels_split,
        n_train=FLAGS.n_train,
        n_val=FLAGS.n_val,
        max_docs=FLAGS.max_docs,
        seed=FLAGS.seed,
        chunk_cfg=chunking.ChunkConfig(FLAGS.chunk_tokens, FLAGS.chunk_overlap),
    )
  except data.DataError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for name, s in stats["splits"].items():
    print(
        f"{stats['dataset']}/{name}: {s['docs']} docs -> {s['chunks']} chunks, "
        f"{s['queries']} queries, {s['qrels']} qrels"
    )
  print(json.dumps(stats))


if __name__ == "__main__":
  app.run(main)
