"""Counts a dataset's documents, queries, qrels and chunks.

    .venv/bin/python experiments/inspect_dataset.py --dataset=wordnet
    .venv/bin/python experiments/inspect_dataset.py --dataset=/data/beir/scifact --config.data.max_docs=5000

Prints per-split detail, then one JSON object as its last line. Bad input prints one
`error: …` line naming the offending file and line, and exits with status 2.
"""

import _cli

from lead_jax.pipeline import inspect


def main(argv):
  del argv
  stats = inspect.dataset_stats(_cli.study_config())
  for name, s in stats["splits"].items():
    print(
        f"{stats['dataset']}/{name}: {s['docs']} docs -> {s['chunks']} chunks, "
        f"{s['queries']} queries, {s['qrels']} qrels"
    )
  _cli.print_json(stats)


if __name__ == "__main__":
  _cli.run(main)
