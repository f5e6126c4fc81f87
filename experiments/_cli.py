"""What every binary shares: `--config` (a configs/*.py file), its shortcuts, `--verbose`.

    --config=configs/default.py --config.mlp.steps=500     any field, type-checked
    --dataset=… --models=a,b --out=…                       shortcuts for the fields
                                                           config.dataset / models / out
    --verbose                                              every library's INFO log lines

Every binary ends in `_cli.run(main)`: it sets up the console (lead_jax.logs) and turns
bad input into one `error: …` line on stderr and exit status 2, without a traceback.
Flags are defined only here and in the binaries; the library takes a StudyConfig.
"""

import json
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

from lead_jax import config as config_lib
from lead_jax import errors, logs

ROOT = pathlib.Path(__file__).resolve().parents[1]

CONFIG = config_flags.DEFINE_config_file(
    "config", str(ROOT / "configs" / "default.py"), "Study config file (configs/*.py)."
)
DATASET = flags.DEFINE_string("dataset", None, "Shortcut for --config.dataset.")
MODELS = flags.DEFINE_list("models", None, "Shortcut for --config.models (comma list).")
OUT = flags.DEFINE_string("out", None, "Shortcut for --config.out (the run directory).")
VERBOSE = flags.DEFINE_bool(
    "verbose",
    False,
    "Print every INFO log line (Orbax, jax, XLA) in absl's format; default: lead_jax's own "
    "progress and summary lines, and warnings.",
)

INPUT_ERRORS = (errors.InputError,)  # bad input: one line, exit 2


def _verbose_in(argv) -> bool:
  """Whether `argv` turns --verbose on (the last of --verbose, --noverbose, --verbose=…)."""
  on = False
  for a in argv[1:]:
    if a == "--":
      break
    name, _, value = a.lstrip("-").partition("=")
    if a.startswith("-") and name in ("verbose", "noverbose"):
      on = name == "verbose" and value.lower() in ("", "true", "t", "1")
  return on


# XLA reads its log level when jax is first imported, before the flags are parsed; the
# binaries import this module before anything that imports jax.
logs.set_xla_logging(_verbose_in(sys.argv))


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


def run(main, input_errors: tuple = ()) -> None:
  """`app.run(main)` with the console set up and bad input reported as `error: …`, exit 2.

  Args:
    main: the binary's `main(argv)`.
    input_errors: further exception classes that mean bad input, besides `INPUT_ERRORS`.
  """

  def wrapped(argv):
    logs.setup(VERBOSE.value)
    try:
      return main(argv)
    except INPUT_ERRORS + tuple(input_errors) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(wrapped)
