"""Retrieval stage: native, overlap, stitched and translated retrieval tables.

Reads the `config.retrieval.split` corpus and query arrays of every model, rebuilds the
rows from the config's data settings to learn which document each corpus row (chunk)
belongs to (they must hash to the store's `rows_digest`), and writes under `retrieval/`:

  native      one row per model: nDCG@10, Recall@{1,10,100}, MRR@10, plus the
              random-ranking row (every document tied: the chance level)
  overlap     one row per unordered model pair: Jaccard@k and RankSim@k of the native
              top-k documents, mutual-kNN@k of the corpus rows and its chance k/(n−1)
  stitched    one row per (source, target, method): the corpus embedded by the source,
              mapped by a saved stitch into the target's space, queried with the target's
              own queries; its metrics, the target's native ones, retention =
              stitched/native, overlap with the native ranking, translation top-1 / mean
              rank / mean cosine, and the stitch's own results (stitch_<metric>) joined on
              (source, target, method). Controls: source "train_mean" (every row → the
              target's train mean: every document ties, so the random-ranking
              expectation) and the Gaussian control through its saved stitch.
  translated  arrays written by the translate stage for this split: their retrieval and
              retention next to the stitched row they came from
  curve       the calibration-size curve (`config.retrieval.curve_sizes`): one row per
              (source, target, K): the ridge stitch fitted on the first K rows of a
              seeded order of the train corpus rows (`lead_jax.stitch.curve`), λ chosen
              on the val corpus rows, its val MSE and R², and this split's retrieval
              through it with its retention
  run.json

Retrieval is over chunks; a document scores its best chunk (see lead_jax/eval/retrieval.py).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from absl import logging

from lead_jax import data, files, logs, store
from lead_jax.config import StudyConfig
from lead_jax.eval import retrieval as R
from lead_jax.layout import RunLayout
from lead_jax.pipeline import _common, embed
from lead_jax.similarity import gram
from lead_jax.stitch import curve
from lead_jax.stitch import io as stitch_io


class Context:
  """One split's rows, qrels, arrays and native results, shared by every table.

  Args:
    cfg: the study config (`dataset`, `models`, `data`, `retrieval`).
    layout: the run layout (the store read).

  Raises:
    store.StoreError: the rebuilt rows do not hash to the store's `rows_digest`.
  """

  def __init__(self, cfg: StudyConfig, layout: RunLayout):
    r = cfg.retrieval
    self.cfg, self.layout, self.split = cfg, layout, r.split
    self.name = name = data.dataset_name(cfg.dataset)
    root = layout.store_root
    models = list(cfg.models)
    _, splits, rows = embed.split_rows(cfg, [f"{r.split}/corpus", f"{r.split}/query"])
    crows, qrows = rows[r.split, "corpus"], rows[r.split, "query"]
    for rw in (crows, qrows):
      meta = store.read_meta(root, name, r.split, rw.kind, models[0])
      if rw.digest != meta.get("rows_digest"):
        raise store.StoreError(
            f"{store.array_dir(root, name, r.split, rw.kind, models[0])}: rebuilt {rw.kind} rows "
            f"({len(rw)} rows, digest {rw.digest[:12]}…) differ from the store's "
            f"({meta.get('n_rows')} rows, digest {str(meta.get('rows_digest'))[:12]}…); rebuilt "
            f"with config.data = {cfg.data}: use the data settings the embed stage used"
        )
    self.n_rows = len(crows)
    self.doc_of_row, self.doc_ids = R.doc_index(crows.ids)
    self.qrels = R.qrels_from_dict(splits[r.split].qrels, qrows.ids, self.doc_ids)
    self.scored = R.scored_queries(self.qrels)
    self.C = dict(zip(models, store.read_models(root, name, r.split, "corpus", models)[1]))
    self.Q = dict(zip(models, store.read_models(root, name, r.split, "query", models)[1]))
    self.models = models
    self.dims = {m: int(self.C[m].shape[1]) for m in models}
    self.k = min(max(R.RECALL_KS), len(self.doc_ids))
    self.counts = {
        "n_chunks": len(crows),
        "n_docs": len(self.doc_ids),
        "n_queries": len(qrows),
        "n_scored_queries": int(self.scored.sum()),
    }
    logging.info("%s/%s: %d models, %s", name, r.split, len(models), self.counts)
    self.native, self.ranked = {}, {}
    for m in models:
      self.native[m], self.ranked[m] = self.retrieve(self.C[m], self.Q[m])
    self.chance = R.mean_metrics(R.random_ranking_metrics(self.qrels), self.qrels)

  def retrieve(self, corpus_nd, queries_qd):
    """(mean metrics, ranked doc ids) of `queries_qd` against a corpus of this split's rows.

    Args:
      corpus_nd: [n_rows, d] corpus rows (chunks) of this split.
      queries_qd: [n_queries, d] queries in the same space.

    Returns:
      `(metrics, ranked)`: the mean IR metrics, and the ranked doc indices [Q, k].
    """
    r = self.cfg.retrieval
    corpus = R.prepare_corpus(corpus_nd, self.doc_of_row, block=r.block)
    return R.evaluate(queries_qd, corpus, self.qrels, k=self.k, query_block=r.query_block)

  def base(self, **kw) -> dict:
    """A table row: dataset and split, then `kw`.

    Args:
      **kw: the row's other columns.

    Returns:
      `{"dataset", "split", **kw}`.
    """
    return {"dataset": self.name, "split": self.split, **kw}

  def versus_native(self, tgt: str, met: dict) -> dict:
    """The target's native metrics and the retention of `met` against them.

    Args:
      tgt: the target model.
      met: mean metrics of a run against the target's queries.

    Returns:
      `{"native_<metric>", "retention_<metric>"}`.
    """
    return {
        **{f"native_{k}": v for k, v in self.native[tgt].items()},
        **{f"retention_{k}": v for k, v in R.retention(met, self.native[tgt]).items()},
    }


def native_table(ctx: Context) -> pd.DataFrame:
  """The native table: one row per model, plus the random-ranking row.

  Args:
    ctx: the split's context.

  Returns:
    The table, with the split's counts as columns.
  """
  rows = [ctx.base(model=m, dim=ctx.dims[m], **ctx.native[m]) for m in ctx.models]
  rows.append(ctx.base(model="random_ranking", dim=0, **ctx.chance))
  return pd.DataFrame(rows).assign(**ctx.counts)


def overlap_table(ctx: Context) -> pd.DataFrame:
  """The overlap table: one row per unordered model pair.

  Args:
    ctx: the split's context.

  Returns:
    Jaccard@k and RankSim@k of the native top-k, mutual-kNN@k of the corpus rows and its
    chance k/(n−1).
  """
  r = ctx.cfg.retrieval
  knn_k = min(r.knn_k, ctx.n_rows - 1)
  ks = [k for k in r.overlap_k if k <= ctx.k]
  knns = {m: R.knn(ctx.C[m], knn_k, block=r.block, query_block=r.query_block) for m in ctx.models}
  rows = []
  for i, a in enumerate(ctx.models):
    for b in ctx.models[i + 1 :]:
      rows.append(
          ctx.base(
              model_a=a,
              model_b=b,
              **R.overlap(ctx.ranked[a], ctx.ranked[b], ks),
              **{f"mutual_knn@{knn_k}": R.mutual_knn(knns[a], knns[b])},
              mutual_knn_chance=knn_k / (ctx.n_rows - 1),
          )
      )
  return pd.DataFrame(rows)


def _stitch_inputs(ctx: Context, st: stitch_io.SavedStitch, control_seed: int):
  """The source rows a saved stitch maps for this split, or None if it is not of this run."""
  if st.target not in ctx.C:
    return None
  if st.source in ctx.C:
    where = f"{ctx.name}/{ctx.split}/corpus/{st.source}"
    stitch_io.check_fits(st, st.source, ctx.dims[st.source], where)
    return ctx.C[st.source]
  if st.source == gram.CONTROL_NAME:  # the stages draw train rows, then val rows, of one stream
    n_tr = store.read_meta(ctx.layout.store_root, ctx.name, "train", "corpus", st.target)["n_rows"]
    _, g_v = gram.control_split(n_tr, ctx.n_rows, st.source_dim, control_seed, np.float32)
    return np.asarray(g_v)
  return None


def stitched_table(ctx: Context, stitch_dirs) -> tuple[pd.DataFrame, dict]:
  """Rows per saved stitch plus the train-mean control; and the rows by stitch identity.

  Args:
    ctx: the split's context.
    stitch_dirs: stitch checkpoint directories; unreadable ones are skipped with a warning.

  Returns:
    `(table, by_key)`: the stitched table joined with the stitch results, and each stitch's
    row by `(source, target, method, digest)`.
  """
  rows, by_key = [], {}
  for d in stitch_dirs:
    try:
      stitches = stitch_io.load(d)
    except stitch_io.StitchError as e:
      logging.warning("skipping %s", e)
      continue
    run_json = files.read_json(d / "run.json", missing_ok=True) or {}
    control_seed = run_json.get("seed", ctx.cfg.control.seed)
    progress = logs.Progress(f"retrieval {d.name}", len(stitches), "stitches")
    retention = {}
    for st in stitches:
      x = _stitch_inputs(ctx, st, control_seed)
      if x is None:
        progress.update()
        continue
      pred = st.apply(x)
      met, ids = ctx.retrieve(pred, ctx.Q[st.target])
      row = ctx.base(
          source=st.source,
          target=st.target,
          source_dim=st.source_dim,
          target_dim=ctx.dims[st.target],
          method=st.method,
          lam=st.lam if st.lam is not None else np.nan,
          depth=st.depth if st.depth is not None else np.nan,
          checkpoint=st.checkpoint,
          stitch_digest=st.digest,
          **met,
          **ctx.versus_native(st.target, met),
          **{
              f"{k}_vs_native": v
              for k, v in R.overlap(ids, ctx.ranked[st.target], [10], ctx.scored).items()
          },
          **{
              f"translation_{k}": v
              for k, v in R.translation_metrics(pred, ctx.C[st.target]).items()
          },
      )
      rows.append(row)
      by_key[st.source, st.target, st.method, st.digest] = row
      kind = "control" if st.source == gram.CONTROL_NAME else "pairs"
      retention.setdefault(st.method, {}).setdefault(kind, []).append(row["retention_ndcg@10"])
      logging.info(
          "%s %s→%s: nDCG@10 %.4f (retention %.3f)",
          st.method,
          st.source,
          st.target,
          row["ndcg@10"],
          row["retention_ndcg@10"],
          extra=logs.DETAIL,
      )
      progress.update()
    for method, by in retention.items():
      r, c = by.get("pairs", []), by.get("control", [])
      logging.info(
          "%s: nDCG@10 retention %s over %d model pairs%s",
          method,
          f"mean {np.mean(r):.3f} (min {np.min(r):.3f}, max {np.max(r):.3f})" if r else "-",
          len(r),
          f"; Gaussian control mean {np.mean(c):.3f}" if c else "",
      )
  for tgt in ctx.models:  # mean estimator: every row → the target's train mean; all docs tie
    mu = store.read_array(ctx.layout.store_root, ctx.name, "train", "corpus", tgt).mean(0)
    pred = np.broadcast_to(mu, ctx.C[tgt].shape)
    rows.append(
        ctx.base(
            source="train_mean",
            target=tgt,
            source_dim=0,
            target_dim=ctx.dims[tgt],
            method="train_mean",
            lam=np.nan,
            depth=np.nan,
            checkpoint="",
            stitch_digest="",
            **ctx.chance,
            **ctx.versus_native(tgt, ctx.chance),
            **{"jaccard@10_vs_native": np.nan, "ranksim@10_vs_native": np.nan},
            **{f"translation_{k}": v for k, v in R.translation_metrics(pred, ctx.C[tgt]).items()},
        )
    )
  results = [
      t
      for t in (
          files.read_table(ctx.layout.closed_form_results),
          files.read_table(ctx.layout.mlp_results),
      )
      if t is not None
  ]
  table = R.join_stitch_results(
      pd.DataFrame(rows), pd.concat(results, ignore_index=True) if results else None
  )
  return table, by_key


def translated_table(ctx: Context, by_key: dict) -> pd.DataFrame:
  """The translated table: retrieval of the arrays the translate stage wrote for this split.

  Args:
    ctx: the split's context.
    by_key: the stitched rows by `(source, target, method, digest)`, from `stitched_table`.

  Returns:
    One row per translated array, with its retention next to the stitched row's.
  """
  root, rows = ctx.layout.store_root, []
  for m in store.list_models(root, ctx.name, ctx.split, "corpus", include_translated=True):
    meta = store.read_meta(root, ctx.name, ctx.split, "corpus", m)
    if meta.get("source") != "translated" or meta.get("target_model") not in ctx.Q:
      continue
    tgt = meta["target_model"]
    met, _ = ctx.retrieve(store.read_array(root, ctx.name, ctx.split, "corpus", m), ctx.Q[tgt])
    ret = R.retention(met, ctx.native[tgt])
    key = (meta.get("source_model"), tgt, meta.get("stitch_method"), meta.get("stitch_digest"))
    ref = by_key.get(key, {}).get("retention_ndcg@10", np.nan)
    rows.append(
        ctx.base(
            array=m,
            source=meta.get("source_model"),
            target=tgt,
            method=meta.get("stitch_method"),
            checkpoint=meta.get("stitch_checkpoint"),
            **met,
            **{f"retention_{k}": v for k, v in ret.items()},
            **{"stitched_retention_ndcg@10": ref},
            **{"abs_diff_retention_ndcg@10": abs(ret["ndcg@10"] - ref)},
        )
    )
  return pd.DataFrame(rows)


def curve_table(ctx: Context) -> pd.DataFrame:
  """The calibration-size curve of every ordered pair of models (no control).

  Args:
    ctx: the split's context.

  Returns:
    One row per (source, target, K): `k`, `lam`, `val_mse`, `val_r2`, `val_r2_vw`, the
    retrieval metrics of this split's corpus through the stitch, and `native_<metric>`
    / `retention_<metric>`; empty when `curve_sizes` is ().
  """
  cfg, r = ctx.cfg, ctx.cfg.retrieval
  if not r.curve_sizes:
    return pd.DataFrame()
  root, models = ctx.layout.store_root, ctx.models
  train = store.read_models(root, ctx.name, "train", "corpus", models)[1]
  val = (
      [ctx.C[m] for m in models]
      if ctx.split == "val"
      else store.read_models(root, ctx.name, "val", "corpus", models)[1]
  )
  lambdas = [x for x in cfg.closed_form.lambdas if x > 0]
  sizes = curve.curve_sizes(len(train[0]), r.curve_sizes)
  progress = logs.Progress("calibration curve", len(models), "sources")
  rows = []
  with _common.precision(cfg.closed_form.float64):
    dtype = _common.dtype(cfg.closed_form.float64)
    for sc in curve.source_curves(train, val, sizes, lambdas, seed=r.curve_seed, dtype=dtype):
      src = models[sc.source]
      for t, tgt in enumerate(models):
        if t == sc.source:
          continue
        for j, k in enumerate(sc.sizes):
          w, b = sc.stitch(j, t)
          met, _ = ctx.retrieve(ctx.C[src] @ w.astype(np.float32) + b, ctx.Q[tgt])
          rows.append(
              ctx.base(
                  source=src,
                  target=tgt,
                  k=int(k),
                  lam=float(sc.lam[j, t]),
                  val_mse=float(sc.mse[j, t]),
                  val_r2=float(sc.r2[j, t]),
                  val_r2_vw=float(sc.r2_vw[j, t]),
                  **met,
                  **ctx.versus_native(tgt, met),
              )
          )
      progress.update()
  df = pd.DataFrame(rows)
  if len(df):
    by_k = df.groupby("k")[["retention_ndcg@10", "val_r2_vw"]].mean()
    logging.info(
        "calibration curve (mean over %d pairs): %s",
        len(models) * (len(models) - 1),
        ", ".join(
            f"K={k} retention {v['retention_ndcg@10']:.3f} R² {v['val_r2_vw']:.3f}"
            for k, v in by_k.iterrows()
        ),
    )
  return df


def run(cfg: StudyConfig, layout: RunLayout, stitch_dirs=None) -> dict:
  """Writes the four retrieval tables and `retrieval/run.json`; returns a summary.

  Args:
    cfg: the study config.
    layout: the run layout; stitches are read from it unless `stitch_dirs` is given.
    stitch_dirs: stitch checkpoint directories; default `layout.stitch_dirs()`.

  Returns:
    `{"out", counts, "native_ndcg@10", "random_ranking_ndcg@10", "retention_ndcg@10",
    "translated", "seconds"}`.

  Raises:
    store.StoreError: the store's rows do not match the config's data settings.
  """
  t0 = time.time()
  ctx = Context(cfg, layout)
  stitch_dirs = list(stitch_dirs) if stitch_dirs else layout.stitch_dirs()
  if not stitch_dirs:
    logging.warning("no stitch checkpoints under %s: stitched table is controls only", layout.root)
  native_df, overlap_df = native_table(ctx), overlap_table(ctx)
  stitched_df, by_key = stitched_table(ctx, stitch_dirs)
  translated_df = translated_table(ctx, by_key)
  tables = {"native": native_df, "overlap": overlap_df, "stitched": stitched_df}
  tables["translated"] = translated_df
  tables["curve"] = curve_table(ctx)
  for stem, df in tables.items():
    if len(df):
      files.save_table(df, layout.retrieval, stem)
  info = {
      "dataset": ctx.name,
      "split": ctx.split,
      "models": ctx.models,
      "stitches": [str(p) for p in stitch_dirs],
      **ctx.counts,
      "overlap_k": list(cfg.retrieval.overlap_k),
      "knn_k": min(cfg.retrieval.knn_k, ctx.n_rows - 1),
      "seconds": round(time.time() - t0, 2),
  }
  files.write_json(layout.retrieval / "run.json", info)
  retention = zip(
      stitched_df.method, stitched_df.source, stitched_df.target, stitched_df["retention_ndcg@10"]
  )
  return {
      "out": str(layout.retrieval),
      **ctx.counts,
      "native_ndcg@10": {m: round(ctx.native[m]["ndcg@10"], 4) for m in ctx.models},
      "random_ranking_ndcg@10": round(ctx.chance["ndcg@10"], 4),
      "retention_ndcg@10": {f"{m}:{a}->{b}": round(float(v), 4) for m, a, b, v in retention},
      "translated": translated_df[
          ["array", "ndcg@10", "retention_ndcg@10", "stitched_retention_ndcg@10"]
      ].to_dict("records")
      if len(translated_df)
      else [],
      "seconds": info["seconds"],
  }
