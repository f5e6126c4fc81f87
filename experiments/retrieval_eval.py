"""Native, stitched and overlap retrieval tables for every pair of models in a store.

    .venv/bin/python experiments/retrieval_eval.py --dataset=wordnet --out=checkpoints/default

Reads the `--split` (default val) corpus and query arrays of every model, rebuilds the
rows with lead_jax.data to learn which document each corpus row (chunk) belongs to
(the rebuilt rows must hash to the store's rows_digest: pass the --max_docs, --n_train,
--n_val, --seed that experiments/embed.py used), and writes under `<out>/retrieval/`:

  native.parquet|csv      one row per model: nDCG@10, Recall@{1,10,100}, MRR@10, plus the
                          random-ranking row (every document tied: the chance level)
  overlap.parquet|csv     one row per unordered model pair: Jaccard@k and RankSim@k of the
                          native top-k documents (--overlap_k), mutual-kNN@k of the corpus
                          rows (--knn_k) and its chance level k/(n−1)
  stitched.parquet|csv    one row per (source, target, method): the corpus embedded by the
                          source, mapped by a saved stitch into the target's space, queried
                          with the target's own queries; its metrics, the target's native
                          metrics, retention = stitched/native, overlap with the target's
                          native ranking, translation top-1 / mean rank / mean cosine, and
                          the stitch results (stitch_<metric>, fold val, chosen λ) joined on
                          (source, target, method).  Controls: source "train_mean" (method
                          train_mean: every row → the target's train mean, so every
                          document ties; reported as the random-ranking expectation) and
                          source "gaussian_control" (seeded Gaussian rows through the saved
                          control stitch, when the checkpoint has one).
  translated.parquet|csv  arrays written by experiments/translate_store.py for this split:
                          their retrieval and retention next to the stitched row they came from
  run.json

Stitches are every checkpoint under `<out>` (closed_form/ and mlp/*/) unless --stitches.
Retrieval is over chunks; a document scores its best chunk (see lead_jax/eval/retrieval.py).
"""

import json
import pathlib
import time

import numpy as np
import pandas as pd
from absl import app, flags, logging

from lead_jax import data, distributed, store
from lead_jax.data import chunking
from lead_jax.eval import retrieval as R
from lead_jax.eval import saved_stitches
from lead_jax.similarity import gram

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "dataset", "wordnet", "'wordnet' (shipped) or the BEIR directory that was embedded."
)
flags.DEFINE_string("store", "checkpoints/store", "Store root.")
flags.DEFINE_string(
    "out",
    "checkpoints/default",
    "Run directory: stitches are read from it, tables go to <out>/retrieval.",
)
flags.DEFINE_list(
    "models", None, "Models (default: every complete, non-translated array of the split)."
)
flags.DEFINE_list(
    "stitches", None, "Stitch checkpoint directories (default: discovered under --out)."
)
flags.DEFINE_string("split", "val", "Split to retrieve on.")
flags.DEFINE_integer(
    "max_docs", None, "embed.py's --max_docs (default: the store meta's dataset_cap)."
)
flags.DEFINE_integer(
    "n_train", None, "embed.py's --n_train (default: the store meta's dataset_cap)."
)
flags.DEFINE_integer("n_val", None, "embed.py's --n_val (default: the store meta's dataset_cap).")
flags.DEFINE_integer("seed", None, "embed.py's --seed (default: the store meta's dataset_seed).")
flags.DEFINE_string(
    "qrels_split", None, "qrels/<split>.tsv (default: the store meta's qrels_split)."
)
flags.DEFINE_list("overlap_k", ["10", "100"], "k of Jaccard@k / RankSim@k.")
flags.DEFINE_integer("knn_k", 10, "k of mutual-kNN.")
flags.DEFINE_integer(
    "control_seed",
    None,
    "Seed of the Gaussian control rows (default: the stitch run's seed, else 0).",
)
flags.DEFINE_integer("block", 4096, "Corpus rows per search block.")
flags.DEFINE_integer("query_block", 1024, "Queries per search call.")


