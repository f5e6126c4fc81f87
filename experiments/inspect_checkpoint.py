"""List and inspect stitch checkpoints (MLP runs and closed-form Orbax stitches); export one.

    .venv/bin/python experiments/inspect_checkpoint.py --dir=checkpoints/mlp_wordnet
    .venv/bin/python experiments/inspect_checkpoint.py --dir=checkpoints/mlp_wordnet/mlp/d2_mse --pairs
    .venv/bin/python experiments/inspect_checkpoint.py --dir=checkpoints/mlp_wordnet/mlp/d2_mse \
        --export=/tmp/stitch.safetensors --source=wordllama --target=all-MiniLM-L6-v2

A run is either an MLP run (an Orbax CheckpointManager directory written by
``lead_jax.stitch.mlp_checkpoint``: ``<step>/state``, ``<step>/meta``) or a closed-form
run (``stitches/`` + ``stitches.json`` written by ``lead_jax.stitch.io.save_stitches``).
Without --pairs / --export it lists every run under --dir with its steps.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from absl import app, flags

from lead_jax import distributed

FLAGS = flags.FLAGS
flags.DEFINE_string("dir", "checkpoints", "Checkpoint directory (searched recursively for runs).")
flags.DEFINE_bool("pairs", False, "Print each pair's config and metrics for the run(s) found.")
flags.DEFINE_integer("step", None, "Step to read (default: latest).")
flags.DEFINE_string("export", None, "Export one stitch's params to this .safetensors or .npz path.")
flags.DEFINE_string("source", None, "Source model of the stitch to export.")
flags.DEFINE_string("target", None, "Target model of the stitch to export.")


def _steps(d: Path) -> list[int]:
  return sorted(
      int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit() and (p / "meta").exists()
  )


def find_runs(root: Path) -> list[tuple[str, Path]]:
  runs = []
  for d, subdirs, files in os.walk(root):
    d = Path(d)
    if "stitches.json" in files and "stitches" in subdirs:
      runs.append(("closed_form", d))
    elif _steps(d):
      runs.append(("mlp", d))
      subdirs[:] = []
  return sorted(runs, key=lambda r: str(r[1]))


def _flatten(tree, prefix="") -> dict[str, np.ndarray]:
  out = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
  elif isinstance(tree, (list, tuple)):
    for i, v in enumerate(tree):
      out.update(_flatten(v, f"{prefix}{i}."))
  else:
    out[prefix[:-1]] = np.array(tree, copy=True)  # keeps 0-d scalars 0-d
  return out


def mlp_pairs(d: Path, step: int | None):
  """(meta, state, plan, cfg, per-pair rows)."""
  from lead_jax.stitch import mlp, mlp_checkpoint

  state, meta = mlp_checkpoint.restore_any(d, step)
  cfg = mlp.StitchConfig(**meta["stitch"])
  plan = mlp.make_plan(
      meta["dims"], cfg, [tuple(p) for p in meta["pairs"]], meta.get("layout", "group")
  )
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


def print_run(kind: str, d: Path) -> None:
  import pandas as pd

  if kind == "closed_form":
    info = json.loads((d / "stitches.json").read_text())
    print(f"{d}: closed-form stitches, {len(info)} pairs")
    if FLAGS.pairs:
      print(pd.DataFrame(info).to_string(index=False))
      for stem in ("results", "cv_results"):
        if (d / f"{stem}.parquet").exists():
          df = pd.read_parquet(d / f"{stem}.parquet")
          ch = df[df.chosen.astype(bool) & df.metric.isin(["mse", "r2", "cos"])]
          print(
              ch.pivot_table(
                  index=["source", "target", "method"], columns="metric", values="value"
              ).to_string()
          )
    return
  from lead_jax.stitch import mlp_checkpoint

  steps = _steps(d)
  meta = mlp_checkpoint.read_meta(d, steps[-1])
  print(
      f"{d}: MLP run {meta['method']}, steps {steps}, {len(meta['pairs'])} pairs, models {meta['names']}"
  )
  if FLAGS.pairs:
    meta, _, _, _, rows = mlp_pairs(d, FLAGS.step)
    print(
        "config:",
        json.dumps(
            {"stitch": meta["stitch"], "train": meta["train"], "layout": meta.get("layout")}
        ),
    )
    print(pd.DataFrame(rows).to_string(index=False))
    res = d.parent.parent / "mlp_results.parquet"
    if res.exists():
      df = pd.read_parquet(res)
      df = df[(df.method == meta["method"]) & df.metric.isin(["mse", "r2_vw", "cos"])]
      print(
          df.pivot_table(index=["source", "target"], columns="metric", values="value").to_string()
      )


def export(kind: str, d: Path, path: str) -> None:
  if kind == "closed_form":
    from lead_jax.stitch import io as stitch_io

    tree, info = stitch_io.load_stitches(d)
    match = [i for i in info if i["source"] == FLAGS.source and i["target"] == FLAGS.target]
    if not match:
      raise ValueError(
          f"{d}: no stitch {FLAGS.source} → {FLAGS.target}; pairs: "
          f"{[(i['source'], i['target']) for i in info]}"
      )
    arrays = _flatten(tree[match[0]["key"]])
  else:
    from lead_jax.stitch import mlp

    meta, state, plan, cfg, _ = mlp_pairs(d, FLAGS.step)
    names = meta["names"]
    try:
      k = plan.pairs.index((names.index(FLAGS.source), names.index(FLAGS.target)))
    except ValueError:
      raise ValueError(f"{d}: no stitch {FLAGS.source} → {FLAGS.target}; models {names}") from None
    s, t = plan.pairs[k]
    params = mlp.unpad_params(
        mlp.per_pair(state, plan, "best_params")[k], plan.dims[s], plan.dims[t], cfg
    )
    arrays = _flatten(params)
  if path.endswith(".safetensors"):
    from safetensors.numpy import save_file

    save_file(arrays, path)
  elif path.endswith(".npz"):
    np.savez(path, **arrays)
  else:
    raise ValueError(f"--export must end in .safetensors or .npz, got {path}")
  print(
      f"exported {FLAGS.source} → {FLAGS.target} from {d} to {path}: "
      + ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items())
  )


def main(argv):
  del argv
  distributed.initialize_from_flags()
  root = Path(FLAGS.dir)
  runs = find_runs(root)
  if not runs:
    raise SystemExit(f"no MLP or closed-form runs under {root}")
  if FLAGS.export:
    if len(runs) != 1:
      raise SystemExit(f"--export needs --dir to name one run; found {[str(r[1]) for r in runs]}")
    export(*runs[0], FLAGS.export)
    return
  for kind, d in runs:
    print_run(kind, d)


if __name__ == "__main__":
  app.run(main)
