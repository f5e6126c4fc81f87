"""Embedding store: one TensorStore zarr3 array per (dataset, split, kind, model).

Layout under a root (a local directory, or a TensorStore kvstore URL: see below):

    <root>/<dataset>/<split>/<kind>/<model>/zarr.json, c/…   the [rows, dim] array
    <root>/<dataset>/<split>/<kind>/<model>/meta.json         model, digests, config
    <root>/<dataset>/<split>/<kind>/<model>/progress.json     committed row count
    <root>/<dataset>/<split>/<kind>/<model>/progress.<p>-of-<P>.json   multi-process runs

Resumable writes. Rows are written strictly in order, one zarr chunk (`block_rows`
rows) per block; TensorStore writes each chunk file atomically and fsyncs it. Only
after a block's write has completed does `progress.json` advance, itself by
write-temp, fsync, rename. A process killed at any instant therefore loses at
most the block in flight; a rerun with the same metadata resumes at the committed
row and, since the computation is deterministic, ends with the same bytes.
`meta.json` says `"complete": true` only after the last block is committed.

Multi-process writes (`process_count` P > 1, one writer per process on a directory
all of them see). Process 0 alone creates the array and meta.json; the others open
it after a barrier. Process p writes rows `distributed.block_aligned_rows(n_rows,
block_rows, p, P)`, whole chunks only, in order, recording its progress in its own
`progress.<p>-of-<P>.json` ({start, stop, next_row}) by the same protocol, so each
process resumes its own range after a kill. `finish()` makes the array complete
once every range is committed: under jax.distributed every process calls it, a
barrier follows, every process checks all P progress files, process 0 writes
`progress.json` = n_rows and then `meta.json` complete, and a second barrier holds
the others until it has. Without jax.distributed (no barriers: processes called in
turn, as in tests) the last writer to finish, seeing every range committed, does
it. Progress files of another P are ignored (their rows are still correct, only
rewritten); creating an array deletes every progress file.

URL roots (`gs://bucket/prefix`, `file:///abs/path`, `memory://…`): everything above
goes through a `tensorstore.KvStore` opened at the root instead of the filesystem, so
a multi-host run can write one store into a GCS bucket. JSON files are single-object
writes (atomic per key on GCS and TensorStore's file driver; no temp file or rename),
zarr chunks are written as by the local path, and the protocol, file names and
resume behaviour are the same. `array_dir` returns the array's URL string for URL roots
(a `pathlib.Path` for local ones). `memory://` stores live in this module's shared
TensorStore context, i.e. for the life of the process (tests).

Checksums. Every chunk is encoded `bytes` (little-endian) then `crc32c` (zarr v3's codec:
a 4-byte CRC-32C after the chunk's bytes), recorded in zarr.json, so TensorStore checks
each chunk as it reads it. Every chunk of an array is stored (an all-zero block too),
and reads of a checksummed array refuse a missing chunk instead of filling it with
zeros. A chunk that fails its checksum, is truncated or is missing is refused with a
`CorruptDataError` naming the array, the chunk's key and its rows: reads take the fast
path (one read), and only when it fails read chunk by chunk to name the failing one.
Arrays written before checksums (zarr.json without `crc32c`) read as they always did;
`verify` reports them as "no checksum", a warning.

Readers refuse incomplete arrays, NaN/Inf rows, corrupt chunks, and arrays whose
row-text digest differs from another model's on the same dataset/split/kind. `verify`
(experiments/verify_store.py) checks every array of a store for all of these.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

from lead_jax import logs
from lead_jax.errors import CorruptDataError, InputError

DTYPES = ("float32", "bfloat16", "float16")
FORMAT_VERSION = 1  # of meta.json; the chunks' codecs are zarr.json's (`_CODECS`)
# Every chunk: its bytes, little-endian, then their CRC-32C (zarr v3 `crc32c` codec).
_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
# Fields that must agree between an existing partial array and a resumed write.
_IDENTITY = (
    "model",
    "weights_digest",
    "rows_digest",
    "n_rows",
    "dim",
    "dtype",
    "block_rows",
    "pooling",
    "normalize",
    "prefix",
    "chunker",
    "source",
)


class StoreError(RuntimeError):
  """A store array is missing, incomplete, corrupt or misaligned; names the array."""


def model_key(model: str) -> str:
  """A model name as one path component.

  Args:
    model: the model name (e.g. a Hugging Face id with a `/`).

  Returns:
    The name with every `/` replaced by `__`.
  """
  return model.replace("/", "__")


_CONTEXT = (
    None  # one TensorStore context for every URL root: memory:// contents are shared in-process
)


def _context():
  global _CONTEXT
  if _CONTEXT is None:
    import tensorstore as ts

    _CONTEXT = ts.Context()
  return _CONTEXT


@functools.cache
def _open_kvstore(base: str):
  """One open KvStore per URL root (every store call resolves its root again)."""
  import tensorstore as ts

  return ts.KvStore.open(base, context=_context()).result()


def _is_url(root) -> bool:
  return isinstance(root, str) and "://" in root


class _Url:
  """A key (file or directory) under a kvstore URL root; `/` joins like pathlib, str() is its URL."""

  def __init__(self, base: str, kv, key: str = ""):
    self.base, self.kv, self.key = base, kv, key  # base ends in "/"; key is relative to kv

  @classmethod
  def open(cls, root: str) -> _Url:
    """The root directory of a kvstore URL.

    Args:
      root: the URL (`gs://bucket/prefix`, `file:///abs/path`, `memory://…`).

    Returns:
      The `_Url` of the root, its KvStore opened once per URL.
    """
    base = root.rstrip("/")
    base += (
        "//" if base.endswith(":") else "/"
    )  # memory:// has no path; others get a directory prefix
    return cls(base, _open_kvstore(base))

  def __truediv__(self, name: str) -> _Url:
    return _Url(self.base, self.kv, f"{self.key}/{name}" if self.key else name)

  def __str__(self) -> str:
    return self.base + self.key

  def keys(self, prefix: str = "") -> list[str]:
    """Keys under this directory starting with `prefix`, relative to it.

    Args:
      prefix: the start of the keys listed.

    Returns:
      The keys, relative to this directory.
    """
    import tensorstore as ts

    lo = f"{self.key}/{prefix}"
    hi = lo[:-1] + chr(ord(lo[-1]) + 1)  # the first key past every key starting with lo
    return [
        k.decode() for k in self.kv.list(ts.KvStore.KeyRange(lo, hi), len(self.key) + 1).result()
    ]

  def delete(self, prefix: str) -> None:
    """Deletes every key under this directory starting with `prefix`.

    Args:
      prefix: the start of the keys deleted.
    """
    import tensorstore as ts

    lo = f"{self.key}/{prefix}"
    self.kv.delete_range(ts.KvStore.KeyRange(lo, lo[:-1] + chr(ord(lo[-1]) + 1))).result()


def _loc(root, *parts: str) -> pathlib.Path | _Url:
  if _is_url(root):
    loc = _Url.open(root)
    for part in parts:
      loc = loc / part
    return loc
  return pathlib.Path(root).joinpath(*parts)


def _array_loc(root, dataset: str, split: str, kind: str, model: str) -> pathlib.Path | _Url:
  return _loc(root, dataset, split, kind, model_key(model))


def array_dir(
    root: str | os.PathLike, dataset: str, split: str, kind: str, model: str
) -> pathlib.Path | str:
  """The array's directory: a Path for a local root, the array's URL (str) for a URL root.

  Every reader and writer takes this address.

  Args:
    root: the store root, a directory or a kvstore URL.
    dataset: the dataset name.
    split: the split.
    kind: `corpus` or `query`.
    model: the model name.

  Returns:
    `<root>/<dataset>/<split>/<kind>/<model_key(model)>`.
  """
  loc = _array_loc(root, dataset, split, kind, model)
  return str(loc) if isinstance(loc, _Url) else loc


def _atomic_write_json(path: pathlib.Path | _Url, obj: Any, tag: str = "") -> None:
  if isinstance(path, _Url):  # one object write: atomic on GCS and TensorStore's file driver
    path.kv.write(path.key, json.dumps(obj, indent=1, sort_keys=True).encode()).result()
    return
  tmp = path.with_name(path.name + ".tmp" + tag)  # `tag`: writers that may race on `path`
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  dfd = os.open(path.parent, os.O_RDONLY)
  try:
    os.fsync(dfd)
  finally:
    os.close(dfd)


def _read_json(path: pathlib.Path | _Url) -> dict | None:
  if isinstance(path, _Url):
    r = path.kv.read(path.key).result()
    return json.loads(r.value) if r.state == "value" else None
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def _progress_name(process_index: int, process_count: int) -> str:
  return (
      "progress.json" if process_count == 1 else f"progress.{process_index}-of-{process_count}.json"
  )


def _rows_of(meta: dict, process_index: int, process_count: int) -> slice:
  if process_count == 1:
    return slice(0, meta["n_rows"])
  from lead_jax import distributed

  return distributed.block_aligned_rows(
      meta["n_rows"], meta["block_rows"], process_index, process_count
  )


def _uncommitted(path: pathlib.Path | _Url, meta: dict, process_count: int) -> list[str]:
  """Ranges of a P-process write whose progress file does not show them committed."""
  out = []
  for q in range(process_count):
    r = _rows_of(meta, q, process_count)
    prog = _read_json(path / _progress_name(q, process_count)) or {}
    if (prog.get("start"), prog.get("stop"), prog.get("next_row")) != (r.start, r.stop, r.stop):
      out.append(
          f"process {q}: rows [{prog.get('next_row', r.start)}, {r.stop}) of [{r.start}, {r.stop})"
      )
  return out


def _open_ts(
    path: pathlib.Path | _Url,
    *,
    create: bool = False,
    shape=None,
    block_rows=None,
    dtype=None,
    strict: bool = False,
):
  """Opens the array; `strict`: reading a missing chunk is an error, not fill zeros."""
  import tensorstore as ts

  if isinstance(path, _Url):
    kvstore = {**path.kv.spec().to_json(), "path": path.kv.path + path.key + "/"}
  else:
    kvstore = {"driver": "file", "path": str(path)}
  spec: dict[str, Any] = {
      "driver": "zarr3",
      "kvstore": kvstore,
      "store_data_equal_to_fill_value": True,  # every chunk is stored, an all-zero one too
      "fill_missing_data_reads": not strict,
  }
  if create:
    spec["metadata"] = {
        "shape": list(shape),
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [block_rows, shape[1]]}},
        "codecs": _CODECS,
    }
    spec["create"] = True
    spec["delete_existing"] = True
  return ts.open(spec, context=_context() if isinstance(path, _Url) else None).result()


def check_finite(x: np.ndarray, name: str, row_offset: int = 0) -> None:
  """Refuses rows holding NaN or Inf.

  Args:
    x: rows [n, dim].
    name: the array, for the message.
    row_offset: the global index of x's first row, for the message.

  Raises:
    StoreError: a row is not finite; the message lists the first five.
  """
  bad = ~np.isfinite(np.asarray(x, np.float32)).all(axis=1)
  if bad.any():
    rows = np.flatnonzero(bad)[:5] + row_offset
    raise StoreError(
        f"{name}: non-finite values (NaN/Inf) in rows {rows.tolist()}"
        f"{' …' if bad.sum() > 5 else ''}"
    )


class Writer:
  """Appends blocks of rows to one array (this process's rows [start, stop) of it).

  See the module docstring for the protocol. Made by `open_writer`:

      w = open_writer(root, ds, split, kind, model, n_rows=…, dim=…, meta={…})
      for start in range(w.next_row, w.stop, w.block_rows):
          w.write(start, compute_rows(start, min(start + w.block_rows, w.stop)))
      w.finish()

  Args:
    path: the array's directory (a Path, or a key under a URL root).
    meta: the array's meta.json.
    next_row: the first row of this writer's range not yet committed.
    array: the open TensorStore array.
    rows: this writer's range; None: all rows.
    process_index: this process.
    process_count: the number of writing processes.

  Attributes:
    path: the array's directory.
    meta: the array's meta.json, as last written or read.
    start: the first row of this writer's range.
    stop: one past its last row.
    process_index: this process.
    process_count: the number of writing processes.
  """

  def __init__(
      self,
      path: pathlib.Path | _Url,
      meta: dict,
      next_row: int,
      array,
      rows: slice | None = None,
      process_index: int = 0,
      process_count: int = 1,
  ):
    self.path, self.meta, self._next, self._array = path, meta, next_row, array
    rows = slice(0, meta["n_rows"]) if rows is None else rows
    self.start, self.stop = rows.start, rows.stop
    self.process_index, self.process_count = process_index, process_count

  @property
  def n_rows(self) -> int:
    """The array's total row count."""
    return self.meta["n_rows"]

  @property
  def block_rows(self) -> int:
    """Rows per block (one zarr chunk)."""
    return self.meta["block_rows"]

  @property
  def next_row(self) -> int:
    """The first row of this writer's range not yet committed (== stop when done)."""
    return self._next

  @property
  def committed_rows(self) -> int:
    """Rows of this writer's range committed (one process: rows [0, committed_rows))."""
    return self._next - self.start

  @property
  def complete(self) -> bool:
    """Whether meta.json says the whole array is committed."""
    return bool(self.meta.get("complete"))

  def write(self, start: int, rows: np.ndarray) -> None:
    """Writes rows [start, start+len(rows)); start must be `next_row`.

    Args:
      start: the block's first row, `next_row`.
      rows: the block, [min(block_rows, stop − start), dim].

    Raises:
      StoreError: the array is complete, the block is not the next one or has the wrong
        shape, or it holds non-finite values.
    """
    if self.complete:
      raise StoreError(f"{self.path}: already complete")
    expected = min(self.block_rows, self.stop - self._next)
    if start != self._next or expected <= 0 or rows.shape != (expected, self.meta["dim"]):
      raise StoreError(
          f"{self.path}: write of rows [{start}, {start + len(rows)}) with shape "
          f"{rows.shape}, but the next block is rows [{self._next}, "
          f"{self._next + expected}) of dim {self.meta['dim']}"
      )
    check_finite(rows, str(self.path), start)
    data = np.asarray(rows, np.float32).astype(self._array.dtype.numpy_dtype)
    self._array[start : start + expected].write(data).result()
    self._next = start + expected
    self._save_progress()

  def _save_progress(self) -> None:
    if self.process_count == 1:
      _atomic_write_json(self.path / "progress.json", {"committed_rows": self._next})
    else:
      _atomic_write_json(
          self.path / _progress_name(self.process_index, self.process_count),
          {"start": self.start, "stop": self.stop, "next_row": self._next},
      )

  def finish(self, extra_meta: Mapping[str, Any] | None = None) -> None:
    """Marks the array complete; `extra_meta` (run facts, not identity) joins meta.json.

    With several processes every one must call it (see the module docstring).

    Args:
      extra_meta: fields added to meta.json; none may be an identity field.

    Raises:
      StoreError: this writer's range is not fully written, or (with barriers) another
        process's range is not committed.
      ValueError: `extra_meta` would change an identity field.
    """
    if self._next != self.stop:
      raise StoreError(
          f"{self.path}: finish() at {self._next}/{self.n_rows} rows"
          + (
              f" (rows [{self.start}, {self.stop}) of process {self.process_index})"
              if self.process_count > 1
              else ""
          )
      )
    if self.complete:
      return
    clash = set(extra_meta or ()) & set(_IDENTITY)
    if clash:
      raise ValueError(f"finish(extra_meta) may not change identity fields {sorted(clash)}")
    if self.process_count == 1:
      self._mark_complete(extra_meta)
      return
    from lead_jax import distributed

    key = f"store-finish:{self.meta['dataset']}/{self.meta['split']}/{self.meta['kind']}/{self.meta['model']}"
    synced = distributed.barrier(key)  # every process has committed its range
    missing = _uncommitted(self.path, self.meta, self.process_count)
    if missing and synced:
      raise StoreError(f"{self.path}: ranges not committed after every process finished: {missing}")
    if not missing and (self.process_index == 0 or not synced):
      tag = f".{self.process_index}"  # without barriers two last writers may race here
      _atomic_write_json(self.path / "progress.json", {"committed_rows": self.n_rows}, tag)
      self._mark_complete(extra_meta, tag)
    if synced:
      distributed.barrier(key + ":done")  # process 0 has marked it complete
      self.meta = _read_json(self.path / "meta.json")

  def _mark_complete(self, extra_meta, tag: str = "") -> None:
    self.meta = {**self.meta, **(extra_meta or {}), "complete": True}
    _atomic_write_json(self.path / "meta.json", self.meta, tag)


def open_writer(
    root,
    dataset: str,
    split: str,
    kind: str,
    model: str,
    *,
    n_rows: int,
    dim: int,
    meta: Mapping[str, Any],
    dtype: str = "float32",
    block_rows: int = 1024,
    overwrite: bool = False,
    process_index: int = 0,
    process_count: int = 1,
) -> Writer:
  """Opens (creating or resuming) the array for one (dataset, split, kind, model).

  `meta` holds the model's metadata: weights_digest, rows_digest, pooling, normalize,
  prefix, chunker, source, … (never secrets). A partial array written with different
  identity fields is refused unless `overwrite`. With `process_count` > 1 every process
  calls this with the same arguments and gets a writer for its own rows (module docstring).

  Args:
    root, dataset, split, kind, model: the array's address (see `array_dir`).
    n_rows: the array's row count.
    dim: its width.
    meta: the model's metadata (never secrets).
    dtype: the stored dtype, one of `DTYPES`.
    block_rows: rows per block (one zarr chunk); at most n_rows.
    overwrite: recreate the array even when it exists with other identity fields.
    process_index: this process.
    process_count: the number of writing processes.

  Returns:
    The `Writer` of this process's rows, resuming at its last committed block.

  Raises:
    ValueError: `dtype` is not one of `DTYPES`, or `process_index` is out of range.
    StoreError: an empty shape, a partial array with other identity fields, or an
      inconsistent existing array.
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  if n_rows <= 0 or dim <= 0:
    raise StoreError(
        f"{array_dir(root, dataset, split, kind, model)}: empty shape [{n_rows}, {dim}]"
    )
  path = _array_loc(root, dataset, split, kind, model)
  full = {
      **dict(meta),
      "model": model,
      "dataset": dataset,
      "split": split,
      "kind": kind,
      "n_rows": n_rows,
      "dim": dim,
      "dtype": dtype,
      "block_rows": min(block_rows, n_rows),
      "format_version": FORMAT_VERSION,
  }
  for k in _IDENTITY:
    full.setdefault(k, None)
  old = _read_json(path / "meta.json")
  if old is not None and not overwrite:
    diff = [k for k in _IDENTITY if old.get(k) != full.get(k)]
    if diff:
      raise StoreError(
          f"{path}: exists with different {', '.join(diff)} "
          f"(e.g. {diff[0]}: {old.get(diff[0])!r} vs {full.get(diff[0])!r}); "
          "delete it or pass --overwrite (overwrite=True) to re-embed"
      )
  create = old is None or overwrite
  if process_count > 1:
    return _open_shared(path, full, create, process_index, process_count)
  if not create:
    progress = _read_json(path / "progress.json") or {"committed_rows": 0}
    committed = int(progress["committed_rows"])
    if old.get("complete") and committed != n_rows:
      raise StoreError(f"{path}: meta says complete but progress is {committed}/{n_rows}")
    return Writer(path, old, committed, _open_ts(path))
  array = _create(path, full)
  return Writer(path, full, 0, array)


def _create(path: pathlib.Path | _Url, full: dict):
  if isinstance(path, _Url):
    path.delete("meta.json")
    path.delete("progress")
  else:
    path.mkdir(parents=True, exist_ok=True)
    for p in [path / "meta.json", *path.glob("progress*.json")]:
      p.unlink(missing_ok=True)
  array = _open_ts(
      path,
      create=True,
      shape=(full["n_rows"], full["dim"]),
      block_rows=full["block_rows"],
      dtype=full["dtype"],
  )
  _atomic_write_json(path / "progress.json", {"committed_rows": 0})
  full["complete"] = False
  _atomic_write_json(path / "meta.json", full)
  return array


def _open_shared(path: pathlib.Path | _Url, full: dict, create: bool, p: int, n: int) -> Writer:
  """open_writer for process p of n: process 0 creates, the others open after it."""
  from lead_jax import distributed

  if not 0 <= p < n:
    raise ValueError(f"process_index {p} is not in [0, {n})")
  key = f"store-open:{full['dataset']}/{full['split']}/{full['kind']}/{full['model']}"
  distributed.barrier(key)  # every process has read the old meta.json (and decided alike)
  if create and p == 0:
    _create(path, full)
  distributed.barrier(key + ":created")
  meta = _read_json(path / "meta.json")
  if meta is None:
    raise StoreError(
        f"{path}: missing after process 0 of {n} created it; every process must run "
        "together and see the same store directory (a shared filesystem)"
    )
  rows = _rows_of(meta, p, n)
  if meta.get("complete"):
    committed = int((_read_json(path / "progress.json") or {"committed_rows": 0})["committed_rows"])
    if committed != meta["n_rows"]:
      raise StoreError(f"{path}: meta says complete but progress is {committed}/{meta['n_rows']}")
    return Writer(path, meta, rows.stop, _open_ts(path), rows, p, n)
  prog = _read_json(path / _progress_name(p, n)) or {}
  resume = (prog.get("start"), prog.get("stop")) == (rows.start, rows.stop)
  w = Writer(
      path, meta, int(prog["next_row"]) if resume else rows.start, _open_ts(path), rows, p, n
  )
  if not resume:
    w._save_progress()
  return w


def read_meta(root, dataset: str, split: str, kind: str, model: str) -> dict:
  """An array's meta.json.

  Args:
    root, dataset, split, kind, model: the array's address (see `array_dir`).

  Returns:
    The decoded meta.json.

  Raises:
    StoreError: there is no such array.
  """
  path = _array_loc(root, dataset, split, kind, model)
  meta = _read_json(path / "meta.json")
  if meta is None:
    raise StoreError(f"{path}: no such array (meta.json missing)")
  return meta


def is_complete(
    root, dataset: str, split: str, kind: str, model: str, rows_digest: str | None = None
) -> bool:
  """Complete, and (when `rows_digest` is given) holding exactly those rows.

  Args:
    root, dataset, split, kind, model: the array's address (see `array_dir`).
    rows_digest: the digest the array's rows must have, or None.

  Returns:
    Whether the array is complete (and holds those rows); False when it does not exist.
  """
  meta = _read_json(_array_loc(root, dataset, split, kind, model) / "meta.json")
  return bool(
      meta
      and meta.get("complete")
      and (rows_digest is None or meta.get("rows_digest") == rows_digest)
  )


def list_models(
    root,
    dataset: str,
    split: str,
    kind: str,
    complete_only: bool = True,
    include_translated: bool = False,
) -> list[str]:
  """Models with an array here; translated arrays (experiments/translate_store.py) only on request.

  Args:
    root, dataset, split, kind: the arrays' address (see `array_dir`).
    complete_only: leave out incomplete arrays.
    include_translated: include arrays written by the translate stage.

  Returns:
    The model names, in the order of their directories' names.
  """
  base = _loc(root, dataset, split, kind)
  if isinstance(base, _Url):
    keys = [k for k in base.keys() if k.count("/") == 1 and k.endswith("/meta.json")]
    files = [base / k for k in sorted(keys, key=lambda k: k.split("/")[0])]  # as sorted Paths
  else:
    files = sorted(base.glob("*/meta.json")) if base.is_dir() else []
  out = []
  for d in files:
    meta = _read_json(d)
    if not meta or (complete_only and not meta.get("complete")):
      continue
    if meta.get("source") == "translated" and not include_translated:
      continue
    out.append(meta["model"])
  return out


def has_checksum(zarr_meta: Mapping[str, Any]) -> bool:
  """Whether an array's chunks carry a CRC-32C (its zarr.json's codecs include `crc32c`).

  Args:
    zarr_meta: the array's decoded zarr.json.

  Returns:
    True for arrays written with `_CODECS`; False for those written before checksums.
  """
  return any(c.get("name") == "crc32c" for c in zarr_meta.get("codecs", ()))


def _chunk_key(zarr_meta: Mapping[str, Any], c: int) -> str:
  """The key, under the array's directory, of the chunk holding row block `c`."""
  enc = zarr_meta.get("chunk_key_encoding") or {"name": "default"}
  v2 = enc.get("name") == "v2"
  sep = (enc.get("configuration") or {}).get("separator", "." if v2 else "/")
  return ("" if v2 else "c" + sep) + f"{c}{sep}0"


