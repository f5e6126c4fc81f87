"""Closed-form stitches for every ordered pair of models: ridge λ-path, OLS, Procrustes, controls, k-fold.

    .venv/bin/python experiments/stitch_all_pairs.py --out=checkpoints/default --config.closed_form.folds=5

Fits on the train split's corpus rows, chooses λ per pair on the val split, and writes
`<out>/closed_form/` (results table, Orbax stitches, run.json): see
lead_jax/pipeline/closed_form.py.
"""

import _cli

from lead_jax import pipeline


def main(argv):
  del argv
  _cli.print_json(pipeline.run_stage(_cli.study_config(), "closed_form"))


if __name__ == "__main__":
  _cli.run(main)
