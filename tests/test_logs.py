"""The console: rate-limited progress lines, the quiet filter, and the binaries' wrapper."""

import logging
import os
import pathlib
import subprocess
import sys

from absl import logging as absl_logging

from lead_jax import logs

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Clock:

  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


def test_progress_lines_are_rate_limited_with_rate_and_eta(caplog):
  caplog.set_level(logging.INFO, logger="absl")
  clock = Clock()
  p = logs.Progress("embed m train/corpus", 1500, "rows", every_s=5.0, clock=clock)
  for _ in range(4):  # 4 updates within 3 s: no line yet
    clock.t += 0.75
    p.update(100)
  assert p.lines == 0 and p.done == 400
  clock.t += 2.0  # 5 s since the start: one line
  p.update(112)
  assert p.lines == 1
  assert p.line() == "embed m train/corpus: 512/1500 rows, 102.4 rows/s, ETA 10s"
  clock.t += 1.0
  p.update(100)  # 1 s later: none
  assert p.lines == 1
  clock.t += 1.0
  p.update(888)  # the end always logs, with the time taken instead of the ETA
  assert p.lines == 2 and p.done == 1500
  assert p.line() == "embed m train/corpus: 1500/1500 rows, 214.3 rows/s, in 7s"
  msgs = [r.getMessage() for r in caplog.records if r.name == "absl"]
  assert msgs == [
      "embed m train/corpus: 512/1500 rows, 102.4 rows/s, ETA 10s",
      "embed m train/corpus: 1500/1500 rows, 214.3 rows/s, in 7s",
  ]


def test_progress_of_a_resumed_loop_rates_this_run_only():
  clock = Clock()
  p = logs.Progress("mlp_d1_mse", 1000, "steps", start=600, every_s=60.0, clock=clock)
  clock.t += 10.0
  p.set(700)
  assert p.lines == 0
  assert p.line() == "mlp_d1_mse: 700/1000 steps, 10.0 steps/s, ETA 30s"
  assert logs.duration(59.6) == "1m00s" and logs.duration(3725) == "1h02m"


def _record(level, pathname, **extra):
  r = logging.LogRecord("absl", level, pathname, 1, "msg", None, None)
  r.__dict__.update(extra)
  return r


def test_quiet_keeps_lead_jax_info_and_every_warning(monkeypatch):
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")  # setup leaves a set level alone
  handler = absl_logging.get_absl_handler()
  ours = str(ROOT / "lead_jax" / "pipeline" / "mlp.py")
  orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
  try:
    logs.setup(verbose=False)
    assert handler.filter(_record(logging.INFO, ours))
    assert not handler.filter(_record(logging.INFO, orbax))
    assert not handler.filter(_record(logging.INFO, ours, **logs.DETAIL))
    assert handler.filter(_record(logging.WARNING, orbax))
    assert handler.format(_record(logging.INFO, ours)).endswith(" msg")
    assert len(handler.format(_record(logging.INFO, ours))) == len("12:34:56 msg")
    logs.setup(verbose=False)  # idempotent: one filter
    assert sum(isinstance(f, logs._Quiet) for f in handler.filters) == 1
    logs.setup(verbose=True)
    assert handler.filter(_record(logging.INFO, orbax))
    assert "mlp.py:1] msg" in handler.format(_record(logging.INFO, ours))  # absl's format
  finally:
    logs.setup(verbose=True)
  assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"


_BINARY = """
import os, sys
sys.path.insert(0, {experiments!r})
import _cli
from absl import flags, logging
from lead_jax import errors, logs
RAISE = flags.DEFINE_string("raise_", "", "")

def main(argv):
  print("xla level", os.environ.get("TF_CPP_MIN_LOG_LEVEL"), "verbose", _cli.VERBOSE.value)
  logging.info("a third-party info line")
  logging.warning("a warning line")
  logs.Progress("work", 3, "items").update(3)
  if RAISE.value == "input":
    raise errors.CorruptDataError("store/x: chunk 0/1 (rows [0, 8)) fails its checksum")
  if RAISE.value == "bug":
    raise RuntimeError("a bug")

_cli.run(main)
"""


def _run(tmp_path, *args):
  script = tmp_path / "binary.py"
  script.write_text(_BINARY.format(experiments=str(ROOT / "experiments")))
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  return subprocess.run(
      [sys.executable, str(script), *args], capture_output=True, text=True, timeout=120, env=env
  )


def test_quiet_by_default_and_verbose_restores_info(tmp_path):
  quiet = _run(tmp_path)
  assert quiet.returncode == 0, quiet.stderr
  assert "xla level 1 verbose False" in quiet.stdout
  assert "third-party info line" not in quiet.stderr  # not lead_jax's: dropped
  assert "a warning line" in quiet.stderr
  assert "work: 3/3 items, " in quiet.stderr
  loud = _run(tmp_path, "--verbose")
  assert loud.returncode == 0, loud.stderr
  assert "xla level 0 verbose True" in loud.stdout
  assert "binary.py:" in loud.stderr and "third-party info line" in loud.stderr
  assert "xla level 1 verbose False" in _run(tmp_path, "--verbose", "--noverbose").stdout


def test_input_errors_exit_2_without_traceback_and_bugs_keep_theirs(tmp_path):
  bad = _run(tmp_path, "--raise_=input")
  assert bad.returncode == 2, bad.stderr
  assert bad.stderr.splitlines()[-1] == (
      "error: store/x: chunk 0/1 (rows [0, 8)) fails its checksum"
  )
  assert "Traceback" not in bad.stderr
  bug = _run(tmp_path, "--raise_=bug")
  assert bug.returncode == 1 and "Traceback" in bug.stderr and "RuntimeError: a bug" in bug.stderr


def test_a_binary_given_a_bad_dataset_prints_one_error_line(tmp_path):
  missing = tmp_path / "no_such_dataset"
  res = subprocess.run(
      [sys.executable, str(ROOT / "experiments" / "inspect_dataset.py"), f"--dataset={missing}"],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert res.returncode == 2, res.stderr
  assert res.stderr.strip().splitlines() == [
      f"error: {missing}: not a directory, and not a known dataset name ('wordnet')"
  ]
  assert res.stdout == ""
