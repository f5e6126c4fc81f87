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


def _pairs(names: Sequence[str], ordered: bool):
  m = len(names)
  return [(i, j) for i in range(m) for j in range(m) if i != j and (ordered or i < j)]


def null_to_table(null: dict, names: Sequence[str], dataset: str | None = None) -> pd.DataFrame:
  """Long table of the calibrated statistics: one row per (pair i < j, statistic).

  Args:
    null: `null.null_all_pairs` output (`observed`, `null`).
    names: the model names, in matrix order.
    dataset: a leading `dataset` column, if given.

  Returns:
    Columns (dataset,) model_a, model_b, statistic, observed, null_mean, null_sd,
    calibrated, z, p_value, permutations.
  """
  from lead_jax.similarity import null as null_lib

  rows = []
  for stat in null_lib.STATISTICS:
    obs = np.asarray(null["observed"][stat], np.float64)
    cal = null_lib.calibrate(obs, null["null"][stat])
    for i, j in _pairs(names, ordered=False):
      rows.append(
          {
              "model_a": names[i],
              "model_b": names[j],
              "statistic": stat,
              "observed": obs[i, j],
              **{k: float(v[i, j]) for k, v in cal.items()},
              "permutations": int(np.shape(null["null"][stat])[0]),
          }
      )
  df = pd.DataFrame(rows)
  if dataset is not None:
    df.insert(0, "dataset", dataset)
  return df


def measures_to_table(
    measures: dict, names: Sequence[str], dataset: str | None = None
) -> pd.DataFrame:
  """Long table of the extra measures: one row per (ordered pair, measure).

  Args:
    measures: `measures.measures_all_pairs` output.
    names: the model names, in matrix order.
    dataset: a leading `dataset` column, if given.

  Returns:
    Columns (dataset,) model_a, model_b, measure, value.
  """
  rows = [
      {"model_a": names[i], "model_b": names[j], "measure": k, "value": float(np.asarray(v)[i, j])}
      for k, v in measures.items()
      for i, j in _pairs(names, ordered=True)
  ]
  df = pd.DataFrame(rows)
  if dataset is not None:
    df.insert(0, "dataset", dataset)
  return df


def save_calibrated(
    directory: str | os.PathLike,
    names: Sequence[str],
    null: dict | None,
    measures: dict | None,
    dataset: str | None = None,
) -> None:
  """Writes `calibrated.npz` (observed, null summary, measures matrices) and the `null` and
  `measures` tables.

  Args:
    directory: the output directory.
    names: the model names, in matrix order.
    null: `null_all_pairs` output, or None.
    measures: `measures_all_pairs` output, or None.
    dataset: a dataset column for the tables, if given.
  """
  from lead_jax.similarity import null as null_lib

  directory = Path(directory)
  arrays = {"names": np.asarray(names)}
  if null is not None:
    for stat in null_lib.STATISTICS:
      arrays[f"{stat}/observed"] = np.asarray(null["observed"][stat])
      for k, v in null_lib.calibrate(null["observed"][stat], null["null"][stat]).items():
        arrays[f"{stat}/{k}"] = v
    files.save_table(null_to_table(null, names, dataset), directory, "null")
  if measures is not None:
    arrays.update({f"measure/{k}": np.asarray(v) for k, v in measures.items()})
    files.save_table(measures_to_table(measures, names, dataset), directory, "measures")
  files.atomic_write(directory / "calibrated.npz", lambda p: np.savez(open(p, "wb"), **arrays))
