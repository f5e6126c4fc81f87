"""MLP stitches for every ordered pair of models, all pairs per jit, one resumable run per depth.

    .venv/bin/python experiments/train_mlp_stitches.py --out=checkpoints/default \\
        --config.mlp.depths='(0,1,2)' --config.mlp.objective=mse --config.mlp.steps=2000

Writes `<out>/mlp/d{depth}_{objective}/` (Orbax checkpoints, curves) and
`<out>/mlp_results.parquet|csv`: see lead_jax/pipeline/mlp.py.
"""

import _cli

from lead_jax import pipeline


def main(argv):
  del argv
  _cli.print_json(pipeline.run_stage(_cli.study_config(), "mlp"))


if __name__ == "__main__":
  _cli.run(main)
