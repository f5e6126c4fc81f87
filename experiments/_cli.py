"""The flags every binary shares: `--config` (a configs/*.py file) and its shortcuts.

    --config=configs/default.py --config.mlp.steps=500     any field, type-checked
    --dataset=… --models=a,b --out=…                       shortcuts for the fields
                                                           config.dataset / models / out

Flags are defined only here and in the binaries; the library takes a StudyConfig.
"""

import json
import pathlib

from absl import flags
from ml_collections import config_flags

from lead_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]

CONFIG = config_flags.DEFINE_config_file(
    "config", str(ROOT / "configs" / "default.py"), "Study config file (configs/*.py)."
)
DATASET = flags.DEFINE_string("dataset", None, "Shortcut for --config.dataset.")
MODELS = flags.DEFINE_list("models", None, "Shortcut for --config.models (comma list).")
OUT = flags.DEFINE_string("out", None, "Shortcut for --config.out (the run directory).")


def study_config() -> config_lib.StudyConfig:
  """The parsed config with the shortcut flags applied, validated."""
  cfg = CONFIG.value
  if DATASET.value is not None:
    cfg.dataset = DATASET.value
  if MODELS.value is not None:
    cfg.models = tuple(MODELS.value)
  if OUT.value is not None:
    cfg.out = OUT.value
  return config_lib.validate(cfg)


def print_json(obj) -> None:
  """The binary's result as its last stdout line."""
  print(json.dumps(obj, default=str))
