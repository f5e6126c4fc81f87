"""Builds the HTML report of a run directory.

    python experiments/report.py --out=checkpoints/default

Writes <out>/report/index.html, PNG figures, CSV tables and summary.txt.
"""

from absl import app, flags

from lead_jax import distributed, report

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "checkpoints/default", "Run directory.")


def main(argv):
  del argv
  distributed.initialize_from_flags()
  path = report.build(FLAGS.out)
  print((path.parent / "summary.txt").read_text())
  print(path)


if __name__ == "__main__":
  app.run(main)
