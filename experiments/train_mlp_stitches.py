"""Train MLP stitches for every ordered pair of models of one dataset, all pairs per jit.

    .venv/bin/python experiments/train_mlp_stitches.py --dataset=wordnet \
        --models=all-MiniLM-L6-v2,paraphrase-MiniLM-L3-v2,wordllama --depths=0,1,2 \
        --objective=mse --steps=2000 --out=checkpoints/mlp_wordnet

Reads the store's corpus rows (train split to fit, val split to validate), trains one
all-pairs run per depth (:func:`lead_jax.stitch.mlp_checkpoint.fit`, resumable), and
writes

    <out>/mlp/d{depth}_{objective}/…   Orbax checkpoints (state + meta) and curves.parquet|csv
    <out>/mlp_results.parquet|csv     val metrics per pair in the shared results schema
                                      (method mlp_d{depth}_{objective}, plus train_mean / zero
                                      controls computed with the same metric function)
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from absl import app, flags, logging

from lead_jax import distributed, store
from lead_jax.eval import metrics
from lead_jax.similarity import gram
from lead_jax.similarity.cka import CONTROL_NAME
from lead_jax.stitch import io as stitch_io
from lead_jax.stitch import mlp, mlp_checkpoint

FLAGS = flags.FLAGS
flags.DEFINE_string("store", "checkpoints/store", "Embedding store root.")
flags.DEFINE_string("dataset", "wordnet", "Dataset in the store.")
flags.DEFINE_list("models", None, "Models (default: every complete model on the train split).")
flags.DEFINE_string("kind", "corpus", "Rows to stitch: corpus or query.")
flags.DEFINE_list("depths", ["0", "1", "2"], "Depths (nonlinearities) to train, one run each.")
flags.DEFINE_enum("objective", "mse", list(mlp.OBJECTIVES), "Training objective.")
flags.DEFINE_integer("steps", 2000, "Optimisation steps per pair.")
flags.DEFINE_string("out", "checkpoints/default", "Run directory.")
flags.DEFINE_integer("width", None, "Hidden width (default max(d_in, d_out)).")
flags.DEFINE_enum("activation", "gelu", list(mlp.ACTIVATIONS), "Nonlinearity.")
flags.DEFINE_bool("residual", False, "Residual connections on hidden→hidden layers.")
flags.DEFINE_bool("layer_norm", False, "LayerNorm before each nonlinearity.")
flags.DEFINE_float("temperature", 0.05, "InfoNCE temperature (initial value when learned).")
flags.DEFINE_bool("learn_temperature", True, "Learn the InfoNCE temperature.")
flags.DEFINE_integer("batch_size", 256, "Minibatch rows.")
flags.DEFINE_float("lr", 1e-3, "Peak learning rate.")
flags.DEFINE_float("end_lr_ratio", 0.01, "Final lr / peak lr (cosine decay).")
flags.DEFINE_integer("warmup_steps", 100, "Linear warmup steps.")
flags.DEFINE_float("weight_decay", 1e-4, "AdamW weight decay (weight matrices only).")
flags.DEFINE_float("grad_clip", 0.0, "Per-pair global-norm gradient clip (0 = off).")
flags.DEFINE_integer("eval_every", 100, "Validate (and check early stopping) every k steps.")
flags.DEFINE_integer(
    "patience", 5, "Evaluations without improvement before a pair stops (0 = never)."
)
flags.DEFINE_integer("save_every", 500, "Checkpoint every k steps (rounded to eval boundaries).")
flags.DEFINE_integer("seed", 0, "Seed (init and minibatches, per pair).")
flags.DEFINE_enum("layout", "group", list(mlp.LAYOUTS), "Pair layout (group = vmapped by shape).")
flags.DEFINE_integer(
    "control_dim", 0, "Add a seeded Gaussian source of this dim as a control model (0 = off)."
)


def controls_table(val_xs, names, dataset, train_xs) -> pd.DataFrame:
  """train_mean (ŷ = μ_B) and zero (ŷ = 0) per target, via metrics.regression_metrics."""
  reg = jax.jit(metrics.regression_metrics)
  rows = []
  for t, (yv, ytr) in enumerate(zip(val_xs, train_xs)):
    yv = jnp.asarray(yv)
    for method, pred in (
        ("train_mean", jnp.broadcast_to(jnp.mean(jnp.asarray(ytr), 0), yv.shape)),
        ("zero", jnp.zeros_like(yv)),
    ):
      m = reg(yv, pred)
      if method == "zero":
        m["cos"] = jnp.nan  # cos(0, y) undefined (as closed form)
      for metric, v in m.items():
        rows.append(
            {
                "dataset": dataset,
                "source": method,
                "target": names[t],
                "source_dim": 0,
                "target_dim": int(yv.shape[1]),
                "method": method,
                "lam": np.nan,
                "fold": "val",
                "metric": metric,
                "value": float(v),
                "chosen": False,
            }
        )
  return pd.DataFrame(rows, columns=["dataset", *metrics.TABLE_COLUMNS])


def run(out: str) -> pd.DataFrame:
  models = FLAGS.models or store.list_models(FLAGS.store, FLAGS.dataset, "train", FLAGS.kind)
  if len(models) < 2:
    raise ValueError(
        f"need ≥ 2 models in {FLAGS.store}/{FLAGS.dataset}/train/{FLAGS.kind}, got {models}"
    )
  train = [store.read_array(FLAGS.store, FLAGS.dataset, "train", FLAGS.kind, m) for m in models]
  val = [store.read_array(FLAGS.store, FLAGS.dataset, "val", FLAGS.kind, m) for m in models]
  names = list(models)
  pairs = None
  if FLAGS.control_dim:
    ntr, nv = len(train[0]), len(val[0])
    g = np.asarray(gram.gaussian_control(ntr + nv, FLAGS.control_dim, FLAGS.seed, jnp.float32))
    train.append(g[:ntr])
    val.append(g[ntr:])
    names.append(CONTROL_NAME)
    m = len(names)
    pairs = [(s, t) for s in range(m) for t in range(m - 1) if s != t]  # control is a source only
  logging.info("models %s, train %d rows, val %d rows", names, len(train[0]), len(val[0]))
  tcfg = mlp.TrainConfig(
      steps=FLAGS.steps,
      batch_size=FLAGS.batch_size,
      lr=FLAGS.lr,
      end_lr_ratio=FLAGS.end_lr_ratio,
      warmup_steps=min(FLAGS.warmup_steps, FLAGS.steps - 1),
      weight_decay=FLAGS.weight_decay,
      grad_clip=FLAGS.grad_clip,
      eval_every=FLAGS.eval_every,
      patience=FLAGS.patience,
      seed=FLAGS.seed,
  )
  tables = [controls_table(val[: len(models)], names, FLAGS.dataset, train[: len(models)])]
  for depth in [int(d) for d in FLAGS.depths]:
    cfg = mlp.StitchConfig(
        depth=depth,
        width=FLAGS.width,
        activation=FLAGS.activation,
        residual=FLAGS.residual,
        layer_norm=FLAGS.layer_norm,
        objective=FLAGS.objective,
        temperature=FLAGS.temperature,
        learn_temperature=FLAGS.learn_temperature,
    )
    plan = mlp.make_plan([x.shape[1] for x in train], cfg, pairs, FLAGS.layout)
    tr, va = mlp.stack_data(train, plan), mlp.stack_data(val, plan)
    run_dir = os.path.join(out, "mlp", f"d{depth}_{FLAGS.objective}")
    state = mlp_checkpoint.fit(
        run_dir,
        plan,
        tr,
        va,
        cfg,
        tcfg,
        names,
        save_every=FLAGS.save_every,
        extra_meta={"dataset": FLAGS.dataset, "store": FLAGS.store, "kind": FLAGS.kind},
        mesh=distributed.engine_mesh(),
    )
    tab = mlp.results_to_table(state, plan, va, cfg, names, dataset=FLAGS.dataset)
    tables.append(tab)
    mse = tab[tab.metric == "mse"]
    logging.info(
        "%s: val MSE per pair mean %.4g (min %.4g, max %.4g)",
        cfg.method,
        mse.value.mean(),
        mse.value.min(),
        mse.value.max(),
    )
  df = pd.concat(tables, ignore_index=True)
  pq, csv = stitch_io.save_table(df, out, "mlp_results")
  print(f"wrote {pq} and {csv} ({len(df)} rows)")
  return df


def main(argv):
  del argv
  distributed.initialize_from_flags()
  df = run(FLAGS.out)
  piv = df[df.metric.isin(["mse", "r2", "cos"])].pivot_table(
      index="method", columns="metric", values="value"
  )
  print(piv.to_string())


if __name__ == "__main__":
  app.run(main)