def _chunk_problem(zarr_meta: Mapping[str, Any], meta: Mapping[str, Any], c: int, err) -> str:
  """What is wrong with chunk `c`, from TensorStore's error reading it: key, rows, reason."""
  b, n = meta["block_rows"], meta["n_rows"]
  text = " ".join(str(err).split())
  if "Digest mismatch" in text:
    why = "fails its crc32c checksum (its bytes changed after they were written)"
  elif "Not enough data" in text:
    why = "is truncated"
  elif text.startswith("NOT_FOUND") or "is missing" in text:
    why = "is missing"
    if not has_checksum(zarr_meta):  # only `verify` reads these strictly
      why += (
          " (written before checksums, when an all-zero block was not stored: lost data"
          " unless its rows were all zeros)"
      )
  else:
    why = "is unreadable"
  return (
      f"chunk {_chunk_key(zarr_meta, c)} (rows [{c * b}, {min((c + 1) * b, n)})) {why} "
      f"[TensorStore: {text}]"
  )


def _bad_chunk(path, zarr_meta: dict, meta: dict, arr, lo: int, hi: int):
  """Reads rows [lo, hi) of `arr` chunk by chunk: the first failing chunk's error, or None.

  Returns:
    A `CorruptDataError` naming the array, the chunk and its rows; None if every chunk reads.
  """
  b = meta["block_rows"]
  for c in range(lo // b, -(-hi // b)):
    try:
      arr[max(lo, c * b) : min(hi, (c + 1) * b)].read().result()
    except ValueError as e:
      return CorruptDataError(
          f"{path}: {_chunk_problem(zarr_meta, meta, c, e)}; the array is corrupt, re-embed it"
      )
  return None


class CheckedArray:
  """A complete array's TensorStore handle whose reads refuse corrupt chunks.

  Reads as the handle does, `a[start:stop].read().result()`: one read, the fast path.
  Only when it fails are the rows read again chunk by chunk, and a chunk that fails its
  checksum, is truncated or is missing raises `CorruptDataError` naming the array, the
  chunk's key and its rows. Every other attribute is the handle's.

  Args:
    path: the array's directory.
    zarr_meta: its decoded zarr.json.
    meta: its meta.json.
    arr: the open TensorStore array.
    view: the part of it read, `arr` indexed; None: all of it.
  """

  def __init__(self, path, zarr_meta: dict, meta: dict, arr, view=None):
    self._path, self._zarr, self._meta, self._base = path, zarr_meta, meta, arr
    self._arr = arr if view is None else view

  def __getattr__(self, name: str):
    return getattr(self._arr, name)

  def __getitem__(self, index) -> CheckedArray:
    return CheckedArray(self._path, self._zarr, self._meta, self._base, self._arr[index])

  def read(self) -> _CheckedRead:
    """Starts reading this view.

    Returns:
      A future-like whose `result()` is the rows, or raises `CorruptDataError`.
    """
    return _CheckedRead(self, self._arr.read())


class _CheckedRead:
  """`CheckedArray.read()`'s pending result."""

  def __init__(self, view: CheckedArray, future):
    self._view, self._future = view, future

  def result(self) -> np.ndarray:
    """The rows read.

    Returns:
      The rows, in the stored dtype.

    Raises:
      CorruptDataError: a chunk of the rows fails its checksum, is truncated or is missing.
    """
    try:
      return self._future.result()
    except ValueError as e:
      first = e
    v = self._view
    d = v._arr.domain[0]  # rows, unless an integer index dropped them: then every row
    lo, hi = (d.inclusive_min, d.exclusive_max) if v._arr.rank == 2 else (0, v._meta["n_rows"])
    bad = _bad_chunk(v._path, v._zarr, v._meta, v._base, lo, hi)
    if bad is not None:
      raise bad from None
    logging.warning("%s: rows [%d, %d) read again after: %s", v._path, lo, hi, first)
    return v._arr.read().result()  # every chunk read: the failure was not the data's


def open_complete(root, dataset: str, split: str, kind: str, model: str):
  """A complete array opened for block reads: `(location, meta, handle)`.

  Works for every store root (paths and TensorStore URLs). Read rows with
  `handle[start:stop].read().result()`; a corrupt chunk raises `CorruptDataError`
  (see `CheckedArray`).

  Args:
    root, dataset, split, kind, model: the array's address (see `array_dir`).

  Returns:
    `(location, meta, handle)`: the array's directory, its meta.json, and the open array,
    a `CheckedArray`.

  Raises:
    StoreError: the array is missing, incomplete, or its shape differs from its meta.
    CorruptDataError: its zarr.json is missing or unreadable.
  """
  path = _array_loc(root, dataset, split, kind, model)
  meta = read_meta(root, dataset, split, kind, model)
  progress = _read_json(path / "progress.json") or {"committed_rows": 0}
  if not meta.get("complete") or progress["committed_rows"] != meta["n_rows"]:
    raise StoreError(
        f"{path}: incomplete ({progress['committed_rows']}/{meta['n_rows']} rows "
        "committed); rerun the embedding to finish it"
    )
  try:
    zarr_meta = _read_json(path / "zarr.json")
    if zarr_meta is None:
      raise ValueError("zarr.json is missing")
    # a missing chunk of a checksummed array is an error; older arrays read it as zeros
    arr = _open_ts(path, strict=has_checksum(zarr_meta))
  except ValueError as e:  # json.JSONDecodeError too
    raise CorruptDataError(f"{path}: cannot open the array: {' '.join(str(e).split())}") from None
  if tuple(arr.shape) != (meta["n_rows"], meta["dim"]):
    raise StoreError(f"{path}: shape {tuple(arr.shape)} != meta [{meta['n_rows']}, {meta['dim']}]")
  return path, meta, CheckedArray(path, zarr_meta, meta, arr)


def read_array(
    root, dataset: str, split: str, kind: str, model: str, *, check_alignment: bool = True
) -> np.ndarray:
  """The complete, finite, row-aligned, checksum-clean [rows, dim] float32 array.

  Args:
    root, dataset, split, kind, model: the array's address (see `array_dir`).
    check_alignment: refuse the array if another model's array here has other rows.

  Returns:
    The rows, float32.

  Raises:
    StoreError: the array is missing or incomplete, its rows differ from another model's,
      or it holds non-finite values.
    CorruptDataError: a chunk fails its checksum, is truncated or is missing (the message
      names the array, the chunk and its rows).
  """
  path, meta, arr = open_complete(root, dataset, split, kind, model)
  if check_alignment:
    for other in list_models(root, dataset, split, kind, include_translated=True):
      if other == model:
        continue
      o = read_meta(root, dataset, split, kind, other)
      if o.get("rows_digest") != meta.get("rows_digest"):
        raise StoreError(
            f"{path}: row-text digest {str(meta.get('rows_digest'))[:12]}… differs from "
            f"{array_dir(root, dataset, split, kind, other)} ({str(o.get('rows_digest'))[:12]}…): "
            "rows are misaligned across models (different data, cap or chunker)"
        )
  x = np.asarray(arr.read().result(), np.float32)
  check_finite(x, str(path))
  return x


def read_models(
    root, dataset: str, split: str, kind: str, models: list[str] | None = None
) -> tuple[list[str], list[np.ndarray]]:
  """The named models' arrays (default: every complete one), checked and row-aligned.

  Args:
    root, dataset, split, kind: the arrays' address (see `array_dir`).
    models: the model names; None or empty: every complete, untranslated array.

  Returns:
    `(models, arrays)`, the arrays as `read_array` gives them.

  Raises:
    StoreError: no arrays, or one fails `read_array`'s checks.
    CorruptDataError: a chunk of one fails to read (see `read_array`).
  """
  models = list(models) if models else list_models(root, dataset, split, kind)
  if not models:
    raise StoreError(
        f"{_loc(root, dataset, split, kind)}: no complete arrays; run the embed stage (experiments/embed.py)"
    )
  return models, [read_array(root, dataset, split, kind, m) for m in models]


def write_rows(
    embed: Callable[[list[str]], np.ndarray],
    dim: int,
    rows,
    root,
    model: str,
    *,
    prefix: str = "",
    meta: dict,
    dtype: str = "float32",
    block_rows: int = 2048,
    overwrite: bool = False,
    log_every_s: float | None = None,
    final_meta: Callable[[], dict] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Writer:
  """Embeds `rows` (a `lead_jax.data.Rows`, `prefix` prepended) into the store, resuming.

  `embed(texts) -> [len(texts), dim]` is any encoder (`Runner.embed`, the OpenAI
  embedder); `final_meta()` adds run facts (e.g. truncation counts) at the end.
  With several processes (default: jax's) each embeds its own rows; all must call this,
  and process 0's `final_meta()` is the one recorded.

  Args:
    embed: the encoder, texts → [len(texts), dim].
    dim: the encoder's width.
    rows: the `lead_jax.data.Rows` to embed.
    root: the store root, a directory or a kvstore URL.
    model: the model name.
    prefix: prepended to every text (and recorded in meta).
    meta: the model's metadata (see `open_writer`).
    dtype: the stored dtype, one of `DTYPES`.
    block_rows: rows per block.
    overwrite: recreate an array with other identity fields.
    log_every_s: seconds between progress log lines; None: `logs.EVERY_S`.
    final_meta: returns run facts added to meta.json at the end.
    process_index: this process; None: `jax.process_index()`.
    process_count: the number of processes; None: `jax.process_count()`.

  Returns:
    The finished `Writer` (or the complete one, when there was nothing to do).

  Raises:
    StoreError: as `open_writer` and `Writer.write` raise.
    ValueError: as `open_writer` raises.
  """
  p = jax.process_index() if process_index is None else process_index
  n = jax.process_count() if process_count is None else process_count
  writer = open_writer(
      root,
      rows.dataset,
      rows.split,
      rows.kind,
      model,
      n_rows=len(rows),
      dim=dim,
      dtype=dtype,
      block_rows=block_rows,
      overwrite=overwrite,
      meta={**meta, "rows_digest": rows.digest, "prefix": prefix},
      process_index=p,
      process_count=n,
  )
  name = f"{rows.dataset}/{rows.split}/{rows.kind}/{model}" + (
      f" (process {p}/{n})" if n > 1 else ""
  )
  if writer.complete:
    logging.info("%s: complete (%d rows), skipping", name, writer.n_rows)
    return writer
  if writer.committed_rows:
    logging.info(
        "%s: resuming at row %d of [%d, %d)", name, writer.next_row, writer.start, writer.stop
    )
  progress = logs.Progress(
      name,
      writer.stop - writer.start,
      start=writer.next_row - writer.start,
      every_s=logs.EVERY_S if log_every_s is None else log_every_s,
  )
  for start in range(writer.next_row, writer.stop, writer.block_rows):
    stop = min(start + writer.block_rows, writer.stop)
    writer.write(start, embed([prefix + t for t in rows.texts[start:stop]]))
    progress.set(stop - writer.start)
  writer.finish(final_meta() if final_meta else None)
  return writer


@dataclasses.dataclass
class ArrayReport:
  """What `verify` found in one array.

  Attributes:
    name: `<dataset>/<split>/<kind>/<model dir>`, the array's path under the store root.
    location: the array's directory (a path, or a URL under a URL root).
    problems: why the array is bad, one reason each; empty when it is good.
    warnings: what is worth knowing but leaves it good ("no checksum").
  """

  name: str
  location: str
  problems: list[str] = dataclasses.field(default_factory=list)
  warnings: list[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    """Whether the array is good (warnings allowed)."""
    return not self.problems


def find_arrays(root, dataset: str | None = None) -> list[str]:
  """Every array directory of a store: those holding a meta.json or a zarr.json.

  Args:
    root: the store root, a directory or a kvstore URL.
    dataset: only this dataset's arrays; None: every dataset's.

  Returns:
    The arrays' names, `<dataset>/<split>/<kind>/<model dir>`, sorted.
  """
  base = _loc(root, *([dataset] if dataset else []))
  depth = 3 if dataset else 4  # directories between `base` and the array's files
  if isinstance(base, _Url):
    keys = [k.decode() for k in base.kv.list().result()] if not base.key else base.keys()
  else:
    keys = [
        str(p.relative_to(base).as_posix())
        for name in ("meta.json", "zarr.json")
        for p in base.glob("/".join(["*"] * depth + [name]))
    ]
  names = {
      "/".join(([dataset] if dataset else []) + k.split("/")[:depth])
      for k in keys
      if k.count("/") == depth and k.rsplit("/", 1)[-1] in ("meta.json", "zarr.json")
  }
  return sorted(names)


def _check_chunks(rep: ArrayReport, zarr_meta: dict, meta: dict, arr, window: int = 4) -> None:
  """Reads every chunk of a complete array (`window` in flight): checksums and finite values."""
  b, n = meta["block_rows"], meta["n_rows"]
  pending: collections.deque = collections.deque()
  bad_chunks, nonfinite, n_nonfinite = [], [], 0

  def take() -> None:
    nonlocal n_nonfinite
    k, fut = pending.popleft()
    try:
      x = np.asarray(fut.result(), np.float32)
    except ValueError as e:
      bad_chunks.append(_chunk_problem(zarr_meta, meta, k, e))
      return
    rows = np.flatnonzero(~np.isfinite(x).all(axis=1)) + k * b
    n_nonfinite += len(rows)
    nonfinite.extend(rows[: 5 - len(nonfinite)].tolist())

  for c in range(-(-n // b)):
    pending.append((c, arr[c * b : min((c + 1) * b, n)].read()))
    if len(pending) > window:
      take()
  while pending:
    take()
  rep.problems.extend(bad_chunks[:10])
  if len(bad_chunks) > 10:
    rep.problems.append(f"… and {len(bad_chunks) - 10} more bad chunks ({len(bad_chunks)} in all)")
  if n_nonfinite:
    rep.problems.append(
        f"non-finite values (NaN/Inf) in {n_nonfinite} rows: {nonfinite}"
        f"{' …' if n_nonfinite > 5 else ''}"
    )


def _check_array(root, name: str) -> tuple[ArrayReport, dict | None]:
  """Checks one array (everything but alignment): its report and meta.json (None if unreadable)."""
  path = _loc(root, *name.split("/"))
  rep = ArrayReport(name, str(path))
  metas = {}
  for f in ("meta.json", "zarr.json", "progress.json"):
    try:
      metas[f] = _read_json(path / f)
    except ValueError as e:  # json.JSONDecodeError
      rep.problems.append(f"{f} is unreadable ({e})")
      metas[f] = None
    else:
      if metas[f] is None and f != "progress.json":
        rep.problems.append(f"{f} is missing")
  meta, zarr_meta = metas["meta.json"], metas["zarr.json"]
  try:
    n, dim = int(meta["n_rows"]), int(meta["dim"])
    int(meta["block_rows"])
  except (KeyError, TypeError, ValueError):
    if meta is not None:
      rep.problems.append("meta.json lacks n_rows, dim or block_rows")
    return rep, None
  if zarr_meta is None:
    return rep, meta
  committed = (metas["progress.json"] or {}).get("committed_rows", 0)
  if not meta.get("complete") or committed != n:
    rep.problems.append(
        f"incomplete: meta says complete={bool(meta.get('complete'))}, {committed}/{n} rows "
        "committed; rerun the embedding to finish it"
    )
  if not has_checksum(zarr_meta):
    rep.warnings.append(
        "no checksum: written before chunks carried a crc32c, so a flipped bit goes "
        "undetected; re-embed (--overwrite) to add checksums"
    )
  shape = zarr_meta.get("shape")
  if shape != [n, dim] or zarr_meta.get("data_type") != meta.get("dtype"):
    rep.problems.append(
        f"zarr.json says shape {shape} {zarr_meta.get('data_type')}, meta.json "
        f"[{n}, {dim}] {meta.get('dtype')}"
    )
  if rep.problems:  # incomplete or inconsistent: its chunks are not all there to read
    return rep, meta
  try:
    arr = _open_ts(path, strict=True)
  except ValueError as e:
    rep.problems.append(f"cannot open the array: {' '.join(str(e).split())}")
    return rep, meta
  _check_chunks(rep, zarr_meta, meta, arr)
  return rep, meta


def _check_alignment(group: list[tuple[ArrayReport, dict]]) -> None:
  """Flags arrays of one dataset/split/kind whose rows differ from the others'.

  The rows (`rows_digest`, `n_rows`) held by the most arrays are the reference; on a tie
  for the most, every array is flagged.
  """
  by_rows = collections.defaultdict(list)
  for rep, meta in group:
    by_rows[meta.get("rows_digest"), meta["n_rows"]].append(rep.name)
  if len(by_rows) < 2:
    return
  counts = sorted((len(v) for v in by_rows.values()), reverse=True)
  ref = max(by_rows, key=lambda k: len(by_rows[k])) if counts[0] > counts[1] else None
  for rep, meta in group:
    mine = (meta.get("rows_digest"), meta["n_rows"])
    if mine == ref:
      continue
    others = "; ".join(
        f"{str(d)[:12]}… ({r} rows) in {', '.join(by_rows[d, r])}"
        for d, r in by_rows
        if (d, r) != mine
    )
    rep.problems.append(
        f"rows misaligned across models: row-text digest {str(mine[0])[:12]}… ({mine[1]} rows) "
        f"differs from {others} (different data, cap or chunker)"
    )


def verify(root, dataset: str | None = None) -> list[ArrayReport]:
  """Checks every array of a store (experiments/verify_store.py).

  Each array must be complete (meta.json says so, progress and zarr.json agree on its
  rows), every chunk must read (checksum, length, present) and hold only finite values,
  and its rows (`rows_digest`, `n_rows`) must be those of every other model's array on
  the same dataset/split/kind. Arrays written before checksums pass with a warning.

  Args:
    root: the store root, a directory or a kvstore URL.
    dataset: only this dataset's arrays; None: every dataset's.

  Returns:
    One report per array, in `find_arrays` order.

  Raises:
    InputError: there are no arrays under the root (or the dataset).
  """
  names = find_arrays(root, dataset)
  if not names:
    where = _loc(root, *([dataset] if dataset else []))
    raise InputError(f"{where}: no arrays (no <dataset>/<split>/<kind>/<model>/meta.json)")
  checked = []
  for name in names:
    logging.info("checking %s", name)
    rep, meta = _check_array(root, name)
    checked.append((rep, meta))
  groups = collections.defaultdict(list)
  for rep, meta in checked:
    if meta is not None:
      groups[rep.name.rsplit("/", 1)[0]].append((rep, meta))
  for group in groups.values():
    _check_alignment(group)
  return [rep for rep, _ in checked]
