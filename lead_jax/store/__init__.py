"""Embedding store: one TensorStore zarr3 array per (dataset, split, kind, model).

Layout under a root directory (local path; TensorStore also takes gs:// for the
arrays themselves):

    <root>/<dataset>/<split>/<kind>/<model>/zarr.json, c/…   the [rows, dim] array
    <root>/<dataset>/<split>/<kind>/<model>/meta.json         model, digests, config
    <root>/<dataset>/<split>/<kind>/<model>/progress.json     committed row count

Resumable writes. Rows are written strictly in order, one zarr chunk (`block_rows`
rows) per block; TensorStore writes each chunk file atomically and fsyncs it. Only
after a block's write has completed does `progress.json` advance, itself by
write-temp, fsync, rename. A process killed at any instant therefore loses at
most the block in flight; a rerun with the same metadata resumes at the committed
row and, since the computation is deterministic, ends with the same bytes.
`meta.json` says `"complete": true` only after the last block is committed.

Readers refuse incomplete arrays, NaN/Inf rows, and arrays whose row-text digest
differs from another model's on the same dataset/split/kind.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

import numpy as np

DTYPES = ("float32", "bfloat16", "float16")
FORMAT_VERSION = 1
# Fields that must agree between an existing partial array and a resumed write.
_IDENTITY = ("model", "weights_digest", "rows_digest", "n_rows", "dim", "dtype", "block_rows",
             "pooling", "normalize", "prefix", "chunker", "source")


class StoreError(RuntimeError):
    """A store array is missing, incomplete, corrupt or misaligned; names the array."""


def model_key(model: str) -> str:
    return model.replace("/", "__")


def array_dir(root: str | os.PathLike, dataset: str, split: str, kind: str, model: str) -> pathlib.Path:
    return pathlib.Path(root) / dataset / split / kind / model_key(model)


def _atomic_write_json(path: pathlib.Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
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


def _read_json(path: pathlib.Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _open_ts(path: pathlib.Path, *, create: bool = False, shape=None, block_rows=None, dtype=None):
    import tensorstore as ts
    spec: dict[str, Any] = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}
    if create:
        spec["metadata"] = {
            "shape": list(shape), "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [block_rows, shape[1]]}},
        }
        spec["create"] = True
        spec["delete_existing"] = True
    return ts.open(spec).result()


def check_finite(x: np.ndarray, name: str, row_offset: int = 0) -> None:
    bad = ~np.isfinite(np.asarray(x, np.float32)).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5] + row_offset
        raise StoreError(f"{name}: non-finite values (NaN/Inf) in rows {rows.tolist()}"
                         f"{' …' if bad.sum() > 5 else ''}")


class Writer:
    """Appends blocks of rows to one array; see the module docstring for the protocol.

    Usage:
        w = open_writer(root, ds, split, kind, model, n_rows=…, dim=…, meta={…})
        for start in range(w.committed_rows, w.n_rows, w.block_rows):
            w.write(start, compute_rows(start, min(start + w.block_rows, w.n_rows)))
        w.finish()
    """

    def __init__(self, path: pathlib.Path, meta: dict, committed: int, array):
        self.path, self.meta, self._committed, self._array = path, meta, committed, array

    @property
    def n_rows(self) -> int:
        return self.meta["n_rows"]

    @property
    def block_rows(self) -> int:
        return self.meta["block_rows"]

    @property
    def committed_rows(self) -> int:
        return self._committed

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    def write(self, start: int, rows: np.ndarray) -> None:
        """Writes rows [start, start+len(rows)); start must be the committed row count."""
        if self.complete:
            raise StoreError(f"{self.path}: already complete")
        expected = min(self.block_rows, self.n_rows - self._committed)
        if start != self._committed or rows.shape != (expected, self.meta["dim"]):
            raise StoreError(f"{self.path}: write of rows [{start}, {start + len(rows)}) with shape "
                             f"{rows.shape}, but the next block is rows [{self._committed}, "
                             f"{self._committed + expected}) of dim {self.meta['dim']}")
        check_finite(rows, str(self.path), start)
        data = np.asarray(rows, np.float32).astype(self._array.dtype.numpy_dtype)
        self._array[start:start + expected].write(data).result()
        self._committed = start + expected
        _atomic_write_json(self.path / "progress.json", {"committed_rows": self._committed})

    def finish(self, extra_meta: Mapping[str, Any] | None = None) -> None:
        """Marks the array complete; `extra_meta` (run facts, not identity) joins meta.json."""
        if self._committed != self.n_rows:
            raise StoreError(f"{self.path}: finish() at {self._committed}/{self.n_rows} rows")
        if not self.complete:
            clash = set(extra_meta or ()) & set(_IDENTITY)
            if clash:
                raise ValueError(f"finish(extra_meta) may not change identity fields {sorted(clash)}")
            self.meta = {**self.meta, **(extra_meta or {}), "complete": True}
            _atomic_write_json(self.path / "meta.json", self.meta)


def open_writer(root, dataset: str, split: str, kind: str, model: str, *, n_rows: int, dim: int,
                meta: Mapping[str, Any], dtype: str = "float32", block_rows: int = 1024,
                overwrite: bool = False) -> Writer:
    """Opens (creating or resuming) the array for one (dataset, split, kind, model).

    `meta` holds the model's metadata: weights_digest, rows_digest, pooling, normalize,
    prefix, chunker, source, … (never secrets). A partial array written with different
    identity fields is refused unless `overwrite`.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if n_rows <= 0 or dim <= 0:
        raise StoreError(f"{array_dir(root, dataset, split, kind, model)}: empty shape [{n_rows}, {dim}]")
    path = array_dir(root, dataset, split, kind, model)
    full = {**dict(meta), "model": model, "dataset": dataset, "split": split, "kind": kind,
            "n_rows": n_rows, "dim": dim, "dtype": dtype, "block_rows": min(block_rows, n_rows),
            "format_version": FORMAT_VERSION}
    for k in _IDENTITY:
        full.setdefault(k, None)
    old = _read_json(path / "meta.json")
    if old is not None and not overwrite:
        diff = [k for k in _IDENTITY if old.get(k) != full.get(k)]
        if diff:
            raise StoreError(f"{path}: exists with different {', '.join(diff)} "
                             f"(e.g. {diff[0]}: {old.get(diff[0])!r} vs {full.get(diff[0])!r}); "
                             "delete it or pass --overwrite (overwrite=True) to re-embed")
        progress = _read_json(path / "progress.json") or {"committed_rows": 0}
        committed = int(progress["committed_rows"])
        if old.get("complete") and committed != n_rows:
            raise StoreError(f"{path}: meta says complete but progress is {committed}/{n_rows}")
        return Writer(path, old, committed, _open_ts(path))
    path.mkdir(parents=True, exist_ok=True)
    for name in ("meta.json", "progress.json"):
        (path / name).unlink(missing_ok=True)
    array = _open_ts(path, create=True, shape=(n_rows, dim), block_rows=full["block_rows"], dtype=dtype)
    _atomic_write_json(path / "progress.json", {"committed_rows": 0})
    full["complete"] = False
    _atomic_write_json(path / "meta.json", full)
    return Writer(path, full, 0, array)


