"""Native, stitched and overlap retrieval tables for every pair of models in a store.

    .venv/bin/python experiments/retrieval_eval.py --out=checkpoints/default

Reads `config.retrieval.split`'s corpus and query arrays and every stitch checkpoint
under `<out>`; writes `<out>/retrieval/{native,overlap,stitched,translated}` tables:
see lead_jax/pipeline/retrieval.py for their columns.
"""

import _cli

from lead_jax import pipeline


def main(argv):
  del argv
  _cli.print_json(pipeline.run_stage(_cli.study_config(), "retrieval"))


if __name__ == "__main__":
  _cli.run(main)
