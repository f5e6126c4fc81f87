"""Closed-form stitches for every ordered pair of models: ridge λ-path, OLS, Procrustes, controls, k-fold.

    python experiments/stitch_all_pairs.py --dataset=wordnet --out=checkpoints/default

Fits on the train split's corpus rows, chooses λ per pair on the val split, and
writes under `<out>/closed_form/` (`--out` defaults to `checkpoints/default`):
  results.parquet / .csv   one row per (pair, method, λ, fold, metric): fold "val" is
                           the held-out split, folds "0".."K-1", "mean", "std" are
                           k-fold CV on train (from per-fold Grams)
  stitches/ + stitches.json  the chosen W, b, λ per pair (Orbax) and their metadata
  run.json                 models, their store metadata, flags
"""

import json
import pathlib
import time

import numpy as np
from absl import app, flags, logging

from lead_jax import distributed, store
from lead_jax.eval import results_to_table
from lead_jax.stitch import DEFAULT_LAMBDAS, cross_validate_all_pairs, fit_all_pairs, io

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "dataset", "wordnet", "Dataset name in the store (a BEIR path's directory name)."
)
flags.DEFINE_list("models", None, "Models to stitch (default: every complete array).")
flags.DEFINE_string("store", "checkpoints/store", "Store root.")
flags.DEFINE_string(
    "out", "checkpoints/default", "Run directory (outputs go to <out>/closed_form)."
)
flags.DEFINE_list("lambdas", None, "λ-path (default: 0 and 1e-4 … 1e4, 9 log-spaced).")
flags.DEFINE_integer("folds", 5, "k of k-fold CV on the train split (0: skip).")
flags.DEFINE_integer("control_dim", 768, "Width of the Gaussian control source/target (0: none).")
flags.DEFINE_integer("seed", 0, "Seed of the control and of the fold split.")
flags.DEFINE_bool("float64", False, "Compute in float64 (CPU; enables jax x64).")


def run(
    *,
    dataset,
    store_root,
    out_dir,
    models=None,
    lambdas=DEFAULT_LAMBDAS,
    folds=5,
    control_dim=768,
    seed=0,
    float64=False,
) -> dict:
  dataset = pathlib.Path(dataset).name
  names, train = store.read_models(store_root, dataset, "train", "corpus", models)
  _, val = store.read_models(store_root, dataset, "val", "corpus", names)
  dtype = "float64" if float64 else None
  out_dir = pathlib.Path(out_dir)
  logging.info(
      "stitching %d models (%d ordered pairs) on %d train / %d val rows, %d λ",
      len(names),
      len(names) * (len(names) - 1),
      train[0].shape[0],
      val[0].shape[0],
      len(lambdas),
  )
  t0 = time.time()
  mesh = distributed.engine_mesh()
  train, val = distributed.engine_inputs(train, mesh), distributed.engine_inputs(val, mesh)
  fit = distributed.gather(
      fit_all_pairs(
          train, val, lambdas, control_dim=control_dim or None, seed=seed, dtype=dtype, mesh=mesh
      )
  )
  tables = [results_to_table(fit, names, dataset)]
  logging.info("fit + val metrics: %.2fs", time.time() - t0)
  if folds:
    t1 = time.time()
    cv = distributed.gather(
        cross_validate_all_pairs(
            train,
            lambdas,
            n_folds=folds,
            fold_seed=seed,
            control_dim=control_dim or None,
            seed=seed,
            dtype=dtype,
            mesh=mesh,
        )
    )
    tables.append(results_to_table(cv, names, dataset))
    logging.info("%d-fold CV: %.2fs", folds, time.time() - t1)
  import pandas as pd

  table = pd.concat(tables, ignore_index=True)
  if not distributed.is_writer():
    return {"out": str(out_dir), "rows": len(table), "writer": False}
  io.save_table(table, out_dir, "results")
  io.save_stitches(fit, out_dir, names)
  metas = {m: store.read_meta(store_root, dataset, "train", "corpus", m) for m in names}
  run_info = {
      "dataset": dataset,
      "models": names,
      "lambdas": [float(x) for x in lambdas],
      "folds": folds,
      "control_dim": control_dim,
      "seed": seed,
      "float64": float64,
      "model_meta": {
          m: {
              k: v
              for k, v in meta.items()
              if k in ("hf_id", "weights_digest", "dim", "pooling", "normalize", "rows_digest")
          }
          for m, meta in metas.items()
      },
      "seconds": round(time.time() - t0, 2),
  }
  (out_dir / "run.json").write_text(json.dumps(run_info, indent=1))
  chosen = table[
      (table.method == "ridge") & (table.fold == "val") & (table.metric == "r2") & table.chosen
  ]
  summary = {f"{r.source}->{r.target}": round(float(r.value), 4) for r in chosen.itertuples()}
  return {"out": str(out_dir), "rows": len(table), "val_r2_at_chosen_lambda": summary}


def main(argv):
  del argv
  distributed.initialize_from_flags()
  if FLAGS.float64:
    import jax

    jax.config.update("jax_enable_x64", True)
  lambdas = np.asarray([float(x) for x in FLAGS.lambdas]) if FLAGS.lambdas else DEFAULT_LAMBDAS
  res = run(
      dataset=FLAGS.dataset,
      store_root=FLAGS.store,
      out_dir=pathlib.Path(FLAGS.out) / "closed_form",
      models=FLAGS.models,
      lambdas=lambdas,
      folds=FLAGS.folds,
      control_dim=FLAGS.control_dim,
      seed=FLAGS.seed,
      float64=FLAGS.float64,
  )
  print(json.dumps(res))


if __name__ == "__main__":
  app.run(main)
