"""CKA (linear and debiased) between every pair of models in the store, plus a Gaussian control.

    .venv/bin/python experiments/similarity.py --out=checkpoints/default

Reads `config.cka.split`'s corpus rows of `config.models`; writes `<out>/similarity/cka.npz`
and the long table `cka.parquet` / `cka.csv` (one row per model pair and CKA kind).
See lead_jax/pipeline/similarity.py.
"""

import _cli

from lead_jax import pipeline


def main(argv):
  del argv
  _cli.print_json(pipeline.run_stage(_cli.study_config(), "similarity"))


if __name__ == "__main__":
  _cli.run(main)
