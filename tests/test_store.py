"""Store: round trip, refusals, and SIGKILL at random points resuming to identical bytes."""

import json
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lead_jax import store
from tests._helpers import toy_writer

CHILD = pathlib.Path(__file__).with_name("_store_writer_child.py")
META = {"weights_digest": "w0", "rows_digest": "r0", "pooling": "mean", "normalize": True}


def write_all(root, x, model="m", meta=META, **kw):
  w = store.open_writer(
      root, "ds", "train", "corpus", model, n_rows=len(x), dim=x.shape[1], meta=meta, **kw
  )
  for s in range(w.committed_rows, w.n_rows, w.block_rows):
    w.write(s, x[s : s + w.block_rows])
  w.finish()
  return w


@pytest.mark.parametrize("dtype,tol", [("float32", 0), ("bfloat16", 1e-2), ("float16", 1e-3)])
def test_round_trip(tmp_path, dtype, tol):
  x = np.random.default_rng(0).standard_normal((1000, 24)).astype(np.float32)
  write_all(tmp_path, x, dtype=dtype, block_rows=128)
  y = store.read_array(tmp_path, "ds", "train", "corpus", "m")
  assert y.dtype == np.float32 and y.shape == x.shape
  np.testing.assert_allclose(y, x, rtol=tol, atol=tol)
  meta = store.read_meta(tmp_path, "ds", "train", "corpus", "m")
  assert meta["complete"] and meta["dtype"] == dtype and meta["weights_digest"] == "w0"
  assert store.list_models(tmp_path, "ds", "train", "corpus") == ["m"]


def test_reopen_complete_is_noop_and_mismatch_refused(tmp_path):
  x = np.ones((10, 4), np.float32)
  write_all(tmp_path, x)
  w = toy_writer(tmp_path, n_rows=10, dim=4, meta=META)
  assert w.complete and w.committed_rows == 10
  with pytest.raises(store.StoreError, match="different weights_digest"):
    toy_writer(
        tmp_path,
        n_rows=10,
        dim=4,
        meta={**META, "weights_digest": "w1"},
    )
  w = toy_writer(
      tmp_path,
      n_rows=10,
      dim=4,
      meta={**META, "weights_digest": "w1"},
      overwrite=True,
  )
  assert not w.complete and w.committed_rows == 0


def test_out_of_order_and_nonfinite_writes_refused(tmp_path):
  w = toy_writer(tmp_path, n_rows=20, dim=3, meta=META, block_rows=8)
  with pytest.raises(store.StoreError, match=r"next block is rows \[0, 8\)"):
    w.write(8, np.zeros((8, 3), np.float32))
  bad = np.zeros((8, 3), np.float32)
  bad[5, 1] = np.nan
  with pytest.raises(store.StoreError, match=r"rows \[5\]"):
    w.write(0, bad)
  assert w.committed_rows == 0


def test_readers_refuse_incomplete_nonfinite_and_misaligned(tmp_path):
  x = np.random.default_rng(1).standard_normal((30, 4)).astype(np.float32)
  w = store.open_writer(
      tmp_path, "ds", "train", "corpus", "part", n_rows=30, dim=4, meta=META, block_rows=10
  )
  w.write(0, x[:10])
  with pytest.raises(store.StoreError, match=r"part: incomplete \(10/30"):
    store.read_array(tmp_path, "ds", "train", "corpus", "part")

  write_all(tmp_path, x, model="good")
  write_all(tmp_path, x, model="other", meta={**META, "rows_digest": "DIFFERENT"})
  with pytest.raises(store.StoreError, match="misaligned"):
    store.read_array(tmp_path, "ds", "train", "corpus", "good")

  # corrupt a finished array on disk: a NaN slipped into the chunk bytes
  write_all(tmp_path / "b", x, model="nan")
  import tensorstore as ts

  arr = ts.open(
      {
          "driver": "zarr3",
          "kvstore": {
              "driver": "file",
              "path": str(store.array_dir(tmp_path / "b", "ds", "train", "corpus", "nan")),
          },
      }
  ).result()
  arr[17, 2].write(np.float32(np.inf)).result()
  with pytest.raises(store.StoreError, match=r"nan: non-finite values \(NaN/Inf\) in rows \[17\]"):
    store.read_array(tmp_path / "b", "ds", "train", "corpus", "nan")

  with pytest.raises(store.StoreError, match="no such array"):
    store.read_array(tmp_path, "ds", "train", "corpus", "absent")


def _files(path: pathlib.Path) -> dict:
  return {
      str(p.relative_to(path)): p.read_bytes()
      for p in sorted(path.rglob("*"))
      if p.is_file() and p.name not in ("meta.json", "progress.json")
  }


def _committed(root) -> int:
  p = store.array_dir(root, "ds", "train", "corpus", "org/model") / "progress.json"
  try:
    return json.loads(p.read_text())["committed_rows"]
  except (FileNotFoundError, json.JSONDecodeError, KeyError):
    return 0


def test_sigkill_at_random_blocks_resumes_byte_identical(tmp_path):
  n_rows, dim, block = 64 * 40, 48, 64
  args = [str(n_rows), str(dim), str(block)]
  ref, run = tmp_path / "ref", tmp_path / "run"
  subprocess.run([sys.executable, str(CHILD), str(ref), *args, "0"], check=True, timeout=120)

  rng = random.Random(1234)
  targets = sorted(rng.sample(range(1, 39), 6))  # kill after these many blocks, + a random delay
  seen = []
  for t in targets:
    proc = subprocess.Popen([sys.executable, str(CHILD), str(run), *args, "0.002"])
    deadline = time.time() + 120
    while _committed(run) < t * block and proc.poll() is None and time.time() < deadline:
      time.sleep(0.0005)
    time.sleep(rng.uniform(0, 0.004))  # land anywhere inside the next block's write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    c = _committed(run)
    assert proc.returncode == -signal.SIGKILL, "child finished before it could be killed"
    assert c % block == 0 and c < n_rows
    seen.append(c)
    with pytest.raises(store.StoreError, match="incomplete"):
      store.read_array(run, "ds", "train", "corpus", "org/model")
  print("killed at rows", seen)
  assert len(set(seen)) >= 5, seen  # killed at >= 5 distinct points
  assert seen == sorted(seen)  # progress never goes back
  subprocess.run([sys.executable, str(CHILD), str(run), *args, "0"], check=True, timeout=120)

  a = store.read_array(ref, "ds", "train", "corpus", "org/model")
  b = store.read_array(run, "ds", "train", "corpus", "org/model")
  assert a.tobytes() == b.tobytes()
  ref_dir = store.array_dir(ref, "ds", "train", "corpus", "org/model")
  run_dir = store.array_dir(run, "ds", "train", "corpus", "org/model")
  assert _files(ref_dir) == _files(run_dir)  # the zarr chunk files themselves, byte for byte
