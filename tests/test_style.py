"""One style: the tree is pyink-formatted and ruff-clean (settings in pyproject.toml)."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent


def _run(*cmd):
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_pyink_formatted():
  res = _run(str(BIN / "pyink"), "--check", ".")
  assert res.returncode == 0, f"run `.venv/bin/pyink .`:\n{res.stderr[-3000:]}"


def test_ruff_clean():
  res = _run(str(BIN / "ruff"), "check", ".")
  assert res.returncode == 0, f"run `.venv/bin/ruff check --fix .`:\n{res.stdout[-3000:]}"
