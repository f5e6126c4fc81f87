"""Checksummed store: every chunk carries a crc32c; flipped bits, truncated and missing chunks
are refused naming the array, the chunk and its rows; experiments/verify_store.py finds them,
and non-finite, incomplete and misaligned arrays, and passes pre-checksum arrays with a warning.
"""

import itertools
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorstore as ts

from lead_jax import errors, store

ROOT = pathlib.Path(__file__).resolve().parents[1]
VERIFY = ROOT / "experiments" / "verify_store.py"
META = {"weights_digest": "w0", "rows_digest": "r0", "pooling": "mean", "normalize": True}
N, DIM, BLOCK = 45, 8, 10  # 5 chunks, the last holding rows [40, 45)
CHUNK_BYTES = BLOCK * DIM * 4 + 4  # a whole chunk of float32, then its 4-byte CRC-32C
_fresh = itertools.count()


def _rows(seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((N, DIM)).astype(np.float32)


def _write(root, model="m", x=None, meta=META, kind="corpus", dataset="ds", finish=True):
  x = _rows() if x is None else x
  w = store.open_writer(
      root, dataset, "train", kind, model, n_rows=len(x), dim=DIM, meta=meta, block_rows=BLOCK
  )
  for s in range(0, len(x), BLOCK):
    w.write(s, x[s : s + BLOCK])
    if not finish and s >= BLOCK:
      return x  # two blocks committed, then stopped
  w.finish()
  return x


def _dir(root, model="m", kind="corpus", dataset="ds") -> pathlib.Path:
  d = store.array_dir(root, dataset, "train", kind, model)
  return pathlib.Path(d.removeprefix("file://")) if isinstance(d, str) else d


def _chunk(root, c: int, model="m") -> pathlib.Path:
  """Row block c's file: zarr v3's default chunk key `c/<row chunk>/<column chunk>`."""
  return _dir(root, model) / "c" / str(c) / "0"


def _crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _expected_rows(c: int) -> str:
  return f"rows [{c * BLOCK}, {min((c + 1) * BLOCK, N)})"


@pytest.fixture(params=["path", "file_url"])
def root(request, tmp_path):
  return tmp_path if request.param == "path" else (tmp_path / "url").as_uri()


def test_every_chunk_carries_its_crc32c(tmp_path):
  assert _crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
  _write(tmp_path)
  zarr = json.loads((_dir(tmp_path) / "zarr.json").read_text())
  assert [c["name"] for c in zarr["codecs"]] == ["bytes", "crc32c"]
  for c in range(5):
    raw = _chunk(tmp_path, c).read_bytes()
    assert len(raw) == CHUNK_BYTES
    assert int.from_bytes(raw[-4:], "little") == _crc32c(raw[:-4])


@pytest.mark.parametrize("c", [0, 2, 4])
def test_flipped_bit_names_array_chunk_and_rows(root, c):
  x = _write(root)
  rng = np.random.default_rng(c)
  k, bit = int(rng.integers(CHUNK_BYTES)), int(rng.integers(8))
  f = _chunk(root, c)
  raw = bytearray(f.read_bytes())
  raw[k] ^= 1 << bit
  f.write_bytes(bytes(raw))
  where = str(store.array_dir(root, "ds", "train", "corpus", "m"))
  with pytest.raises(errors.CorruptDataError) as e:
    store.read_array(root, "ds", "train", "corpus", "m")
  msg = str(e.value)
  assert isinstance(e.value, errors.InputError)
  assert msg.startswith(f"{where}: chunk c/{c}/0 ({_expected_rows(c)}) fails its crc32c checksum")
  # block reads through open_complete: other chunks still read; one touching chunk c is refused
  _, _, h = store.open_complete(root, "ds", "train", "corpus", "m")
  other = (c + 1) % 5
  lo, hi = other * BLOCK, min(other * BLOCK + BLOCK, N)
  np.testing.assert_array_equal(h[lo:hi].read().result(), x[lo:hi])
  with pytest.raises(errors.CorruptDataError, match=re.escape(f"c/{c}/0 ({_expected_rows(c)})")):
    h[c * BLOCK + 1 : c * BLOCK + 3].read().result()


def test_truncated_and_missing_chunks_refused(tmp_path):
  _write(tmp_path)
  f = _chunk(tmp_path, 3)
  raw = f.read_bytes()
  for cut in (CHUNK_BYTES // 2, 0):
    f.write_bytes(raw[:cut])
    with pytest.raises(errors.CorruptDataError) as e:
      store.read_array(tmp_path, "ds", "train", "corpus", "m")
    assert f"{_dir(tmp_path)}: chunk c/3/0 ({_expected_rows(3)}) is truncated" in str(e.value)
  f.unlink()  # a missing chunk is not read as zeros
  with pytest.raises(errors.CorruptDataError, match=r"chunk c/3/0 \(rows \[30, 40\)\) is missing"):
    store.read_array(tmp_path, "ds", "train", "corpus", "m")


def test_pre_checksum_store_reads_and_verifies_with_a_warning(tmp_path, monkeypatch):
  # the zarr.json the store wrote before checksums: TensorStore's default codec chain
  monkeypatch.setattr(store, "_CODECS", [{"name": "bytes", "configuration": {"endian": "little"}}])
  x = _write(tmp_path)
  monkeypatch.undo()
  zarr = json.loads((_dir(tmp_path) / "zarr.json").read_text())
  assert [c["name"] for c in zarr["codecs"]] == ["bytes"]
  assert _chunk(tmp_path, 0).stat().st_size == CHUNK_BYTES - 4
  np.testing.assert_array_equal(store.read_array(tmp_path, "ds", "train", "corpus", "m"), x)
  (rep,) = store.verify(tmp_path)
  assert rep.ok and rep.name == "ds/train/corpus/m"
  assert rep.warnings and rep.warnings[0].startswith("no checksum")
  # reads stay as they were: a missing chunk reads as zeros; verify names it
  _chunk(tmp_path, 1).unlink()
  y = store.read_array(tmp_path, "ds", "train", "corpus", "m")
  assert not y[10:20].any() and (y[20:] == x[20:]).all()
  (rep,) = store.verify(tmp_path)
  assert rep.problems[0].startswith(
      "chunk c/1/0 (rows [10, 20)) is missing (written before checksums"
  )


@pytest.mark.parametrize("kind", ["path", "memory"])
def test_verify_flags_misaligned_rows(tmp_path, kind):
  root = tmp_path if kind == "path" else f"memory://test_store_integrity/{next(_fresh)}/"
  for m in ("a", "b"):
    _write(root, m)
  _write(root, "org/c", meta={**META, "rows_digest": "r1"})  # other rows than a and b
  _write(root, "q1", kind="query")
  _write(root, "q2", kind="query", meta={**META, "rows_digest": "r2"})  # a tie: both flagged
  reps = {r.name: r for r in store.verify(root)}
  assert sorted(reps) == [
      "ds/train/corpus/a",
      "ds/train/corpus/b",
      "ds/train/corpus/org__c",
      "ds/train/query/q1",
      "ds/train/query/q2",
  ]
  assert reps["ds/train/corpus/a"].ok and reps["ds/train/corpus/b"].ok
  (p,) = reps["ds/train/corpus/org__c"].problems
  assert p.startswith("rows misaligned across models: row-text digest r1… (45 rows)")
  assert "r0… (45 rows) in ds/train/corpus/a, ds/train/corpus/b" in p
  assert "r0… (45 rows) in ds/train/query/q1" in reps["ds/train/query/q2"].problems[0]
  assert "r2… (45 rows) in ds/train/query/q2" in reps["ds/train/query/q1"].problems[0]


def test_verify_flags_nonfinite_and_incomplete(tmp_path):
  _write(tmp_path)
  _write(tmp_path, "part", finish=False)
  arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(_dir(tmp_path))}})
  arr = arr.result()
  arr[23, 5].write(np.float32(np.nan)).result()  # rewritten through the codecs: checksum good
  arr[41, 0].write(np.float32(-np.inf)).result()
  reps = {r.name: r for r in store.verify(tmp_path, "ds")}
  assert reps["ds/train/corpus/m"].problems == ["non-finite values (NaN/Inf) in 2 rows: [23, 41]"]
  (p,) = reps["ds/train/corpus/part"].problems
  assert p.startswith("incomplete: meta says complete=False, 20/45 rows committed")


