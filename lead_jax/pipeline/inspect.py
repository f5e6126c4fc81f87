"""What the inspection binaries print: dataset counts, and the stitch checkpoints of a run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lead_jax import files
from lead_jax.config import StudyConfig
from lead_jax.pipeline import embed


def dataset_stats(cfg: StudyConfig) -> dict:
  """Documents, queries, qrels and chunks of `cfg.dataset`, in total and per split.

  Args:
    cfg: the study config (`dataset`, `data`).

  Returns:
    `{"dataset", "path", "qrels_split", "docs", "queries", "qrels", "chunks", "splits":
    {split: {"docs", "chunks", "queries", "qrels"}}}`.

  Raises:
    data.DataError: bad input, naming the file and line.
  """
  ds, splits, rows = embed.split_rows(cfg, ["train/corpus", "val/corpus"])
  out = {
      "dataset": ds.name,
      "path": str(ds.path),
      "qrels_split": ds.qrels_split,
      "docs": len(ds.corpus),
      "queries": len(ds.queries),
      "qrels": sum(len(v) for v in ds.qrels.values()),
      "splits": {},
  }
  for name, sp in splits.items():
    out["splits"][name] = {
        "docs": len(sp.doc_ids),
        "chunks": len(rows[name, "corpus"]),
        "queries": len(sp.query_ids),
        "qrels": sum(len(v) for v in sp.qrels.values()),
    }
  out["chunks"] = sum(s["chunks"] for s in out["splits"].values())
  return out


def mlp_steps(d: Path) -> list[int]:
  """The saved steps of an MLP checkpoint directory.

  Args:
    d: the directory.

  Returns:
    The numbered subdirectories holding a `meta` item, sorted; empty if none.
  """
  return sorted(
      int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit() and (p / "meta").exists()
  )


def find_runs(root: str | os.PathLike) -> list[tuple[str, Path]]:
  """Every stitch checkpoint under `root`: `("closed_form" | "mlp", directory)`, sorted.

  Args:
    root: the directory walked (an MLP run's own subdirectories are not entered).

  Returns:
    `(kind, directory)` pairs sorted by directory.
  """
  runs = []
  for d, subdirs, names in os.walk(root):
    d = Path(d)
    if "stitches.json" in names and "stitches" in subdirs:
      runs.append(("closed_form", d))
    elif mlp_steps(d):
      runs.append(("mlp", d))
      subdirs[:] = []
  return sorted(runs, key=lambda r: str(r[1]))


def flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
  """A nested dict/list of arrays as `{"a.0.w": array}` (0-d scalars stay 0-d).

  Args:
    tree: nested dicts, lists and tuples of array-likes.
    prefix: prepended to every key (it ends in ".").

  Returns:
    `{dotted path: numpy copy of the leaf}`.
  """
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
  if isinstance(tree, (list, tuple)):
    return {k: v for i, sub in enumerate(tree) for k, v in flatten(sub, f"{prefix}{i}.").items()}
  return {prefix[:-1]: np.array(tree, copy=True)}


def mlp_pairs(d: Path, step: int | None = None):
  """(meta, state, plan, cfg, per-pair rows) of an MLP checkpoint directory.

  Args:
    d: the MLP checkpoint directory.
    step: the saved step; None: the latest.

  Returns:
    `(meta, state, plan, StitchConfig, rows)`, a row per pair with source, target, d_in,
    d_out, best_val_loss, best_step, stopped_at, last_val_loss.
  """
  from lead_jax.stitch import mlp, mlp_checkpoint

  state, meta = mlp_checkpoint.restore_any(d, step)
  cfg = mlp.StitchConfig(**meta["stitch"])
  plan = mlp.make_plan(meta["dims"], cfg, [tuple(p) for p in meta["pairs"]])
  names = meta["names"]
  best_val = mlp.per_pair(state, plan, ("best", "val"))
  best_step = mlp.per_pair(state, plan, ("best", "step"))
  stopped = mlp.per_pair(state, plan, ("best", "stopped_at"))
  hist = mlp.per_pair(state, plan, ("history", "val"))
  rows = []
  for k, (s, t) in enumerate(plan.pairs):
    h = np.asarray(hist[k])
    rows.append(
        {
            "source": names[s],
            "target": names[t],
            "d_in": plan.dims[s],
            "d_out": plan.dims[t],
            "best_val_loss": float(best_val[k]),
            "best_step": int(best_step[k]),
            "stopped_at": int(stopped[k]),
            "last_val_loss": float(h[np.isfinite(h)][-1]) if np.isfinite(h).any() else np.nan,
        }
    )
  return meta, state, plan, cfg, rows


def describe(kind: str, d: Path, pairs: bool = False, step: int | None = None) -> str:
  """A checkpoint's summary line, and with `pairs` its per-pair config and metrics.

  Args:
    kind: `"closed_form"` or `"mlp"` (as `find_runs` gives it).
    d: the checkpoint directory.
    pairs: add the per-pair tables.
    step: the MLP step for the per-pair tables; None: the latest.

  Returns:
    The text, lines joined by newlines.
  """
  import pandas as pd

  if kind == "closed_form":
    info = files.read_json(d / "stitches.json")
    lines = [f"{d}: closed-form stitches, {len(info)} pairs"]
    res = files.read_table(d / "results.parquet")
    if pairs:
      lines.append(pd.DataFrame(info).to_string(index=False))
      if res is not None:
        ch = res[res.chosen.astype(bool) & res.metric.isin(["mse", "r2", "cos"])]
        piv = ch.pivot_table(index=["source", "target", "method"], columns="metric", values="value")
        lines.append(piv.to_string())
    return "\n".join(lines)
  from lead_jax.stitch import mlp_checkpoint

  steps = mlp_steps(d)
  meta = mlp_checkpoint.read_meta(d, steps[-1])
  lines = [
      f"{d}: MLP run {meta['method']}, steps {steps}, {len(meta['pairs'])} pairs, "
      f"models {meta['names']}"
  ]
  if pairs:
    meta, _, _, _, rows = mlp_pairs(d, step)
    lines.append(f"config: stitch {meta['stitch']}, train {meta['train']}")
    lines.append(pd.DataFrame(rows).to_string(index=False))
    res = files.read_table(d.parent.parent / "mlp_results.parquet")
    if res is not None:
      res = res[(res.method == meta["method"]) & res.metric.isin(["mse", "r2_vw", "cos"])]
      lines.append(
          res.pivot_table(index=["source", "target"], columns="metric", values="value").to_string()
      )
  return "\n".join(lines)


def export(kind: str, d: Path, path: str, source: str, target: str, step: int | None = None):
  """Writes one stitch's params to a `.safetensors` or `.npz` file.

  Args:
    kind: `"closed_form"` or `"mlp"`.
    d: the checkpoint directory.
    path: the output file, ending in `.safetensors` or `.npz`.
    source: the source model.
    target: the target model.
    step: the MLP step; None: the latest.

  Returns:
    The written arrays, `{dotted name: array}` (see `flatten`).

  Raises:
    ValueError: no such pair in the checkpoint, or an unknown file suffix.
  """
  if kind == "closed_form":
    from lead_jax.stitch import io as stitch_io

    tree, info = stitch_io.load_stitches(d)
    match = [i for i in info if i["source"] == source and i["target"] == target]
    if not match:
      have = [(i["source"], i["target"]) for i in info]
      raise ValueError(f"{d}: no stitch {source} → {target}; pairs: {have}")
    arrays = flatten(tree[match[0]["key"]])
  else:
    from lead_jax.stitch import mlp

    meta, state, plan, cfg, _ = mlp_pairs(d, step)
    names = meta["names"]
    try:
      k = plan.pairs.index((names.index(source), names.index(target)))
    except ValueError:
      raise ValueError(f"{d}: no stitch {source} → {target}; models {names}") from None
    arrays = flatten(mlp.per_pair(state, plan, "best_params")[k])
  if path.endswith(".safetensors"):
    from safetensors.numpy import save_file

    save_file(arrays, path)
  elif path.endswith(".npz"):
    np.savez(path, **arrays)
  else:
    raise ValueError(f"export path must end in .safetensors or .npz, got {path}")
  return arrays
