"""CKA (linear and debiased) between every pair of models in the store, plus a Gaussian control.

    python experiments/similarity.py --dataset=wordnet --out=checkpoints/default

Reads `<store>/<dataset>/<split>/corpus/<model>` for every complete model (or
`--models`), writes `<out>/similarity/cka.npz` and the long table
`cka.parquet` / `cka.csv` (one row per model pair and CKA kind).
"""

import json
import pathlib
import time

from absl import app, flags, logging

from lead_jax import distributed, store
from lead_jax.similarity import cka_all_pairs
from lead_jax.stitch import io

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "dataset", "wordnet", "Dataset name in the store (a BEIR path's directory name)."
)
flags.DEFINE_list("models", None, "Models to compare (default: every complete array).")
flags.DEFINE_string("store", "checkpoints/store", "Store root.")
flags.DEFINE_string("split", "train", "Split whose corpus rows are compared.")
flags.DEFINE_string("out", "checkpoints/default", "Run directory (outputs go to <out>/similarity).")
flags.DEFINE_integer("control_dim", 768, "Width of the Gaussian control (0: none).")
flags.DEFINE_integer("seed", 0, "Seed of the Gaussian control.")
flags.DEFINE_bool("float64", False, "Compute in float64 (CPU; enables jax x64).")


def run(
    *,
    dataset,
    store_root,
    out_dir,
    models=None,
    split="train",
    control_dim=768,
    seed=0,
    float64=False,
) -> dict:
  dataset = pathlib.Path(dataset).name
  names, xs = store.read_models(store_root, dataset, split, "corpus", models)
  logging.info("CKA over %d models x %d rows (%s/%s)", len(names), xs[0].shape[0], dataset, split)
  t0 = time.time()
  mesh = distributed.engine_mesh()
  cka = cka_all_pairs(
      distributed.engine_inputs(xs, mesh),
      control_dim=control_dim or None,
      seed=seed,
      dtype="float64" if float64 else None,
      mesh=mesh,
  )
  cka = distributed.gather(cka)
  all_names = names + (["gaussian_control"] if control_dim else [])
  if distributed.is_writer():
    io.save_cka(cka, all_names, out_dir, dataset)
  logging.info("CKA done in %.2fs -> %s", time.time() - t0, out_dir)
  return {
      "models": all_names,
      "linear": [[round(float(v), 4) for v in r] for r in cka["linear"]],
      "debiased": [[round(float(v), 4) for v in r] for r in cka["debiased"]],
  }


def main(argv):
  del argv
  distributed.initialize_from_flags()
  if FLAGS.float64:
    import jax

    jax.config.update("jax_enable_x64", True)
  res = run(
      dataset=FLAGS.dataset,
      store_root=FLAGS.store,
      out_dir=pathlib.Path(FLAGS.out) / "similarity",
      models=FLAGS.models,
      split=FLAGS.split,
      control_dim=FLAGS.control_dim,
      seed=FLAGS.seed,
      float64=FLAGS.float64,
  )
  print(json.dumps(res))


if __name__ == "__main__":
  app.run(main)
