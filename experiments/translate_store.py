"""Migrates a store array into another model's space with a saved stitch: no re-embedding.

    .venv/bin/python experiments/translate_store.py --out=checkpoints/default \\
        --config.translate.source=all-MiniLM-L6-v2 --config.translate.target=all-mpnet-base-v2

Reads `<store>/<dataset>/<split>/<kind>/<source>` block by block, applies the saved stitch
source→target (`config.translate.stitch`, default `<out>/closed_form`) and writes a
resumable, provenance-stamped array: see lead_jax/pipeline/translate.py.
"""

import _cli

from lead_jax import pipeline


def main(argv):
  del argv
  _cli.print_json(pipeline.run_stage(_cli.study_config(), "translate"))


if __name__ == "__main__":
  _cli.run(main)
