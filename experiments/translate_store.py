"""Migrates a store array into another model's space with a saved stitch: no re-embedding.

    .venv/bin/python experiments/translate_store.py --dataset=wordnet --split=val --kind=corpus \
        --source=all-MiniLM-L6-v2 --target=all-mpnet-base-v2 --stitch=checkpoints/dev/closed_form

Reads `<store>/<dataset>/<split>/<kind>/<source>` block by block, applies the stitch
source→target found in `--stitch` (a closed-form `closed_form/` directory or an MLP
`mlp/d{k}_{objective}/` directory) and writes the new array `<name>` (default
`<source>__to__<target>`) through the resumable store writer: a killed run resumes at
the last committed block and ends with the same bytes.  The array is row-aligned with
the source (same rows_digest), so it can be searched with the target's own queries.

Its meta.json records provenance: source model and weights digest, stitch kind,
method, checkpoint directory, pair key, parameter digest (the array's `weights_digest`,
so a resume with a different stitch is refused), and λ (closed form) or depth/objective
(MLP).  A stitch whose source model or dim does not match the array is refused.
"""

import json
import pathlib
import time

import numpy as np
from absl import app, flags, logging

from lead_jax import distributed, store
from lead_jax.eval import saved_stitches

FLAGS = flags.FLAGS
flags.DEFINE_string("store", "checkpoints/store", "Store root to read from.")
flags.DEFINE_string("out_store", None, "Store root to write to (default: --store).")
flags.DEFINE_string("dataset", "wordnet", "Dataset name in the store.")
flags.DEFINE_string("split", "val", "Split.")
flags.DEFINE_string("kind", "corpus", "Row kind: corpus or query.")
flags.DEFINE_string("source", None, "Model whose array is translated.", required=True)
flags.DEFINE_string("target", None, "Target model: picks the stitch source→target.", required=True)
flags.DEFINE_string(
    "stitch", None, "Stitch checkpoint directory (closed_form/ or mlp/d{k}_{obj}/).", required=True
)
flags.DEFINE_string("name", None, "Name of the new array (default <source>__to__<target>).")
flags.DEFINE_integer("block_rows", 1024, "Rows per read/apply/commit block.")
flags.DEFINE_enum("store_dtype", "float32", store.DTYPES, "On-disk dtype of the new array.")
flags.DEFINE_bool("normalize", False, "L2-normalise the translated rows.")
flags.DEFINE_bool("overwrite", False, "Replace an existing array written with a different stitch.")


def _open_source(root, dataset, split, kind, model):
  """(meta, tensorstore handle) of a complete source array, or a StoreError naming it."""
  import tensorstore as ts

  path = store.array_dir(root, dataset, split, kind, model)
  meta = store.read_meta(root, dataset, split, kind, model)
  prog_path = path / "progress.json"
  committed = json.loads(prog_path.read_text())["committed_rows"] if prog_path.exists() else 0
  if not meta.get("complete") or committed != meta["n_rows"]:
    raise store.StoreError(
        f"{path}: incomplete ({committed}/{meta['n_rows']} rows committed); "
        "finish embedding it before translating"
    )
  arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}).result()
  if tuple(arr.shape) != (meta["n_rows"], meta["dim"]):
    raise store.StoreError(
        f"{path}: shape {tuple(arr.shape)} != meta [{meta['n_rows']}, {meta['dim']}]"
    )
  return path, meta, arr


def run(
    *,
    store_root,
    dataset,
    split,
    kind,
    source,
    target,
    stitch,
    name=None,
    out_store=None,
    block_rows=1024,
    store_dtype="float32",
    normalize=False,
    overwrite=False,
    stop_after_blocks=None,
) -> dict:
  """Translates one array; returns a summary.  `stop_after_blocks` (tests) stops early, unfinished."""
  out_store = out_store or store_root
  dataset = pathlib.Path(dataset).name
  path, meta, arr = _open_source(store_root, dataset, split, kind, source)
  stitches = saved_stitches.load(stitch)
  st = saved_stitches.find(stitches, source, target, where=str(stitch))
  saved_stitches.check_fits(
      st, meta["model"], int(meta["dim"]), str(path), meta.get("weights_digest")
  )
  name = name or f"{source}__to__{target}"
  if name in (source, target):
    raise ValueError(f"--name {name!r} would overwrite a model's own array")
  n = int(meta["n_rows"])
  wmeta = {
      "weights_digest": st.digest,
      "rows_digest": meta.get("rows_digest"),
      "pooling": meta.get("pooling"),
      "normalize": bool(normalize),
      "prefix": meta.get("prefix"),
      "chunker": meta.get("chunker"),
      "source": "translated",
      "dataset_seed": meta.get("dataset_seed"),
      "qrels_split": meta.get("qrels_split"),
      "source_weights_digest": meta.get("weights_digest"),
      "source_array": str(path.absolute()),
      **st.provenance(),
  }
  w = store.open_writer(
      out_store,
      dataset,
      split,
      kind,
      name,
      n_rows=n,
      dim=st.target_dim,
      meta=wmeta,
      dtype=store_dtype,
      block_rows=block_rows,
      overwrite=overwrite,
  )
  t0 = time.time()
  start0 = w.committed_rows
  done = 0
  for start in range(w.committed_rows, n, w.block_rows):
    if stop_after_blocks is not None and done >= stop_after_blocks:
      return {"array": str(w.path), "committed_rows": w.committed_rows, "complete": False}
    stop = min(start + w.block_rows, n)
    x = np.asarray(arr[start:stop].read().result(), np.float32)
    store.check_finite(x, str(path), start)
    y = st.apply(x)
    if normalize:
      y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    w.write(start, y)
    done += 1
  w.finish({"translate_seconds": round(time.time() - t0, 3)})
  logging.info("%s: %d rows (%d resumed) in %.2fs", w.path, n, start0, time.time() - t0)
  return {
      "array": str(w.path),
      "model": name,
      "rows": n,
      "resumed_from": start0,
      "dim": st.target_dim,
      "stitch": st.checkpoint,
      "method": st.method,
      "lam": st.lam,
      "depth": st.depth,
      "complete": True,
  }


def main(argv):
  del argv
  distributed.initialize_from_flags()
  res = run(
      store_root=FLAGS.store,
      dataset=FLAGS.dataset,
      split=FLAGS.split,
      kind=FLAGS.kind,
      source=FLAGS.source,
      target=FLAGS.target,
      stitch=FLAGS.stitch,
      name=FLAGS.name,
      out_store=FLAGS.out_store,
      block_rows=FLAGS.block_rows,
      store_dtype=FLAGS.store_dtype,
      normalize=FLAGS.normalize,
      overwrite=FLAGS.overwrite,
  )
  print(json.dumps(res))


if __name__ == "__main__":
  app.run(main)
