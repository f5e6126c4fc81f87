"""Builds the HTML report of a run directory.

    .venv/bin/python experiments/report.py --out=checkpoints/default

Writes <out>/report/index.html, PNG figures, CSV tables and summary.txt.
"""

import _cli

from lead_jax import pipeline


def main(argv):
  del argv
  _cli.print_json(pipeline.run_stage(_cli.study_config(), "report"))


if __name__ == "__main__":
  _cli.run(main)
