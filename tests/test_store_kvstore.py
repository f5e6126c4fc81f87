"""Store under a kvstore URL root (memory://, file://; gs:// goes through the same code): round trip
identical to a local store, resume after an abandoned writer, multi-process writers in turn, errors.
"""

import itertools
import pathlib
import re

import numpy as np
import pytest

from lead_jax import store
from tests._helpers import process_writer, toy_writer

META = {"weights_digest": "w0", "rows_digest": "r0", "pooling": "mean", "normalize": True}
_fresh = itertools.count()


@pytest.fixture(params=["memory", "file"])
def url(request, tmp_path):
  """A fresh URL root: memory:// contents live for the process, so each test gets its own prefix."""
  if request.param == "memory":
    return f"memory://test_store_kvstore/{next(_fresh)}/"
  return (tmp_path / "url_root").as_uri()


def _rows(a, b, dim=5):
  return (np.arange(a, b, dtype=np.float32)[:, None] * 10 + np.arange(dim, dtype=np.float32)) / 7


def write_all(root, x, model="org/m", meta=META, **kw):
  w = store.open_writer(
      root, "ds", "train", "corpus", model, n_rows=len(x), dim=x.shape[1], meta=meta, **kw
  )
  for s in range(w.committed_rows, w.n_rows, w.block_rows):
    w.write(s, x[s : s + w.block_rows])
  w.finish({"run": "r"})
  return w


def _files(d: pathlib.Path) -> dict:
  return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_matches_local(tmp_path, url, dtype):
  x = np.random.default_rng(0).standard_normal((100, 12)).astype(np.float32)
  local = tmp_path / "local"
  for root in (local, url):
    write_all(root, x, dtype=dtype, block_rows=16)
    write_all(root, x, model="b", dtype=dtype, block_rows=16)
  assert (
      store.array_dir(url, "ds", "train", "corpus", "org/m")
      == url.rstrip("/") + "/ds/train/corpus/org__m"
  )
  assert isinstance(store.array_dir(local, "ds", "train", "corpus", "org/m"), pathlib.Path)
  assert (
      store.list_models(url, "ds", "train", "corpus")
      == store.list_models(local, "ds", "train", "corpus")
      == ["b", "org/m"]
  )
  assert store.list_models(url, "ds", "train", "query") == []
  assert store.read_meta(url, "ds", "train", "corpus", "org/m") == store.read_meta(
      local, "ds", "train", "corpus", "org/m"
  )
  assert store.is_complete(url, "ds", "train", "corpus", "org/m", "r0")
  assert not store.is_complete(url, "ds", "train", "corpus", "org/m", "other")
  a = store.read_array(local, "ds", "train", "corpus", "org/m")
  b = store.read_array(url, "ds", "train", "corpus", "org/m")
  assert a.tobytes() == b.tobytes()
  names, arrays = store.read_models(url, "ds", "train", "corpus")
  assert names == ["b", "org/m"] and all(y.tobytes() == a.tobytes() for y in arrays)
  if url.startswith("file://"):  # same files, byte for byte (meta/progress JSON included)
    d = "ds/train/corpus/org__m"
    assert _files(local / d) == _files(tmp_path / "url_root" / d)


def test_resume_after_abandoned_writer(url):
  base = re.escape(url.rstrip("/"))
  n, dim, block = 70, 5, 16
  open_ = lambda **kw: toy_writer(url, n_rows=n, dim=dim, meta=META, block_rows=block, **kw)
  w = open_()
  w.write(0, _rows(0, 16))
  w.write(16, _rows(16, 32))
  del w  # killed mid-way: progress.json says 32
  with pytest.raises(store.StoreError, match=rf"{base}/ds/train/corpus/m: incomplete \(32/70"):
    store.read_array(url, "ds", "train", "corpus", "m")
  w = open_()
  assert w.committed_rows == 32 and not w.complete
  with pytest.raises(store.StoreError, match=r"next block is rows \[32, 48\)"):
    w.write(48, _rows(48, 64))
  for s in range(w.next_row, n, block):
    w.write(s, _rows(s, min(s + block, n)))
  w.finish()
  assert store.read_array(url, "ds", "train", "corpus", "m").tobytes() == _rows(0, n).tobytes()
  assert open_().complete
  with pytest.raises(store.StoreError, match=rf"{base}/ds/train/corpus/m: exists with different"):
    toy_writer(
        url,
        n_rows=n,
        dim=dim,
        meta={**META, "weights_digest": "w1"},
        block_rows=block,
    )
  w = open_(overwrite=True)
  assert w.committed_rows == 0 and not store.is_complete(url, "ds", "train", "corpus", "m")


def test_processes_in_turn(tmp_path, url):
  """Two writers called in turn (no barriers) on a URL root: ranges resume, the last one completes,
  same bytes as one local writer; re-creating drops every progress file."""
  n, dim, block = 70, 5, 16
  ref = write_all(tmp_path / "one", _rows(0, n), model="m", block_rows=block)
  assert ref.complete
  open_ = lambda p: process_writer(url, p, n_rows=n, dim=dim, meta=META, block_rows=block)
  w0, w1 = open_(0), open_(1)
  assert (w0.start, w0.stop, w1.start, w1.stop) == (0, 48, 48, 70)
  w1.write(48, _rows(48, 64))
  w0.write(0, _rows(0, 16))
  del w0, w1  # killed
  w0, w1 = open_(0), open_(1)
  assert (w0.next_row, w1.next_row) == (16, 64)
  w1.write(64, _rows(64, 70))
  w1.finish()  # process 0's range not committed yet
  assert not w1.complete and not store.is_complete(url, "ds", "train", "corpus", "m")
  for s in range(w0.next_row, w0.stop, block):
    w0.write(s, _rows(s, s + block))
  w0.finish({"run": "r"})
  assert w0.complete and store.read_meta(url, "ds", "train", "corpus", "m")["run"] == "r"
  a = store.read_array(tmp_path / "one", "ds", "train", "corpus", "m")
  assert store.read_array(url, "ds", "train", "corpus", "m").tobytes() == a.tobytes()
  assert open_(1).complete
  d = store._array_loc(url, "ds", "train", "corpus", "m")
  assert sorted(d.keys("progress")) == [
      "progress.0-of-2.json",
      "progress.1-of-2.json",
      "progress.json",
  ]
  toy_writer(
      url,
      n_rows=n,
      dim=dim,
      meta=META,
      block_rows=block,
      overwrite=True,
  )
  assert d.keys("progress") == ["progress.json"]


def test_errors_name_the_url(url):
  base = re.escape(url.rstrip("/"))
  with pytest.raises(store.StoreError, match=rf"{base}/ds/train/corpus/absent: no such array"):
    store.read_array(url, "ds", "train", "corpus", "absent")
  with pytest.raises(store.StoreError, match=rf"{base}/ds/train/query: no complete arrays"):
    store.read_models(url, "ds", "train", "query")
  w = toy_writer(url, n_rows=8, dim=3, meta=META)
  bad = np.zeros((8, 3), np.float32)
  bad[2, 0] = np.inf
  with pytest.raises(
      store.StoreError, match=rf"{base}/ds/train/corpus/m: non-finite values .* rows \[2\]"
  ):
    w.write(0, bad)
  write_all(url, _rows(0, 8, 3), model="other", meta={**META, "rows_digest": "DIFFERENT"})
  w.write(0, _rows(0, 8, 3))
  w.finish()
  with pytest.raises(
      store.StoreError, match=rf"{base}/ds/train/corpus/m: row-text digest .*misaligned"
  ):
    store.read_array(url, "ds", "train", "corpus", "m")