def rebuild_rows(dataset, meta, *, split, max_docs, n_train, n_val, seed, qrels_split):
  """(corpus Rows, query Rows, Split) as embed.py built them, checked against the store digests."""
  cap = meta.get("dataset_cap") or {}
  seed = meta.get("dataset_seed", 0) if seed is None else seed
  max_docs = cap.get("max_docs") if max_docs is None else max_docs
  n_train = cap.get("n_train", 20_000) if n_train is None else n_train
  n_val = cap.get("n_val", 5_000) if n_val is None else n_val
  ds = data.load(dataset, qrels_split or meta.get("qrels_split"))
  sp = data.split_dataset(ds, n_train=n_train, n_val=n_val, max_docs=max_docs, seed=seed)[split]
  ck = meta.get("chunker") or {}
  cfg = chunking.ChunkConfig(**{k: ck[k] for k in ("window", "overlap", "tokenizer") if k in ck})
  corpus = data.build_rows(ds, sp, "corpus", cfg)
  queries = data.build_rows(ds, sp, "query", cfg)
  return ds, corpus, queries, sp, (max_docs, n_train, n_val, seed)


def _check_digest(rows, meta, what, flags_used):
  if rows.digest != meta.get("rows_digest"):
    raise store.StoreError(
        f"{what}: rebuilt {rows.kind} rows ({len(rows)} rows, digest {rows.digest[:12]}…) differ from the "
        f"store's ({meta.get('n_rows')} rows, digest {str(meta.get('rows_digest'))[:12]}…); rebuilt with "
        f"{flags_used}: pass the --max_docs/--n_train/--n_val/--seed that experiments/embed.py used"
    )


