"""Counts a dataset's documents, queries, qrels and chunks.

    .venv/bin/python experiments/inspect_dataset.py --dataset=wordnet
    .venv/bin/python experiments/inspect_dataset.py --dataset=/data/beir/scifact --config.data.max_docs=5000

Prints per-split detail, then one JSON object as its last line. Bad input exits
non-zero with the offending file and line.
"""

import sys

import _cli
from absl import app

from lead_jax import data
from lead_jax.pipeline import inspect


def main(argv):
  del argv
  try:
    stats = inspect.dataset_stats(_cli.study_config())
  except data.DataError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for name, s in stats["splits"].items():
    print(
        f"{stats['dataset']}/{name}: {s['docs']} docs -> {s['chunks']} chunks, "
        f"{s['queries']} queries, {s['qrels']} qrels"
    )
  _cli.print_json(stats)


if __name__ == "__main__":
  app.run(main)
