"""Lists and inspects stitch checkpoints (MLP runs and closed-form Orbax stitches); exports one.

    .venv/bin/python experiments/inspect_checkpoint.py --dir=checkpoints/default
    .venv/bin/python experiments/inspect_checkpoint.py --dir=checkpoints/default/mlp/d2_mse --pairs
    .venv/bin/python experiments/inspect_checkpoint.py --dir=checkpoints/default/mlp/d2_mse \\
        --export=/tmp/stitch.safetensors --source=wordllama --target=all-MiniLM-L6-v2

A run is an MLP run (`<step>/state`, `<step>/meta`, from lead_jax.stitch.mlp_checkpoint)
or a closed-form run (`stitches/` + `stitches.json`). Without --pairs / --export it lists
every run under --dir with its steps. See lead_jax/pipeline/inspect.py.
"""

import _cli
from absl import flags

from lead_jax.pipeline import inspect

DIR = flags.DEFINE_string("dir", "checkpoints", "Checkpoint directory (searched recursively).")
PAIRS = flags.DEFINE_bool("pairs", False, "Print each pair's config and metrics.")
STEP = flags.DEFINE_integer("step", None, "Step to read (default: latest).")
EXPORT = flags.DEFINE_string("export", None, "Export one stitch to this .safetensors / .npz.")
SOURCE = flags.DEFINE_string("source", None, "Source model of the stitch to export.")
TARGET = flags.DEFINE_string("target", None, "Target model of the stitch to export.")


def main(argv):
  del argv
  runs = inspect.find_runs(DIR.value)
  if not runs:
    raise SystemExit(f"no MLP or closed-form runs under {DIR.value}")
  if EXPORT.value:
    if len(runs) != 1:
      raise SystemExit(f"--export needs --dir to name one run; found {[str(r[1]) for r in runs]}")
    arrays = inspect.export(*runs[0], EXPORT.value, SOURCE.value, TARGET.value, STEP.value)
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items())
    print(f"exported {SOURCE.value} → {TARGET.value} from {runs[0][1]} to {EXPORT.value}: {shapes}")
    return
  for kind, d in runs:
    print(inspect.describe(kind, d, PAIRS.value, STEP.value))


if __name__ == "__main__":
  _cli.run(main)
