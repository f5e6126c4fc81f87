"""The default study end to end: embed, CKA, closed-form and MLP stitches, retrieval, report.

    .venv/bin/python experiments/run_all.py                              # the default job
    .venv/bin/python experiments/run_all.py --config=configs/full.py     # the study's caps
    .venv/bin/python experiments/run_all.py --dataset=/data/beir/scifact --out=checkpoints/scifact
    .venv/bin/python experiments/run_all.py --config.mlp.steps=500 --config.stages='("mlp",)'

Runs `config.stages` in order, in this process, from one config (lead_jax.pipeline).
The resolved config goes to `<out>/config.json`; a stage whose marker
`<out>/.stages/<stage>.json` holds the same config sections is skipped, and a stage
killed midway resumes from what it left. On several hosts (a TPU VM slice) run it on
every worker with the same flags; see docs/tpu.md.
"""

import _cli
from absl import flags

from lead_jax import pipeline

FORCE = flags.DEFINE_bool("force", False, "Rerun stages even when complete.")


def main(argv):
  del argv
  cfg = _cli.study_config()
  res = pipeline.run_stages(cfg, force=FORCE.value)
  summary = pipeline.RunLayout.from_config(cfg).report / "summary.txt"
  if summary.exists():
    print(summary.read_text())
  _cli.print_json(res)


if __name__ == "__main__":
  _cli.run(main)
