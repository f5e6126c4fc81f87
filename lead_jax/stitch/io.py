"""Writing results: long tables (parquet + CSV), CKA matrices, chosen stitches (Orbax).

Every file is written to a temporary name and renamed, so a half-written file is never
taken as done.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lead_jax.eval import metrics


def _atomic(path: Path, write) -> None:
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  write(tmp)
  os.replace(tmp, path)


def save_table(df: pd.DataFrame, run_dir: str | os.PathLike, stem: str) -> tuple[Path, Path]:
  """Write ``<run_dir>/<stem>.parquet`` and ``.csv``."""
  run_dir = Path(run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  pq, csv = run_dir / f"{stem}.parquet", run_dir / f"{stem}.csv"
  _atomic(pq, lambda p: df.to_parquet(p, index=False))
  _atomic(csv, lambda p: df.to_csv(p, index=False))
  return pq, csv


def save_cka(
    cka: dict, names: Sequence[str], run_dir: str | os.PathLike, dataset: str | None = None
) -> None:
  """CKA matrices as ``cka.npz`` (+ names) and a long ``cka`` table."""
  run_dir = Path(run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  arrays = {k: np.asarray(cka[k]) for k in ("linear", "debiased")}
  _atomic(run_dir / "cka.npz", lambda p: np.savez(open(p, "wb"), names=np.asarray(names), **arrays))
  save_table(metrics.cka_to_table(cka, names, dataset), run_dir, "cka")


def chosen_stitches(results: dict, names: Sequence[str] | None = None) -> tuple[dict, list[dict]]:
  """Unpack the grouped stitches of ``fit_all_pairs`` into per-pair arrays + metadata."""
  names = metrics.model_names(results, names)
  meta = results["meta"]
  lam = np.asarray(results["chosen"]["lambda"])
  tree, info = {}, []
  for blk, srcs, tgts in zip(results["stitches"], meta["stitch_sources"], meta["stitch_targets"]):
    w, b = np.asarray(blk["W"]), np.asarray(blk["b"])
    for i, s in enumerate(srcs):
      for j, t in enumerate(tgts):
        if s == t:
          continue
        key = f"pair_{s:03d}_{t:03d}"
        tree[key] = {"W": w[i, j], "b": b[i, j], "lam": np.asarray(lam[s, t])}
        info.append(
            {
                "key": key,
                "source": names[s],
                "target": names[t],
                "source_index": int(s),
                "target_index": int(t),
                "source_dim": int(w.shape[2]),
                "target_dim": int(w.shape[3]),
                "lam": float(lam[s, t]),
            }
        )
  return tree, info


def save_stitches(
    results: dict, run_dir: str | os.PathLike, names: Sequence[str] | None = None
) -> Path:
  """Orbax checkpoint ``<run_dir>/stitches`` of {pair_SSS_TTT: {W, b, lam}} + stitches.json."""
  import orbax.checkpoint as ocp

  run_dir = Path(run_dir).absolute()
  run_dir.mkdir(parents=True, exist_ok=True)
  tree, info = chosen_stitches(results, names)
  path = run_dir / "stitches"
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, tree, force=True)
  ckptr.wait_until_finished()
  _atomic(run_dir / "stitches.json", lambda p: p.write_text(json.dumps(info, indent=1)))
  return path


def load_stitches(run_dir: str | os.PathLike) -> tuple[dict, list[dict]]:
  import orbax.checkpoint as ocp

  run_dir = Path(run_dir).absolute()
  tree = ocp.StandardCheckpointer().restore(run_dir / "stitches")
  info = json.loads((run_dir / "stitches.json").read_text())
  return tree, info