def run(
    *,
    dataset,
    store_root,
    out_dir,
    models=None,
    stitch_dirs=None,
    split="val",
    max_docs=None,
    n_train=None,
    n_val=None,
    seed=None,
    qrels_split=None,
    overlap_k=(10, 100),
    knn_k=10,
    control_seed=None,
    block=4096,
    query_block=1024,
) -> dict:
  t0 = time.time()
  name = data.beir.resolve(dataset)[0]
  out_dir = pathlib.Path(out_dir)
  if not models:
    models = store.list_models(store_root, name, split, "corpus")
  models = list(models)
  if not models:
    raise store.StoreError(
        f"{pathlib.Path(store_root) / name / split / 'corpus'}: no complete arrays"
    )
  cmeta = store.read_meta(store_root, name, split, "corpus", models[0])
  qmeta = store.read_meta(store_root, name, split, "query", models[0])
  ds, crows, qrows, sp, (max_docs, n_train, n_val, seed) = rebuild_rows(
      dataset,
      cmeta,
      split=split,
      max_docs=max_docs,
      n_train=n_train,
      n_val=n_val,
      seed=seed,
      qrels_split=qrels_split,
  )
  used = f"max_docs={max_docs}, n_train={n_train}, n_val={n_val}, seed={seed}"
  _check_digest(crows, cmeta, store.array_dir(store_root, name, split, "corpus", models[0]), used)
  _check_digest(qrows, qmeta, store.array_dir(store_root, name, split, "query", models[0]), used)
  doc_of_row, doc_ids = R.doc_index(crows.ids)
  qrels = R.qrels_from_dict(sp.qrels, qrows.ids, doc_ids)
  scored = R.scored_queries(qrels)
  _, corp = store.read_models(store_root, name, split, "corpus", models)
  _, qrys = store.read_models(store_root, name, split, "query", models)
  C = dict(zip(models, corp))
  Q = dict(zip(models, qrys))
  dims = {m: int(C[m].shape[1]) for m in models}
  k_ret = min(max(R.RECALL_KS), len(doc_ids))
  logging.info(
      "%s/%s: %d models, %d chunks of %d docs, %d queries (%d scored)",
      name,
      split,
      len(models),
      len(crows),
      len(doc_ids),
      len(qrows),
      int(scored.sum()),
  )

  def retrieve(corpus_nd, queries_qd):
    corpus = R.prepare_corpus(corpus_nd, doc_of_row, block=block)
    return R.evaluate(queries_qd, corpus, qrels, k=k_ret, query_block=query_block)

  # ---- native
  native, ranked = {}, {}
  rows = []
  for m in models:
    native[m], ranked[m] = retrieve(C[m], Q[m])
    rows.append({"dataset": name, "split": split, "model": m, "dim": dims[m], **native[m]})
  chance = R.mean_metrics(R.random_ranking_metrics(qrels), qrels)
  rows.append({"dataset": name, "split": split, "model": "random_ranking", "dim": 0, **chance})
  counts = {
      "n_chunks": len(crows),
      "n_docs": len(doc_ids),
      "n_queries": len(qrows),
      "n_scored_queries": int(scored.sum()),
  }
  native_df = pd.DataFrame(rows).assign(**counts)

  # ---- overlap + mutual kNN
  okeys = [int(k) for k in overlap_k]
  knn_k = min(knn_k, len(crows) - 1)
  knns = {m: R.knn(C[m], knn_k, block=block, query_block=query_block) for m in models}
  rows = []
  for i, a in enumerate(models):
    for b in models[i + 1 :]:
      rows.append(
          {
              "dataset": name,
              "split": split,
              "model_a": a,
              "model_b": b,
              **R.overlap(ranked[a], ranked[b], [k for k in okeys if k <= k_ret]),
              f"mutual_knn@{knn_k}": R.mutual_knn(knns[a], knns[b]),
              "mutual_knn_chance": knn_k / (len(crows) - 1),
          }
      )
  overlap_df = pd.DataFrame(rows)

  # ---- stitched
  stitch_dirs = (
      [pathlib.Path(p) for p in stitch_dirs] if stitch_dirs else saved_stitches.discover(out_dir)
  )
  if not stitch_dirs:
    logging.warning(
        "no stitch checkpoints under %s (closed_form/, mlp/*/): stitched table is controls only",
        out_dir,
    )
  rows = []
  by_key = {}
  ntr_rows = None

  def stitched_row(src, tgt, method, pred, st=None):
    met, ids = retrieve(pred, Q[tgt])
    row = {
        "dataset": name,
        "split": split,
        "source": src,
        "target": tgt,
        "source_dim": st.source_dim if st else 0,
        "target_dim": dims[tgt],
        "method": method,
        "lam": st.lam if st and st.lam is not None else np.nan,
        "depth": st.depth if st and st.depth is not None else np.nan,
        "checkpoint": st.checkpoint if st else "",
        "stitch_digest": st.digest if st else "",
    }
    row.update(met)
    row.update({f"native_{k}": v for k, v in native[tgt].items()})
    row.update({f"retention_{k}": v for k, v in R.retention(met, native[tgt]).items()})
    row.update({f"{k}_vs_native": v for k, v in R.overlap(ids, ranked[tgt], [10], scored).items()})
    row.update({f"translation_{k}": v for k, v in R.translation_metrics(pred, C[tgt]).items()})
    return row

  for d in stitch_dirs:
    try:
      stitches = saved_stitches.load(d)
    except saved_stitches.StitchError as e:
      logging.warning("skipping %s", e)
      continue
    run_json = d / "run.json"
    cseed = (
        control_seed
        if control_seed is not None
        else (json.loads(run_json.read_text()).get("seed", 0) if run_json.exists() else 0)
    )
    for st in stitches:
      if st.target not in C:
        continue
      if st.source in C:
        saved_stitches.check_fits(
            st, st.source, dims[st.source], f"{name}/{split}/corpus/{st.source}"
        )
        pred = st.apply(C[st.source])
      elif st.source == gram_control_name():
        # The closed-form / MLP controls draw train rows then val rows from one seeded stream.
        if ntr_rows is None:
          ntr_rows = store.read_meta(store_root, name, "train", "corpus", st.target)["n_rows"]
        g = np.asarray(
            gram.gaussian_control(ntr_rows + len(crows), st.source_dim, cseed, np.float32)
        )
        pred = st.apply(g[ntr_rows:])
      else:
        continue
      row = stitched_row(st.source, st.target, st.method, pred, st)
      rows.append(row)
      by_key[(st.source, st.target, st.method, st.digest)] = row
      logging.info(
          "%s %s→%s: nDCG@10 %.4f (retention %.3f)",
          st.method,
          st.source,
          st.target,
          row["ndcg@10"],
          row["retention_ndcg@10"],
      )
  # mean estimator: every corpus row → the target's train mean; every document ties.
  for tgt in models:
    mu = store.read_array(store_root, name, "train", "corpus", tgt).mean(0)
    pred = np.broadcast_to(mu, C[tgt].shape)
    row = {
        "dataset": name,
        "split": split,
        "source": "train_mean",
        "target": tgt,
        "source_dim": 0,
        "target_dim": dims[tgt],
        "method": "train_mean",
        "lam": np.nan,
        "depth": np.nan,
        "checkpoint": "",
        "stitch_digest": "",
        **chance,
        **{f"native_{k}": v for k, v in native[tgt].items()},
        **{f"retention_{k}": v for k, v in R.retention(chance, native[tgt]).items()},
        "jaccard@10_vs_native": np.nan,
        "ranksim@10_vs_native": np.nan,
        **{f"translation_{k}": v for k, v in R.translation_metrics(pred, C[tgt]).items()},
    }
    rows.append(row)
  stitched_df = pd.DataFrame(rows)
  results = []
  for p in (out_dir / "closed_form" / "results.parquet", out_dir / "mlp_results.parquet"):
    if p.exists():
      results.append(pd.read_parquet(p))
  stitched_df = R.join_stitch_results(
      stitched_df, pd.concat(results, ignore_index=True) if results else None
  )

  # ---- translated arrays (experiments/translate_store.py) in this split
  rows = []
  for m in store.list_models(store_root, name, split, "corpus", include_translated=True):
    meta = store.read_meta(store_root, name, split, "corpus", m)
    if meta.get("source") != "translated" or meta.get("target_model") not in Q:
      continue
    tgt = meta["target_model"]
    x = store.read_array(store_root, name, split, "corpus", m)
    met, _ = retrieve(x, Q[tgt])
    ret = R.retention(met, native[tgt])
    ref = by_key.get(
        (meta.get("source_model"), tgt, meta.get("stitch_method"), meta.get("stitch_digest"))
    )
    rows.append(
        {
            "dataset": name,
            "split": split,
            "array": m,
            "source": meta.get("source_model"),
            "target": tgt,
            "method": meta.get("stitch_method"),
            "checkpoint": meta.get("stitch_checkpoint"),
            **met,
            **{f"retention_{k}": v for k, v in ret.items()},
            "stitched_retention_ndcg@10": ref["retention_ndcg@10"] if ref else np.nan,
            "abs_diff_retention_ndcg@10": abs(ret["ndcg@10"] - ref["retention_ndcg@10"])
            if ref
            else np.nan,
        }
    )
  translated_df = pd.DataFrame(rows)

  rdir = out_dir / "retrieval"
  from lead_jax.stitch import io as stitch_io

  for stem, df in (
      ("native", native_df),
      ("overlap", overlap_df),
      ("stitched", stitched_df),
      ("translated", translated_df),
  ):
    if len(df):
      stitch_io.save_table(df, rdir, stem)
  info = {
      "dataset": name,
      "split": split,
      "models": models,
      "stitches": [str(p) for p in stitch_dirs],
      "max_docs": max_docs,
      "n_train": n_train,
      "n_val": n_val,
      "seed": seed,
      **counts,
      "overlap_k": okeys,
      "knn_k": knn_k,
      "seconds": round(time.time() - t0, 2),
  }
  (rdir / "run.json").write_text(json.dumps(info, indent=1))
  summary = {
      "out": str(rdir),
      **counts,
      "native_ndcg@10": {m: round(native[m]["ndcg@10"], 4) for m in models},
      "random_ranking_ndcg@10": round(chance["ndcg@10"], 4),
      "retention_ndcg@10": {
          f"{m}:{a}->{b}": round(float(v), 4)
          for m, a, b, v in zip(
              stitched_df["method"],
              stitched_df["source"],
              stitched_df["target"],
              stitched_df["retention_ndcg@10"],
          )
      }
      if len(stitched_df)
      else {},
      "translated": translated_df[
          ["array", "ndcg@10", "retention_ndcg@10", "stitched_retention_ndcg@10"]
      ].to_dict("records")
      if len(translated_df)
      else [],
      "seconds": info["seconds"],
  }
  return summary


def gram_control_name():
  from lead_jax.similarity.cka import CONTROL_NAME

  return CONTROL_NAME


def main(argv):
  del argv
  distributed.initialize_from_flags()
  res = run(
      dataset=FLAGS.dataset,
      store_root=FLAGS.store,
      out_dir=FLAGS.out,
      models=FLAGS.models,
      stitch_dirs=FLAGS.stitches,
      split=FLAGS.split,
      max_docs=FLAGS.max_docs,
      n_train=FLAGS.n_train,
      n_val=FLAGS.n_val,
      seed=FLAGS.seed,
      qrels_split=FLAGS.qrels_split,
      overlap_k=[int(k) for k in FLAGS.overlap_k],
      knn_k=FLAGS.knn_k,
      control_seed=FLAGS.control_seed,
      block=FLAGS.block,
      query_block=FLAGS.query_block,
  )
  print(json.dumps(res))


if __name__ == "__main__":
  app.run(main)