def read_meta(root, dataset: str, split: str, kind: str, model: str) -> dict:
    path = array_dir(root, dataset, split, kind, model)
    meta = _read_json(path / "meta.json")
    if meta is None:
        raise StoreError(f"{path}: no such array (meta.json missing)")
    return meta


def is_complete(root, dataset: str, split: str, kind: str, model: str, rows_digest: str | None = None) -> bool:
    """Complete, and (when `rows_digest` is given) holding exactly those rows."""
    meta = _read_json(array_dir(root, dataset, split, kind, model) / "meta.json")
    return bool(meta and meta.get("complete") and (rows_digest is None or meta.get("rows_digest") == rows_digest))


def list_models(root, dataset: str, split: str, kind: str, complete_only: bool = True,
                include_translated: bool = False) -> list[str]:
    """Models with an array here; translated arrays (experiments/translate_store.py) only on request."""
    base = pathlib.Path(root) / dataset / split / kind
    out = []
    for d in sorted(base.glob("*/meta.json")) if base.is_dir() else []:
        meta = _read_json(d)
        if not meta or (complete_only and not meta.get("complete")):
            continue
        if meta.get("source") == "translated" and not include_translated:
            continue
        out.append(meta["model"])
    return out


def read_array(root, dataset: str, split: str, kind: str, model: str, *,
               check_alignment: bool = True) -> np.ndarray:
    """The complete, finite, row-aligned [rows, dim] float32 array, or a StoreError."""
    path = array_dir(root, dataset, split, kind, model)
    meta = read_meta(root, dataset, split, kind, model)
    progress = _read_json(path / "progress.json") or {"committed_rows": 0}
    if not meta.get("complete") or progress["committed_rows"] != meta["n_rows"]:
        raise StoreError(f"{path}: incomplete ({progress['committed_rows']}/{meta['n_rows']} rows "
                         "committed); rerun the embedding to finish it")
    if check_alignment:
        for other in list_models(root, dataset, split, kind, include_translated=True):
            if other == model:
                continue
            o = read_meta(root, dataset, split, kind, other)
            if o.get("rows_digest") != meta.get("rows_digest"):
                raise StoreError(f"{path}: row-text digest {str(meta.get('rows_digest'))[:12]}… differs from "
                                 f"{array_dir(root, dataset, split, kind, other)} ({str(o.get('rows_digest'))[:12]}…): "
                                 "rows are misaligned across models (different data, cap or chunker)")
    x = np.asarray(_open_ts(path).read().result(), np.float32)
    if x.shape != (meta["n_rows"], meta["dim"]):
        raise StoreError(f"{path}: shape {x.shape} != meta [{meta['n_rows']}, {meta['dim']}]")
    check_finite(x, str(path))
    return x


def read_models(root, dataset: str, split: str, kind: str,
                models: list[str] | None = None) -> tuple[list[str], list[np.ndarray]]:
    """The named models' arrays (default: every complete one), checked and row-aligned."""
    models = list(models) if models else list_models(root, dataset, split, kind)
    if not models:
        raise StoreError(f"{pathlib.Path(root) / dataset / split / kind}: no complete arrays; run experiments/embed.py")
    return models, [read_array(root, dataset, split, kind, m) for m in models]
