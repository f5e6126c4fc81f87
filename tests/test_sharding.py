"""Multi-device runs equal one device: 8 forced CPU devices, meshes over rows and pairs.

The child (tests/_sharding_child.py) runs each engine twice in one process, on one device
and sharded (data=8, data=4×pairs=2, pairs=8), in float64 for the closed-form paths so a
wrong psum or a dropped shard cannot hide under float32 round-off.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # 8 forced CPU devices, every engine on three meshes
def test_sharded_equals_one_device():
  env = dict(
      os.environ,
      XLA_FLAGS="--xla_force_host_platform_device_count=8",
      JAX_PLATFORMS="cpu",
      TF_CPP_MIN_LOG_LEVEL="2",
  )
  res = subprocess.run(
      [sys.executable, os.path.join(ROOT, "tests", "_sharding_child.py")],
      env=env,
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=1200,
  )
  assert res.returncode == 0, res.stderr[-4000:]
  out = json.loads(res.stdout.strip().splitlines()[-1])
  for key in (
      "cka_data8",
      "cka_data4_pairs2",
      "cka_pairs8",
      "cka_presharded",
      "ridge_data8",
      "ridge_data4_pairs2",
      "kfold_data4_pairs2",
  ):
    assert out[key] <= 1e-9, (key, out[key])  # float64: identical up to summation order
  for key in ("mlp_data4_pairs2", "mlp_pairs8"):
    assert out[key] <= 1e-5, (key, out[key])  # float32 training, 40 Adam steps
  assert out["ridge_has_all_reduce"]  # rows really were split across devices
  # No retrace per call: repeated calls reuse the compiled program; 4 MLP chunks, one program.
  assert out["fit_new_traces"] == 0 and out["cka_new_traces"] == 0
  assert out["mlp_new_traces"] == 1
