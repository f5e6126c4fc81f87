"""Mesh and multi-process helpers; the multi-process store protocol; two jax.distributed CPU
processes on 127.0.0.1 give the same store bytes, CKA and stitches as one process."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from lead_jax import distributed, store
from tests import _dist_child
from tests._helpers import process_writer, toy_writer

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHILD = pathlib.Path(__file__).with_name("_dist_child.py")
META = {"weights_digest": "w0", "rows_digest": "r0", "pooling": "mean", "normalize": True}


def _cover(slices, n):
  hits = np.zeros(n, int)
  for s in slices:
    hits[s] += 1
  return hits


@pytest.mark.parametrize("n", [0, 1, 7, 64, 1001])
@pytest.mark.parametrize("procs", [1, 2, 3, 8])
def test_process_rows_cover_each_row_once_balanced(n, procs):
  parts = [distributed.process_rows(n, p, procs) for p in range(procs)]
  assert (_cover(parts, n) == 1).all()
  assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))  # contiguous, in process order
  sizes = [s.stop - s.start for s in parts]
  assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n,block", [(72, 16), (64, 16), (1000, 128), (5, 16), (33, 1)])
@pytest.mark.parametrize("procs", [1, 2, 3, 4])
def test_block_aligned_rows_whole_blocks(n, block, procs):
  parts = [distributed.block_aligned_rows(n, block, p, procs) for p in range(procs)]
  assert (_cover(parts, n) == 1).all()
  assert all(
      s.start in (s.start // block * block, n) and s.stop in (s.stop // block * block, n)
      for s in parts
  )
  blocks = [-(-(s.stop - s.start) // block) for s in parts]
  assert max(blocks) - min(blocks) <= 1 and sum(blocks) == -(-n // block)


def test_process_pairs_round_robin():
  pairs = [(a, b) for a in range(4) for b in range(4) if a != b]
  shares = [distributed.process_pairs(pairs, p, 3) for p in range(3)]
  assert shares[1] == pairs[1::3]
  assert sorted(x for s in shares for x in s) == sorted(pairs)
  assert [len(s) for s in shares] == [4, 4, 4]
  with pytest.raises(ValueError, match="not in"):
    distributed.process_pairs(pairs, 3, 3)


def test_make_mesh_and_errors():
  n = jax.device_count()
  mesh = distributed.make_mesh()
  assert mesh.axis_names == (distributed.DATA, distributed.PAIRS) and dict(mesh.shape) == {
      "data": n,
      "pairs": 1,
  }
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(
      ValueError, match=rf"data={n + 1} × pairs=1 = {n + 1}, but there are {n} devices"
  ):
    distributed.make_mesh(n + 1, 1)
  with pytest.raises(ValueError, match=f"pairs={n + 1} does not divide the {n} devices"):
    distributed.make_mesh(-1, n + 1)
  with pytest.raises(ValueError, match="positive"):
    distributed.make_mesh(0, 1)
  x = np.arange(4 * n * 3, dtype=np.float32).reshape(4 * n, 3)
  g = distributed.global_rows(x, mesh, 4 * n)
  got = distributed.gather({"g": g, "s": "kept"})
  np.testing.assert_array_equal(got["g"], x)
  assert got["s"] == "kept" and distributed.mesh_rows(mesh, 4 * n) == slice(0, 4 * n)


def test_initialize_off_and_auto_without_config(monkeypatch):
  for k in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
    monkeypatch.delenv(k, raising=False)
  assert distributed.initialize(mode="off") is False
  assert (
      distributed.initialize(mode="auto") is False
  )  # one process, not on a TPU VM: nothing started
  assert distributed.initialize(num_processes=1) is False
  assert not jax.distributed.is_initialized()
  with pytest.raises(ValueError, match="mode must be one of"):
    distributed.initialize(mode="maybe")


def _chunks(path: pathlib.Path) -> dict:
  return {
      str(p.relative_to(path)): p.read_bytes()
      for p in sorted(path.rglob("*"))
      if p.is_file() and not p.name.endswith(".json")
  }


def _rows(start, stop, dim=5):
  return np.sin(np.arange(start, stop)[:, None] * 0.37 + np.arange(dim)[None, :] * 1.3).astype(
      np.float32
  )


def test_store_ranges_resume_and_last_writer_completes(tmp_path):
  """Without jax.distributed (no barriers) two writers called in turn: each resumes its own
  range after a 'kill', and the last to finish marks the array complete; same bytes as one writer.
  """
  n, dim, block = 70, 5, 16
  ref = store.open_writer(
      tmp_path / "one", "ds", "train", "corpus", "m", n_rows=n, dim=dim, meta=META, block_rows=block
  )
  for s in range(ref.next_row, ref.stop, block):
    ref.write(s, _rows(s, min(s + block, n)))
  ref.finish()

  root = tmp_path / "two"
  open_ = lambda p: process_writer(root, p, n_rows=n, dim=dim, meta=META, block_rows=block)
  w0, w1 = open_(0), open_(1)
  assert (w0.start, w0.stop, w1.start, w1.stop) == (0, 48, 48, 70)
  w1.write(48, _rows(48, 64))
  with pytest.raises(store.StoreError, match=r"next block is rows \[64, 70\)"):
    w1.write(64, _rows(64, 80))
  w0.write(0, _rows(0, 16))
  del w0, w1  # killed: the progress files keep what was committed
  w0, w1 = open_(0), open_(1)
  assert (w0.next_row, w0.committed_rows, w1.next_row) == (16, 16, 64)
  with pytest.raises(
      store.StoreError, match=r"finish\(\) at 64/70 rows \(rows \[48, 70\) of process 1\)"
  ):
    w1.finish()
  w1.write(64, _rows(64, 70))
  w1.finish()  # process 0's range is not committed yet: not complete
  assert not w1.complete and not store.is_complete(root, "ds", "train", "corpus", "m")
  with pytest.raises(store.StoreError, match="incomplete"):
    store.read_array(root, "ds", "train", "corpus", "m")
  for s in range(w0.next_row, w0.stop, block):
    w0.write(s, _rows(s, s + block))
  w0.finish({"run": "x"})
  assert w0.complete and store.read_meta(root, "ds", "train", "corpus", "m")["run"] == "x"
  a = store.read_array(tmp_path / "one", "ds", "train", "corpus", "m")
  b = store.read_array(root, "ds", "train", "corpus", "m")
  assert a.tobytes() == b.tobytes()
  d = lambda r: store.array_dir(r, "ds", "train", "corpus", "m")
  assert _chunks(d(tmp_path / "one")) == _chunks(d(root))
  assert (
      open_(1).complete
      and toy_writer(root, n_rows=n, dim=dim, meta=META, block_rows=block).complete
  )
  # re-creating (overwrite) drops every progress file, so no stale range is trusted
  w = toy_writer(
      root,
      n_rows=n,
      dim=dim,
      meta=META,
      block_rows=block,
      overwrite=True,
  )
  assert w.committed_rows == 0 and sorted(p.name for p in d(root).glob("progress*")) == [
      "progress.json"
  ]
  assert open_(1).next_row == 48


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow  # two jax.distributed processes
@pytest.mark.parametrize("mesh", [(4, 1), (2, 2)])
def test_two_processes_match_one(tmp_path, mesh):
  env = {
      **os.environ,
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
      "PYTHONPATH": str(ROOT),
  }
  coord = f"127.0.0.1:{_free_port()}"
  procs = [
      subprocess.Popen(
          [
              sys.executable,
              str(CHILD),
              str(tmp_path),
              str(tmp_path / "store"),
              coord,
              str(p),
              "2",
              *map(str, mesh),
          ],
          env=env,
          cwd=ROOT,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for p in range(2)
  ]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=180))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      outs.append(p.communicate())
  for i, (p, (out, err)) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i} exited {p.returncode}\n{out}\n{err[-5000:]}"
    assert f"process {i}/2 done" in out

  ref = tmp_path / "ref"
  ref.mkdir()
  _dist_child.main(
      str(ref), str(ref / "store"), None, 0, 1, -1, 1
  )  # this process: one process, one mesh
  for model in _dist_child.MODELS:
    d = store.array_dir(tmp_path / "store", "toy", "train", "corpus", model)
    assert sorted(p.name for p in d.glob("progress*")) == [
        "progress.0-of-2.json",
        "progress.1-of-2.json",
        "progress.json",
    ]
    assert _chunks(d) == _chunks(store.array_dir(ref / "store", "toy", "train", "corpus", model))
    a, b = (
        store.read_array(r, "toy", "train", "corpus", model)
        for r in (tmp_path / "store", ref / "store")
    )
    assert a.tobytes() == b.tobytes()
  got, want = np.load(tmp_path / "results.npz"), np.load(ref / "results.npz")
  assert (
      sorted(got.files) == sorted(want.files)
      and "cka_linear" in got.files
      and "ridge_mse" in got.files
  )
  for k in want.files:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_run_all_mesh_settings_stay_out_of_stage_markers(tmp_path):
  cmd = [
      sys.executable,
      str(ROOT / "experiments" / "run_all.py"),
      f"--out={tmp_path}",
      "--config.stages=('report',)",
      "--config.mesh.distributed=off",
      "--config.mesh.pairs=1",
  ]
  res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  cfg = json.loads((tmp_path / "config.json").read_text())
  assert cfg["mesh"]["distributed"] == "off" and cfg["stages"] == ["report"]
  # the stage marker leaves the mesh out: every worker agrees on what is complete
  marker = json.loads((tmp_path / ".stages" / "report.json").read_text())
  assert "mesh" not in marker["config"] and "stages" not in marker["config"]
  assert marker["config"]["models"] == cfg["models"] and marker["config"]["mlp"] == cfg["mlp"]
