"""Neutral file I/O every layer may use: atomic writes, checked JSON, digests, tables.

Every write goes to a temporary name in the same directory and is renamed into place,
so a reader never sees a half-written file and a killed writer leaves only a
`.name.tmp-PID` file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

PathLike = str | os.PathLike


def atomic_write(path: PathLike, write: Callable[[pathlib.Path], Any]) -> pathlib.Path:
  """Calls `write(tmp)` on a temporary sibling of `path`, then renames it to `path`.

  Args:
    path: the final file.
    write: writes the whole file to the path it is given.

  Returns:
    `path` as a `pathlib.Path`.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return path


def write_json(path: PathLike, obj: Any, indent: int | None = 1) -> pathlib.Path:
  """Writes `obj` as JSON to `path` atomically.

  Args:
    path: the final file.
    obj: a JSON-serialisable object.
    indent: `json.dumps` indent (None for one line).

  Returns:
    `path` as a `pathlib.Path`.
  """
  text = json.dumps(obj, indent=indent)
  return atomic_write(path, lambda p: p.write_text(text))


def read_json(path: PathLike, missing_ok: bool = False) -> Any:
  """Reads a JSON file; errors name the file (and the line of a syntax error).

  Args:
    path: the file.
    missing_ok: return None for a missing file instead of raising.

  Returns:
    The decoded object (None for a missing file when `missing_ok`).

  Raises:
    FileNotFoundError: the file does not exist (and not `missing_ok`).
    ValueError: the file is not valid JSON; the message is `path:line: …`.
  """
  path = pathlib.Path(path)
  try:
    text = path.read_text()
  except FileNotFoundError:
    if missing_ok:
      return None
    raise FileNotFoundError(f"{path}: file not found") from None
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def sha256_files(paths: Iterable[PathLike]) -> str:
  """Hex sha256 over the bytes of `paths`, in order, read in 4 MiB blocks.

  Args:
    paths: the files, hashed as one concatenated stream.

  Returns:
    The hex digest.
  """
  h = hashlib.sha256()
  for path in paths:
    with open(path, "rb") as f:
      while block := f.read(1 << 22):
        h.update(block)
  return h.hexdigest()


def sha256_file(path: PathLike) -> str:
  """Hex sha256 of one file's bytes.

  Args:
    path: the file.

  Returns:
    The hex digest.
  """
  return sha256_files([path])


def sha256_arrays(arrays: Iterable[Any]) -> str:
  """Hex sha256 over arrays' shapes and float32 bytes (identifies a set of parameters).

  Args:
    arrays: array-likes, each cast to contiguous float32 before hashing.

  Returns:
    The hex digest.
  """
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(np.asarray(a, np.float32))
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
  return h.hexdigest()


def save_table(df, directory: PathLike, stem: str) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes a DataFrame as `<directory>/<stem>.parquet` and `.csv`, each atomically.

  Args:
    df: a pandas DataFrame.
    directory: where the two files go (created if missing).
    stem: the file name without suffix.

  Returns:
    The parquet and CSV paths.
  """
  directory = pathlib.Path(directory)
  pq = atomic_write(directory / f"{stem}.parquet", lambda p: df.to_parquet(p, index=False))
  csv = atomic_write(directory / f"{stem}.csv", lambda p: df.to_csv(p, index=False))
  return pq, csv


def read_table(path: PathLike):
  """A parquet table as a DataFrame, or None when the file does not exist.

  Args:
    path: the parquet file.

  Returns:
    The pandas DataFrame, or None when `path` does not exist.
  """
  import pandas as pd

  path = pathlib.Path(path)
  return pd.read_parquet(path) if path.exists() else None