def _run_verify(*args):
  res = subprocess.run(
      [sys.executable, str(VERIFY), *args], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert "Traceback" not in res.stderr, res.stderr[-3000:]
  return res


def _last_json(res) -> dict:
  return json.loads(res.stdout.strip().splitlines()[-1])


def test_verify_store_binary(tmp_path):
  _write(tmp_path, "m1", dataset="good")
  _write(tmp_path, "m2", dataset="good")
  _write(tmp_path, "fine")
  _write(tmp_path, "flip")
  _write(tmp_path, "cut")
  _write(tmp_path, "part", finish=False)
  _write(tmp_path, "other", meta={**META, "rows_digest": "r9"})
  f = _chunk(tmp_path, 2, "flip")
  raw = bytearray(f.read_bytes())
  raw[17] ^= 0x10
  f.write_bytes(bytes(raw))
  f = _chunk(tmp_path, 4, "cut")
  f.write_bytes(f.read_bytes()[:100])

  res = _run_verify(f"--store={tmp_path}", "--dataset=good")
  assert res.returncode == 0, res.stderr[-2000:]
  assert _last_json(res) == {"arrays": 2, "bad": [], "problems": {}, "warnings": {}}

  res = _run_verify(f"--store={tmp_path}")
  assert res.returncode == 2
  out = _last_json(res)
  bad = [f"ds/train/corpus/{m}" for m in ("cut", "flip", "other", "part")]
  assert out["arrays"] == 7 and out["bad"] == bad
  lines = res.stdout.splitlines()
  for m, reason in [
      ("flip", f"chunk c/2/0 ({_expected_rows(2)}) fails its crc32c checksum"),
      ("cut", f"chunk c/4/0 ({_expected_rows(4)}) is truncated"),
      ("part", "incomplete: meta says complete=False, 20/45 rows committed"),
      ("other", "rows misaligned across models: row-text digest r9…"),
  ]:
    (line,) = [x for x in lines if x.startswith(f"BAD ds/train/corpus/{m}: ")]
    assert line.startswith(f"BAD ds/train/corpus/{m}: {reason}"), line
  assert "7 arrays under" in res.stdout and "3 good, 4 bad" in res.stdout
  assert f"error: 4 bad arrays: {', '.join(bad)}" in res.stderr

  res = _run_verify(f"--store={tmp_path / 'nothing'}")
  assert res.returncode == 2 and "no arrays" in res.stderr
