"""Calibrate: embed K sampled texts with the new model, fit every stitch, estimate retention.

    from lead_jax.migrate import calibrate
    summary = calibrate.run(cfg)     # cfg.migrate.source, target_model, k, queries, …

1. **Sample** K row indices, seeded and spread across the collection: the rows are cut
   into K equal strata and one index is drawn from each (`sample`).
2. **Embed** their texts with the new model (any lead_jax encoder, `openai/…` included;
   the passage prefix of its model card prepended). With `migrate.queries` (a BEIR
   directory or `wordnet` whose qrels judge the collection's ids), the queries judging a
   sampled id are embedded too (query prefix). The vectors are cached in the work
   directory, keyed by model and ids, so a rerun with other methods embeds nothing.
3. **Fit** with the engine, for both directions at once (old → new for translate, new →
   old for serve): ridge with λ chosen by k-fold CV (`cross_validate_all_pairs`, mean CV
   MSE over `config.closed_form.lambdas`), OLS (`fit_all_pairs` at λ = 0), Procrustes (the
   engine's `polar` factor of the centred cross-Gram; b = μ_B − μ_A R) and an MLP
   (`stitch.mlp.fit`, depth `migrate.mlp_depth`, early-stopped on a tenth of its own
   training rows).
4. **Estimate** by cross-fitting on the same folds: fold f's rows are translated by the
   stitch fitted on the other folds, so every estimate is out of sample.
     * self-retrieval, always: top-1 / top-10 rate of a translated vector among the new
       model's own vectors of the K texts (chance: 1/K, 10/K);
     * with queries: nDCG@10 over the K sampled documents, queried with the new model's
       queries, against the out-of-fold translated corpus; retention = stitched / native
       (native = the new model's own vectors: the ceiling); the floor is the mean
       estimator (every document tied: the exact random-order expectation). For serve,
       each query is mapped by the stitch of the fold holding its relevant document and
       searched in the old vectors. This serve figure is biased low: 4/5 of that corpus
       are the stitch's own training rows, which outrank unseen documents more than in a
       collection where the K calibrated rows are a small share (BUILD_NOTES §9); it is
       reported, not gated.
   Confidence intervals: percentile bootstrap over rows (self-retrieval) or queries (nDCG
   retention, the ratio of means recomputed per resample).
5. **Save** every method refitted on all K rows (`<work>/stitches/<method>/`, the
   closed-form or MLP checkpoint format `lead_jax.stitch.io.load` reads), the chosen
   method, and `calibration.json`. The estimate is for stitches fitted on (F−1)/F of the
   K rows; the saved one uses all K, so the estimate leans conservative.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lead_jax import files, numerics
from lead_jax.config import StudyConfig
from lead_jax.eval import retrieval as R
from lead_jax.migrate import stores
from lead_jax.migrate.serve import CALIBRATION_JSON
from lead_jax.similarity.gram import ein
from lead_jax.stitch import closed_form, metrics, mlp
from lead_jax.stitch import io as stitch_io

METHODS = ("ridge", "ols", "procrustes", "mlp")
OLD, NEW = 0, 1  # model indices in every fit: the collection's model, the new model


def work_dir(cfg: StudyConfig):
  """The calibration directory: `migrate.work`, or `<out>/migrate`."""
  import pathlib

  return pathlib.Path(cfg.migrate.work or pathlib.Path(cfg.out) / "migrate")


def sample(n: int, k: int, seed: int) -> np.ndarray:
  """K indices of [0, n), one drawn uniformly from each of K equal strata (sorted).

  Args:
    n: the collection size.
    k: the sample size (at most n).
    seed: the seed.

  Returns:
    [min(k, n)] sorted int64 indices, no repeats.
  """
  k = min(k, n)
  edges = np.floor(np.arange(k + 1) * (n / k)).astype(np.int64)
  rng = np.random.default_rng(seed)
  return edges[:-1] + (rng.random(k) * (edges[1:] - edges[:-1])).astype(np.int64)


def encoder(cfg: StudyConfig, model: str):
  """`(embed(texts) -> [n, d], dim, model meta, (query prefix, passage prefix))`.

  Args:
    cfg: the study config (`embed` settings).
    model: a registry name, a model directory, or `openai/…`.

  Returns:
    The embed function and what describes it.
  """
  from lead_jax.pipeline import embed

  fn, dim, meta, _, prefixes = embed.encoder(cfg, model)
  return fn, dim, meta, prefixes


# ----------------------------------------------------------------------------- fitting


def _affine(w, b, lam=0.0) -> dict:
  return {"W": np.asarray(w, np.float32), "b": np.asarray(b, np.float32), "lam": np.float32(lam)}


def _pairs_from_fit(fit: dict) -> dict:
  tree, info = stitch_io.chosen_stitches(fit, ["old", "new"])
  return {(r["source_index"], r["target_index"]): tree[r["key"]] for r in info}


def fit_ridge(x, y, lams: dict, xv=None, yv=None) -> dict:
  """Ridge at a fixed λ per direction, with `fit_all_pairs` (one call per distinct λ).

  Args:
    x: old rows [n, d_o].
    y: new rows [n, d_n].
    lams: {(s, t): λ} for (OLD, NEW) and (NEW, OLD).
    xv: val rows of the old model (metrics only; λ is fixed); default x.
    yv: likewise for the new model.

  Returns:
    {(s, t): {W, b, lam}}.
  """
  xv, yv = (x, y) if xv is None else (xv, yv)
  out = {}
  for lam in sorted(set(lams.values())):
    fit = closed_form.fit_all_pairs(
        [x, y],
        [xv, yv],
        lambdas=np.asarray([lam]),
        control_dim=None,
        procrustes=False,
        spectra=False,
        predictions=False,
        exact_ols=False,
    )
    got = _pairs_from_fit(jax.device_get(fit))
    out.update({p: got[p] for p, v in lams.items() if v == lam})
  return out


@jax.jit
def _procrustes_pair(x, y):
  mx, my = jnp.mean(x, 0), jnp.mean(y, 0)
  c = ein("nd,ne->de", x - mx, y - my)
  r, _ = closed_form.polar(c)
  return r, my - mx @ r


def fit_procrustes(x, y) -> dict:
  """Orthogonal Procrustes both ways: R = polar(X̃ᵀỸ) (the engine's `polar`), b = μ_B − μ_A R.

  Args:
    x: old rows [n, d_o].
    y: new rows [n, d_n].

  Returns:
    {(s, t): {W, b, lam}}.
  """
  r, b = _procrustes_pair(jnp.asarray(x), jnp.asarray(y))
  rt, bt = _procrustes_pair(jnp.asarray(y), jnp.asarray(x))
  return {(OLD, NEW): _affine(r, b), (NEW, OLD): _affine(rt, bt)}


def _mlp_configs(cfg: StudyConfig):
  m = cfg.migrate
  scfg = mlp.StitchConfig.from_config(cfg.mlp, m.mlp_depth)
  c = cfg.mlp
  steps = m.mlp_steps
  tcfg = mlp.TrainConfig(
      steps=steps,
      batch_size=c.batch_size,
      lr=c.lr,
      end_lr_ratio=c.end_lr_ratio,
      warmup_steps=min(c.warmup_steps, steps - 1),
      weight_decay=c.weight_decay,
      grad_clip=c.grad_clip,
      eval_every=min(c.eval_every, steps),
      patience=c.patience,
      seed=m.seed,
  )
  return scfg, tcfg


def fit_mlp(cfg: StudyConfig, x, y, directory=None, names=("old", "new")):
  """MLP stitches both ways (`stitch.mlp`), early-stopped on the last tenth of the rows.

  Args:
    cfg: the study config (`migrate.mlp_*`, `mlp`).
    x: old rows [n, d_o].
    y: new rows [n, d_n].
    directory: save as an Orbax checkpoint there (`mlp_checkpoint.fit`); None: in memory.
    names: the two models' names, recorded in the checkpoint.

  Returns:
    {(s, t): params}, plus the StitchConfig under key "cfg".
  """
  from lead_jax.stitch import mlp_checkpoint

  scfg, tcfg = _mlp_configs(cfg)
  n = len(x)
  n_es = max(1, n // 10)
  order = np.random.default_rng(cfg.migrate.seed).permutation(n)
  tr, es = order[n_es:], order[:n_es]
  pairs = [(OLD, NEW), (NEW, OLD)]
  plan = mlp.make_plan([x.shape[1], y.shape[1]], scfg, pairs)
  train = mlp.stack_data([x[tr], y[tr]], plan)
  val = mlp.stack_data([x[es], y[es]], plan)
  if directory is None:
    state = mlp.fit(plan, train, val, scfg, tcfg)
  else:
    state = mlp_checkpoint.fit(directory, plan, train, val, scfg, tcfg, list(names))
  best = mlp.per_pair(state, plan, "best_params")
  out = {tuple(p): best[i] for i, p in enumerate(plan.pairs)}
  out["cfg"] = scfg
  return out


def _apply(method: str, params, x, cfg=None) -> np.ndarray:
  if method == "mlp":
    return np.asarray(stitch_io._apply_mlp(params, jnp.asarray(x, jnp.float32), cfg))  # noqa: SLF001
  return np.asarray(x, np.float32) @ params["W"] + params["b"]


def fit_method(
    method: str, cfg: StudyConfig, x, y, lams: dict, directory=None, names=("old", "new")
) -> dict:
  """{(s, t): params} (and "cfg" for the MLP) of one method fitted on rows x, y.

  Args:
    method: one of `METHODS`.
    cfg: the study config.
    x: old rows.
    y: new rows.
    lams: ridge's λ per direction.
    directory: MLP checkpoint directory (the final fit), or None.
    names: the two models' names (MLP checkpoints record them).

  Returns:
    The fitted pairs.

  Raises:
    ValueError: an unknown method.
  """
  if method == "ridge":
    return fit_ridge(x, y, lams)
  if method == "ols":
    return fit_ridge(x, y, {(OLD, NEW): 0.0, (NEW, OLD): 0.0})
  if method == "procrustes":
    return fit_procrustes(x, y)
  if method == "mlp":
    return fit_mlp(cfg, x, y, directory, names)
  raise ValueError(f"config.migrate.methods: unknown method {method!r}; known {METHODS}")


def cv_lambdas(cfg: StudyConfig, x, y) -> dict:
  """Ridge λ per direction by k-fold CV (the engine's mean CV MSE), same folds as the estimates.

  Args:
    cfg: the study config (`closed_form.lambdas`, `migrate.folds`, `migrate.seed`).
    x: old rows.
    y: new rows.

  Returns:
    {(OLD, NEW): λ, (NEW, OLD): λ}.
  """
  cv = closed_form.cross_validate_all_pairs(
      [x, y],
      lambdas=np.asarray(cfg.closed_form.lambdas),
      n_folds=cfg.migrate.folds,
      fold_seed=cfg.migrate.seed,
      control_dim=None,
      procrustes=False,
      spectra=False,
      predictions=False,
      exact_ols=False,
  )
  lam = np.asarray(cv["mean"]["chosen"]["lambda"])
  return {(OLD, NEW): float(lam[OLD, NEW]), (NEW, OLD): float(lam[NEW, OLD])}


# ----------------------------------------------------------------------------- estimates


def self_retrieval(pred_nd, target_nd, k: int = 10) -> dict[str, np.ndarray]:
  """Per row i: is target row i the top-1 / among the top-k of translated row i's neighbours?

  Args:
    pred_nd: translated rows [n, d].
    target_nd: the target model's rows of the same texts [n, d].
    k: the wider cut-off.

  Returns:
    {"top1": [n] bool, "top10": [n] bool} (cosine; ties ranked by lower index).
  """
  n = len(target_nd)
  _, ids = R.topk_search(pred_nd, target_nd, min(k, n))
  rows = np.arange(n)[:, None]
  return {"top1": ids[:, 0] == rows[:, 0], f"top{k}": (ids == rows).any(axis=1)}


def bootstrap_mean(x, b: int, ci: float, seed: int) -> dict:
  """The mean of x and its percentile bootstrap interval.

  Args:
    x: [n] values.
    b: resamples.
    ci: confidence level.
    seed: the seed.

  Returns:
    {"estimate", "lo", "hi", "n"}.
  """
  x = np.asarray(x, np.float64)
  idx = np.random.default_rng(seed).integers(0, len(x), (b, len(x)))
  means = x[idx].mean(axis=1)
  a = (1 - ci) / 2
  lo, hi = np.quantile(means, [a, 1 - a])
  return {"estimate": float(x.mean()), "lo": float(lo), "hi": float(hi), "n": len(x)}


def bootstrap_ratio(num, den, b: int, ci: float, seed: int) -> dict:
  """mean(num) / mean(den) and its percentile bootstrap interval (pairs resampled together).

  Args:
    num: [n] per-query stitched metric.
    den: [n] per-query native metric.
    b: resamples.
    ci: confidence level.
    seed: the seed.

  Returns:
    {"estimate", "lo", "hi", "n"}.
  """
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  idx = np.random.default_rng(seed).integers(0, len(num), (b, len(num)))
  r = num[idx].mean(axis=1) / np.maximum(den[idx].mean(axis=1), 1e-12)
  a = (1 - ci) / 2
  lo, hi = np.quantile(r, [a, 1 - a])
  return {
      "estimate": float(num.mean() / max(den.mean(), 1e-12)),
      "lo": float(lo),
      "hi": float(hi),
      "n": len(num),
  }


def ndcg_per_query(queries_qd, corpus_nd, qrels: R.Qrels) -> np.ndarray:
  """nDCG@10 per query [Q] over a corpus whose row i is document i.

  Args:
    queries_qd: [Q, d].
    corpus_nd: [N, d].
    qrels: judgements over the N documents.

  Returns:
    [Q] nDCG@10.
  """
  k = min(max(R.RECALL_KS), len(corpus_nd))
  _, ids = R.topk_search(queries_qd, corpus_nd, k)
  return R.ir_metrics_per_query(ids, qrels)[f"ndcg@{R.NDCG_K}"]


def size_trend(qy, y, yhat, qrels: R.Qrels, n_collection: int, seed: int, draws: int = 3) -> dict:
  """nDCG@10 retention on sub-corpora of K/4, K/2 and K documents, and a log-linear trend.

  Retention falls as the corpus grows (more distractors for a translated vector to lose
  to; on WordNet val 0.80 at 400 documents, 0.70 at 2,000: BUILD_NOTES §9), so the
  K-document estimate is not the whole collection's. The trend r(n) = r_K + slope·log2(n/K)
  is fitted to these points and extrapolated to the collection's size: a rough guide, not
  an estimate the gate uses.

  Args:
    qy: the new model's query vectors [Q, d].
    y: the new model's vectors of the K documents.
    yhat: their out-of-fold translations.
    qrels: judgements over the K documents.
    n_collection: the collection's row count.
    seed: the seed of the sub-corpora.
    draws: sub-corpora per size.

  Returns:
    `{"sizes", "retention", "slope_per_doubling", "at_collection_size", "n_collection"}`.
  """
  k = len(y)
  sizes = [s for s in (k // 4, k // 2) if s >= 20] + [k]
  rng = np.random.default_rng(seed)
  rets = []
  for s in sizes:
    vals = []
    for _ in range(draws if s < k else 1):
      idx = np.sort(rng.choice(k, s, replace=False)) if s < k else np.arange(k)
      pos = np.full(k, -1)
      pos[idx] = np.arange(s)
      keep_j = (qrels.grade > 0) & (pos[qrels.d] >= 0)
      qs = np.unique(qrels.q[keep_j])
      if len(qs) == 0:
        continue
      qmap = np.full(qrels.n_queries, -1)
      qmap[qs] = np.arange(len(qs))
      sel = (qmap[qrels.q] >= 0) & (pos[qrels.d] >= 0)
      sub = R.Qrels(qmap[qrels.q[sel]], pos[qrels.d[sel]], qrels.grade[sel], len(qs), s)
      nat = ndcg_per_query(qy[qs], y[idx], sub).mean()
      vals.append(ndcg_per_query(qy[qs], yhat[idx], sub).mean() / max(nat, 1e-12))
    rets.append(float(np.mean(vals)) if vals else float("nan"))
  ok = np.isfinite(rets)
  slope = (
      float(np.polyfit(np.log2(np.asarray(sizes)[ok]), np.asarray(rets)[ok], 1)[0])
      if ok.sum() >= 2
      else float("nan")
  )
  at_n = rets[-1] + slope * np.log2(max(n_collection, 1) / k) if np.isfinite(slope) else rets[-1]
  return {
      "sizes": sizes,
      "retention": rets,
      "slope_per_doubling": slope,
      "at_collection_size": float(np.clip(at_n, 0.0, None)),
      "n_collection": int(n_collection),
  }


def _queries(cfg: StudyConfig, sample_ids: list[str]):
  """(query ids, query texts, Qrels over the sample) of the queries judging a sampled id."""
  from lead_jax import data

  ds = data.load(cfg.migrate.queries)
  pos = set(sample_ids)
  qrels, qids = {}, []
  for q, judged in ds.qrels.items():
    rel = {d: g for d, g in judged.items() if d in pos}
    if q in ds.queries and any(g > 0 for g in rel.values()):
      qrels[q] = rel
      qids.append(q)
  if not qids:
    raise stores.MigrateError(
        f"config.migrate.queries={cfg.migrate.queries!r}: no query judges any of the "
        f"{len(sample_ids)} sampled ids (are the collection's ids the dataset's doc ids?)"
    )
  return qids, [ds.queries[q] for q in qids], R.qrels_from_dict(qrels, qids, sample_ids)


def _embed_cached(work, cfg, model: str, kind: str, ids: list[str], texts: list[str]):
  blob = "\x00".join([model, kind, *ids, *texts]).encode()
  key = files.sha256_arrays([np.frombuffer(blob, np.uint8)])  # model, ids and texts
  path = work / f"{kind}_vectors.npz"
  if path.exists():
    z = np.load(path, allow_pickle=False)
    if str(z["key"]) == key:
      return z["x"], float(z["seconds"]), json.loads(str(z["meta"]))
  fn, _, meta, (qp, pp) = encoder(cfg, model)
  prefix = qp if kind == "query" else pp
  fn([prefix + t for t in texts[: min(8, len(texts))]])  # compile outside the timed run
  t0 = time.time()
  x = np.asarray(fn([prefix + t for t in texts]), np.float32)
  secs = time.time() - t0
  stores.check_rows(f"{model} embeddings of the {kind} texts", ids, x)
  keep = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}

  def save(p):
    with open(p, "wb") as f:
      np.savez(f, x=x, key=key, seconds=secs, meta=json.dumps(keep))

  files.atomic_write(path, save)
  return x, secs, keep


def run(cfg: StudyConfig) -> dict:
  """Samples, embeds, fits, estimates and saves (module docstring); returns the summary.

  Args:
    cfg: the study config (`migrate`, `closed_form.lambdas`, `mlp`, `embed`).

  Returns:
    The calibration record (also `<work>/calibration.json`).

  Raises:
    MigrateError: bad collection, missing texts, no queries judging the sample, or K too
      small for the folds.
  """
  m = cfg.migrate
  t_start = time.time()
  if not m.target_model:
    raise stores.MigrateError("config.migrate.target_model must name the new model")
  col = stores.read(m.source, cfg)
  old_model = stores.model_of(col, m.source_model)
  work = work_dir(cfg)
  work.mkdir(parents=True, exist_ok=True)
  idx = sample(col.n, m.k, m.seed)
  k = len(idx)
  if k < max(2 * m.folds, 10):
    raise stores.MigrateError(
        f"{col.address}: {k} rows is too few to calibrate with {m.folds} folds"
    )
  ids = [col.ids[i] for i in idx]
  texts = stores.texts_for(col, idx)
  logging.info(
      "calibrate: %d of %d rows of %s, new model %s", k, col.n, col.address, m.target_model
  )
  y, embed_s, new_meta = _embed_cached(work, cfg, m.target_model, "corpus", ids, texts)
  x = col.vectors[idx]
  qinfo = None
  if m.queries:
    qids, qtexts, qrels = _queries(cfg, ids)
    qy, q_s, _ = _embed_cached(work, cfg, m.target_model, "query", qids, qtexts)
    qinfo = (qids, qy, qrels)
    embed_s += q_s
  fidx, fmask = metrics.fold_indices(k, m.folds, m.seed)
  folds = [fidx[f][fmask[f] > 0] for f in range(m.folds)]
  fold_of = np.empty(k, np.int64)
  for f, rows in enumerate(folds):
    fold_of[rows] = f
  t_fit = time.time()
  methods = list(m.methods)
  for mm in methods:
    if mm not in METHODS:
      raise stores.MigrateError(f"config.migrate.methods: unknown method {mm!r}; known {METHODS}")
  lams = {(OLD, NEW): float("nan"), (NEW, OLD): float("nan")}
  if "ridge" in methods:
    lams = cv_lambdas(cfg, x, y)
    logging.info("ridge λ by %d-fold CV: old→new %g, new→old %g", m.folds, *lams.values())
  oof = {mm: (np.zeros_like(y), np.zeros_like(x)) for mm in methods}
  fold_fits = {mm: [] for mm in methods}
  for f, rows in enumerate(folds):
    tr = np.setdiff1d(np.arange(k), rows)
    for mm in methods:
      p = fit_method(mm, cfg, x[tr], y[tr], lams)
      oof[mm][0][rows] = _apply(mm, p[OLD, NEW], x[rows], p.get("cfg"))
      oof[mm][1][rows] = _apply(mm, p[NEW, OLD], y[rows], p.get("cfg"))
      fold_fits[mm].append(p)
  cross_fit_s = time.time() - t_fit
  est = {}
  b, ci, seed = m.bootstrap, m.ci, m.seed
  native = None
  if qinfo is not None:
    qids, qy, qrels = qinfo
    scored = R.scored_queries(qrels)
    native = ndcg_per_query(qy, y, qrels)[scored]
    chance = R.random_ranking_metrics(qrels)[f"ndcg@{R.NDCG_K}"][scored]
    # each query's fold: that of its first relevant sampled document
    first = np.full(qrels.n_queries, -1)
    for qi, d, g in zip(qrels.q[::-1], qrels.d[::-1], qrels.grade[::-1]):
      if g > 0:
        first[qi] = d
  for mm in methods:
    yhat, xhat = oof[mm]
    sr_t = self_retrieval(yhat, y)
    sr_s = self_retrieval(xhat, x)
    e = {
        "translate": {
            "self_top1": bootstrap_mean(sr_t["top1"], b, ci, seed),
            "self_top10": bootstrap_mean(sr_t["top10"], b, ci, seed),
            "mean_cos": float(np.mean(np.sum(numerics.l2_normalize(yhat) * y, 1))),
        },
        "serve": {
            "self_top1": bootstrap_mean(sr_s["top1"], b, ci, seed),
            "self_top10": bootstrap_mean(sr_s["top10"], b, ci, seed),
        },
    }
    if qinfo is not None:
      st_t = ndcg_per_query(qy, yhat, qrels)[scored]
      e["translate"]["ndcg@10"] = bootstrap_mean(st_t, b, ci, seed)
      e["translate"]["ndcg@10_retention"] = bootstrap_ratio(st_t, native, b, ci, seed)
      e["translate"]["corpus_size_trend"] = size_trend(qy, y, yhat, qrels, col.n, seed)
      qx = np.zeros((len(qy), x.shape[1]), np.float32)
      for f in range(m.folds):
        sel = fold_of[np.maximum(first, 0)] == f
        p = fold_fits[mm][f]
        if sel.any():
          qx[sel] = _apply(mm, p[NEW, OLD], qy[sel], p.get("cfg"))
      st_s = ndcg_per_query(qx, x, qrels)[scored]
      e["serve"]["ndcg@10"] = bootstrap_mean(st_s, b, ci, seed)
      e["serve"]["ndcg@10_retention"] = bootstrap_ratio(st_s, native, b, ci, seed)
    est[mm] = e
  primary = "ndcg@10_retention" if qinfo is not None else "self_top10"
  if m.method == "auto":
    chosen = max(methods, key=lambda mm: est[mm]["translate"][primary]["estimate"])
  elif m.method in methods:
    chosen = m.method
  else:
    raise stores.MigrateError(
        f"config.migrate.method {m.method!r} is not among config.migrate.methods {methods}"
    )
  t_final = time.time()
  digests = {}
  names = [old_model, m.target_model]
  for mm in methods:
    d = work / "stitches" / mm
    if mm == "mlp":
      import shutil

      shutil.rmtree(d, ignore_errors=True)
      fit_method(mm, cfg, x, y, lams, directory=d, names=names)
    else:
      save_affine(d, fit_method(mm, cfg, x, y, lams), names)
    digests[mm] = {
        s.key: s.digest for s in stitch_io.load(d) if (s.source, s.target) in _dirs(names)
    }
  refs = {
      "native_ndcg@10": float(native.mean()) if native is not None else None,
      "floor_ndcg@10": float(chance.mean()) if native is not None else None,
      "floor_ndcg@10_retention": (
          float(chance.mean() / max(native.mean(), 1e-12)) if native is not None else None
      ),
      "floor_self_top1": 1.0 / k,
      "floor_self_top10": min(10, k) / k,
      "ceiling_ndcg@10_retention": 1.0 if native is not None else None,
  }
  rec = {
      "source": str(col.address),
      "source_model": old_model,
      "target_model": m.target_model,
      "target_model_meta": new_meta,
      "n_rows": col.n,
      "source_dim": col.dim,
      "target_dim": int(y.shape[1]),
      "k": k,
      "folds": m.folds,
      "seed": m.seed,
      "queries": m.queries,
      "n_queries": int(qinfo[2].n_queries) if qinfo else 0,
      "lambda": {"old->new": lams[OLD, NEW], "new->old": lams[NEW, OLD]},
      "methods": methods,
      "method": chosen,
      "primary": primary,
      "normalize": m.normalize,
      "estimates": est,
      "references": refs,
      "stitch_digests": digests,
      "embed_seconds": round(embed_s, 2),
      "embed_rate_per_s": round((k + (len(qinfo[0]) if qinfo else 0)) / max(embed_s, 1e-9), 1),
      "cross_fit_seconds": round(cross_fit_s, 2),
      "final_fit_seconds": round(time.time() - t_final, 2),
      "seconds": round(time.time() - t_start, 2),
  }
  files.write_json(work / "sample.json", {"ids": ids, "fold": fold_of.tolist()}, None)
  files.write_json(work / CALIBRATION_JSON, rec)
  logging.info(
      "calibrate: chosen %s, %s %.3f [%.3f, %.3f] (out of fold, %d folds)",
      chosen,
      primary,
      est[chosen]["translate"][primary]["estimate"],
      est[chosen]["translate"][primary]["lo"],
      est[chosen]["translate"][primary]["hi"],
      m.folds,
  )
  return rec


def _dirs(names):
  return {(names[0], names[1]), (names[1], names[0])}


def save_affine(directory, pairs: dict, names: list[str]) -> None:
  """Saves {(s, t): {W, b, lam}} in the closed-form checkpoint format (`stitch_io.load`).

  Args:
    directory: the stitch directory (replaced).
    pairs: the two directions' parameters.
    names: [old model, new model].
  """
  import orbax.checkpoint as ocp

  directory.mkdir(parents=True, exist_ok=True)
  tree, info = {}, []
  for (s, t), p in sorted((k, v) for k, v in pairs.items() if isinstance(k, tuple)):
    key = f"pair_{s:03d}_{t:03d}"
    w = np.asarray(p["W"], np.float32)
    tree[key] = {"W": w, "b": np.asarray(p["b"], np.float32), "lam": np.asarray(p["lam"])}
    info.append(
        {
            "key": key,
            "source": names[s],
            "target": names[t],
            "source_index": s,
            "target_index": t,
            "source_dim": int(w.shape[0]),
            "target_dim": int(w.shape[1]),
            "lam": float(p["lam"]),
        }
    )
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(directory.absolute() / "stitches", tree, force=True)
  ckptr.wait_until_finished()
  files.write_json(directory / "stitches.json", info)
