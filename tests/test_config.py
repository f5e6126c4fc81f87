"""The study config: one definition of every default, typed overrides, round trips."""

import dataclasses
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from lead_jax import config
from lead_jax.stitch import closed_form, mlp

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_round_trip_and_unknown_fields():
  cfg = config.StudyConfig(models=("a", "b"))
  cfg.mlp.depths, cfg.data.max_docs = (0, 3), 0
  d = config.to_dict(cfg)
  assert d["mlp"]["depths"] == [0, 3]
  back = config.from_dict(config.StudyConfig, d)
  assert back == cfg and back is not cfg
  assert config.from_dict(config.StudyConfig, {}) == config.StudyConfig()
  with pytest.raises(ValueError, match=r"MlpConfig: unknown fields \['stepz'\]"):
    config.from_dict(config.StudyConfig, {"mlp": {"stepz": 3}})


def test_validate_names_the_field():
  cfg = config.StudyConfig()
  cfg.closed_form.folds = 1
  with pytest.raises(ValueError, match="config.closed_form.folds must be 0 or ≥ 2; got 1"):
    config.validate(cfg)
  cfg = config.StudyConfig(stages=("embed", "nope"))
  with pytest.raises(ValueError, match="config.stages"):
    config.validate(cfg)


def test_engine_defaults_are_the_config_defaults():
  """The drift the redesign removed: engine structs take their defaults from the config."""
  c = config.MlpConfig()
  t = mlp.TrainConfig()
  for f in dataclasses.fields(mlp.TrainConfig):
    if hasattr(c, f.name):
      assert getattr(t, f.name) == getattr(c, f.name), f.name
  assert (t.steps, t.warmup_steps, t.patience) == (1000, 100, 5)
  assert mlp.TrainConfig.from_config(c) == t
  s = mlp.StitchConfig.from_config(c, 2)
  assert s == mlp.StitchConfig(depth=2) and s.width is None
  np.testing.assert_array_equal(
      closed_form.DEFAULT_LAMBDAS, np.concatenate([[0.0], np.logspace(-4, 4, 9)])
  )


def _inspect(*args):
  cmd = [sys.executable, str(ROOT / "experiments" / "inspect_dataset.py"), *args]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_overrides_are_type_checked_on_the_command_line():
  ok = _inspect("--config=configs/tiny.py", "--config.data.max_docs=40")
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert '"chunks": 40' in ok.stdout.splitlines()[-1]
  bad = _inspect("--config.data.max_docs=many")
  assert bad.returncode != 0 and "--config.data.max_docs=many" in bad.stderr
  unknown = _inspect("--config.data.max_dogs=3")
  assert unknown.returncode != 0 and "max_dogs" in unknown.stderr
