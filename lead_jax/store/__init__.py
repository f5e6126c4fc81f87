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

Readers refuse incomplete arrays, NaN/Inf rows, and arrays whose row-text digest
differs from another model's on the same dataset/split/kind.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

DTYPES = ("float32", "bfloat16", "float16")
FORMAT_VERSION = 1
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
    path: pathlib.Path | _Url, *, create: bool = False, shape=None, block_rows=None, dtype=None
):
  import tensorstore as ts

  if isinstance(path, _Url):
    kvstore = {**path.kv.spec().to_json(), "path": path.kv.path + path.key + "/"}
  else:
    kvstore = {"driver": "file", "path": str(path)}
  spec: dict[str, Any] = {"driver": "zarr3", "kvstore": kvstore}
  if create:
    spec["metadata"] = {
        "shape": list(shape),
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [block_rows, shape[1]]}},
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


def open_complete(root, dataset: str, split: str, kind: str, model: str):
  """A complete array opened for block reads: `(location, meta, tensorstore handle)`.

  Works for every store root (paths and TensorStore URLs). Read rows with
  `handle[start:stop].read().result()`.

  Args:
    root, dataset, split, kind, model: the array's address (see `array_dir`).

  Returns:
    `(location, meta, handle)`: the array's directory, its meta.json, and the open array.

  Raises:
    StoreError: the array is missing, incomplete, or its shape differs from its meta.
  """
  path = _array_loc(root, dataset, split, kind, model)
  meta = read_meta(root, dataset, split, kind, model)
  progress = _read_json(path / "progress.json") or {"committed_rows": 0}
  if not meta.get("complete") or progress["committed_rows"] != meta["n_rows"]:
    raise StoreError(
        f"{path}: incomplete ({progress['committed_rows']}/{meta['n_rows']} rows "
        "committed); rerun the embedding to finish it"
    )
  arr = _open_ts(path)
  if tuple(arr.shape) != (meta["n_rows"], meta["dim"]):
    raise StoreError(f"{path}: shape {tuple(arr.shape)} != meta [{meta['n_rows']}, {meta['dim']}]")
  return path, meta, arr


def read_array(
    root, dataset: str, split: str, kind: str, model: str, *, check_alignment: bool = True
) -> np.ndarray:
  """The complete, finite, row-aligned [rows, dim] float32 array, or a StoreError.

  Args:
    root, dataset, split, kind, model: the array's address (see `array_dir`).
    check_alignment: refuse the array if another model's array here has other rows.

  Returns:
    The rows, float32.

  Raises:
    StoreError: the array is missing or incomplete, its rows differ from another model's,
      or it holds non-finite values.
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
    log_every_s: float = 10.0,
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
    log_every_s: seconds between progress log lines.
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
  t0, done0, last = time.time(), writer.next_row, 0.0
  for start in range(writer.next_row, writer.stop, writer.block_rows):
    stop = min(start + writer.block_rows, writer.stop)
    writer.write(start, embed([prefix + t for t in rows.texts[start:stop]]))
    now = time.time()
    if now - last >= log_every_s or stop == writer.stop:
      rate = (stop - done0) / max(now - t0, 1e-9)
      eta = (writer.stop - stop) / max(rate, 1e-9)
      logging.info(
          "%s: %d/%d rows, %.1f rows/s, ETA %.0fs",
          name,
          stop - writer.start,
          writer.stop - writer.start,
          rate,
          eta,
      )
      last = now
  writer.finish(final_meta() if final_meta else None)
  return writer
