"""CKA results on disk: the matrices (`cka.npz`) and the long `cka` table."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lead_jax import files


def cka_to_table(cka: dict, names: Sequence[str], dataset: str | None = None) -> pd.DataFrame:
  """Long table of the CKA matrices: one row per (model_a, model_b, kind).

  Args:
    cka: `{"linear": [M, M], "debiased": [M, M]}`.
    names: the M model names, in matrix order.
    dataset: a leading `dataset` column, if given.

  Returns:
    The DataFrame with columns (dataset,) model_a, model_b, kind, value.
  """
  frames = []
  for kind in ("linear", "debiased"):
    a = np.asarray(cka[kind], np.float64)
    i, j = np.meshgrid(np.arange(a.shape[0]), np.arange(a.shape[1]), indexing="ij")
    frames.append(
        pd.DataFrame(
            {
                "model_a": np.asarray(names, object)[i.ravel()],
                "model_b": np.asarray(names, object)[j.ravel()],
                "kind": kind,
                "value": a.ravel(),
            }
        )
    )
  df = pd.concat(frames, ignore_index=True)
  if dataset is not None:
    df.insert(0, "dataset", dataset)
  return df


def save_cka(
    cka: dict, names: Sequence[str], directory: str | os.PathLike, dataset: str | None = None
) -> None:
  """Writes the CKA matrices as `cka.npz` (with the model names) and the long `cka` table.

  Args:
    cka: `{"linear": [M, M], "debiased": [M, M]}` from `cka_all_pairs`.
    names: the M model names, in matrix order.
    directory: the output directory (created if missing).
    dataset: a dataset column for the table, if given.
  """
  directory = Path(directory)
  arrays = {k: np.asarray(cka[k]) for k in ("linear", "debiased")}
  files.atomic_write(
      directory / "cka.npz", lambda p: np.savez(open(p, "wb"), names=np.asarray(names), **arrays)
  )
  files.save_table(cka_to_table(cka, names, dataset), directory, "cka")


def load_cka(directory: str | os.PathLike) -> tuple[list[str], dict[str, np.ndarray]]:
  """The model names and CKA matrices written by `save_cka`.

  Args:
    directory: the directory holding `cka.npz`.

  Returns:
    `(names, {"linear": [M, M], "debiased": [M, M]})`.
  """
  with np.load(Path(directory) / "cka.npz") as z:
    return [str(n) for n in z["names"]], {k: z[k] for k in ("linear", "debiased")}
