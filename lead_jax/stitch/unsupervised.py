"""Alignment without paired texts, mini-vec2vec style, for every ordered pair of models at once.

mini-vec2vec (Dar, 2025) aligns two embedding spaces with a linear pipeline: cluster each
space, match the two centroid sets by their internal similarity structure, fit
Procrustes on pseudo-pairs found through the matched anchors, then refine. Ours:

0. Common width. Every model is centred by its train mean and reduced by PCA to the same
   k = min(pca_k, narrowest width), then rows are L2-normalised. So every pair is a k×k
   orthogonal problem with one shape, and the whole pipeline is one program mapped over
   ordered pairs (no grouping by width). PCA keeps the high-variance directions both
   spaces can share; zero padding instead would leave the wider space's extra directions
   with nothing to match.
1. No pairing leaks in. The train rows are split (seeded) into two disjoint halves; the
   source sees only (up to `fit_rows` rows of) half 1, the target only half 2, so no
   source row has its own text among the target rows the fit sees.
2. Anchors: spherical k-means (k-means++ seeding, `clusters` centroids) in each space,
   `restarts` times with different seeds (mini-vec2vec also repeats its clustering runs).
3. Matching: the centroid cosine matrices S_A, S_B are compared, not the centroids (they
   live in different spaces). A quadratic assignment max_P tr(S_A P S_B Pᵀ) is solved
   approximately by graduated assignment (softassign: P ← Sinkhorn(β·S_A P S_B) with β
   annealed), started from the match of each centroid's sorted similarity profile (a
   permutation-invariant descriptor). The result is a near-hard doubly stochastic P.
4. Pseudo-pairs: each row's relative representation, its cosines to its space's anchors
   (the target's reordered by P, each anchor column standardised), is comparable across
   spaces; each source row is paired with the mean of its `neighbours` nearest target rows
   in that representation, and R₀ = polar(Xᵀ Ŷ).
5. Refinement (`refine_iters`): map the source rows, pair each with its nearest target
   row (and each target row with its nearest mapped source row), refit Procrustes on
   both sets of pairs and smooth: R ← polar((1 − α) R + α R_new).
6. Several starts: one per k-means restart (steps 3–4), plus a PCA-sign start (ours, not
   mini-vec2vec's; `pca_sign_start`: in PCA coordinates a near-isometry is ≈ diag(±1),
   signs from each component's skewness). Each is refined `select_iters` steps; the one
   whose mapped source rows lie closest to the target rows (mean cosine to the nearest
   target row: no pairs needed) is kept; then the reverse pair's winner, transposed, is
   offered too (for a rotation, R_ji = R_ijᵀ), the better of the two by the same fit
   gets the remaining steps. Which start won is returned.

Evaluation on the val rows (paired, never seen by any fit): each mapped source row's true
counterpart is ranked among all val rows of the target by cosine, giving top-1 accuracy
and mean rank (1 = perfect, (n+1)/2 = chance), for the unsupervised map, for supervised
Procrustes and ridge fitted on the paired train rows in the same reduced spaces (the
ceiling), and for a seeded random orthogonal map (the floor).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lead_jax.config import UnsupervisedConfig
from lead_jax.errors import InputError
from lead_jax.similarity import gram as gram_lib
from lead_jax.similarity.gram import ein

METHODS = ("unsupervised", "procrustes", "ridge", "random")


def _unit(x, eps=1e-12):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _polar(c):
  """Orthogonal polar factor of one [k, k] matrix (closed_form.polar's, unbatched: it runs
  inside lax.map over pairs)."""
  u, _, vt = jnp.linalg.svd(c, full_matrices=False)
  return ein("ik,kj->ij", u, vt)


def reduce_models(train, val, k: int):
  """Centre by the train mean, PCA to k, L2-normalise rows (traceable).

  Args:
    train: per model [N, d_i].
    val: per model [Nv, d_i].
    k: the common width, ≤ every d_i.

  Returns:
    `(train [M, N, k], val [M, Nv, k])`.
  """
  w = max(int(x.shape[1]) for x in train)
  mus = [jnp.mean(x, axis=0) for x in train]
  pad = lambda a: jnp.pad(a, ((0, w - a.shape[0]), (0, w - a.shape[1])))
  grams = jnp.stack([pad(ein("nd,ne->de", x - mu, x - mu)) for x, mu in zip(train, mus)])
  _, vecs = gram_lib.linalg_map(jnp.linalg.eigh, grams, 1)  # ascending; padding adds zeros
  tr, va = [], []
  for i, (x, xv, mu) in enumerate(zip(train, val, mus)):
    v = vecs[i, : x.shape[1], -k:][:, ::-1]  # top k, largest first
    tr.append(_unit(ein("nd,dk->nk", x - mu, v)))
    va.append(_unit(ein("nd,dk->nk", xv - mu, v)))
  return jnp.stack(tr), jnp.stack(va)


def kmeans(x: jax.Array, c: int, iters: int, key: jax.Array) -> jax.Array:
  """Spherical k-means of unit rows x [n, k]: k-means++ seeding, then Lloyd steps.

  Args:
    x: unit rows [n, k].
    c: centroids.
    iters: Lloyd iterations.
    key: PRNG key of the seeding.

  Returns:
    Unit centroids [c, k].
  """
  n = x.shape[0]
  k0, k1 = jax.random.split(key)
  first = x[jax.random.randint(k0, (), 0, n)]

  def seed_step(carry, kk):
    cents, d2, t = carry
    nxt = x[jax.random.categorical(kk, jnp.log(jnp.maximum(d2, 1e-30)))]
    cents = cents.at[t].set(nxt)
    d2 = jnp.minimum(d2, jnp.sum((x - nxt) ** 2, axis=1))
    return (cents, d2, t + 1), None

  cents = jnp.zeros((c, x.shape[1]), x.dtype).at[0].set(first)
  d2 = jnp.sum((x - first) ** 2, axis=1)
  (cents, _, _), _ = jax.lax.scan(seed_step, (cents, d2, 1), jax.random.split(k1, c - 1))

  def lloyd(cents, _):
    a = jnp.argmax(ein("nk,ck->nc", x, cents), axis=1)
    s = jax.ops.segment_sum(x, a, num_segments=c)
    cnt = jax.ops.segment_sum(jnp.ones((n,), x.dtype), a, num_segments=c)
    new = jnp.where(cnt[:, None] > 0, _unit(s), cents)  # an empty cluster keeps its centroid
    return new, None

  cents, _ = jax.lax.scan(lloyd, cents, None, length=iters)
  return cents


def _sinkhorn(logits, iters=30):
  def step(_, lp):
    lp = lp - jax.scipy.special.logsumexp(lp, axis=1, keepdims=True)
    return lp - jax.scipy.special.logsumexp(lp, axis=0, keepdims=True)

  return jnp.exp(jax.lax.fori_loop(0, iters, step, logits))


def match_centroids(ca: jax.Array, cb: jax.Array, iters: int, key: jax.Array, restarts: int = 4):
  """Soft matching P [c, c] of two centroid sets by their internal cosine structure.

  Graduated assignment for max_P tr(S̃_A P S̃_B Pᵀ), S̃ the centroid cosines minus their
  off-diagonal mean (the raw cosines are mostly one large constant, which flattens the
  objective), from `restarts` starts: the sorted-profile match, then random ones. The
  start whose hardened P scores highest wins.

  Args:
    ca: source centroids [c, k] (unit rows).
    cb: target centroids [c, k] (unit rows), another space.
    iters: annealing steps.
    key: PRNG key of the random starts.
    restarts: starts.

  Returns:
    Doubly stochastic P [c, c]; P[a, b] ≈ 1 when source centroid a ↔ target centroid b.
  """
  c = ca.shape[0]
  off = ~jnp.eye(c, dtype=bool)

  def centred(x):
    s = ein("ak,bk->ab", x, x)
    return jnp.where(off, s - jnp.sum(jnp.where(off, s, 0.0)) / (c * (c - 1)), 0.0)

  sa, sb = centred(ca), centred(cb)
  da, db = jnp.sort(sa, axis=1), jnp.sort(sb, axis=1)
  dist = jnp.sum((da[:, None, :] - db[None, :, :]) ** 2, axis=-1)
  z = lambda q: (q - jnp.mean(q)) / (jnp.std(q) + 1e-12)
  starts = jnp.concatenate(
      [-2.0 * z(dist)[None], 0.1 * jax.random.normal(key, (max(restarts, 1) - 1, c, c))]
  )
  betas = jnp.geomspace(0.5, 100.0, max(iters, 1))

  def anneal(logits):
    def step(p, beta):
      return _sinkhorn(beta * z(ein("ab,bc,dc->ad", sa, p, sb))), None

    p, _ = jax.lax.scan(step, _sinkhorn(logits), betas)
    hard = jax.nn.one_hot(jnp.argmax(p, axis=1), c, dtype=p.dtype)
    return p, jnp.trace(ein("ab,bc,dc->ad", sa, hard, sb) @ hard.T)

  ps, score = jax.vmap(anneal)(starts)
  return ps[jnp.argmax(score)]


def pca_sign_start(xa: jax.Array, xb: jax.Array) -> jax.Array:
  """A second start for near-isometric spaces: both are in PCA coordinates, where an
  isometry with distinct eigenvalues is diag(±1); each sign is set by the sign of the
  component's skewness in each space.

  Args:
    xa: source rows [n, k] (PCA coordinates, unit rows).
    xb: target rows [n', k].

  Returns:
    Diagonal ±1 [k, k].
  """
  skew = lambda x: jnp.sign(jnp.mean((x - jnp.mean(x, axis=0)) ** 3, axis=0))
  return jnp.diag(skew(xa) * skew(xb))


def _nn_mean(q, t, m, values=None):
  """For each row of q [n, k], the mean of `values` (default t) at its m nearest rows of
  t [n', k] by cosine."""
  values = t if values is None else values
  s = ein("nk,mk->nm", q, t)
  if m == 1:
    return values[jnp.argmax(s, axis=1)]
  return jnp.mean(values[jax.lax.top_k(s, m)[1]], axis=1)


def refine(xa, xb, r0, iters: int, cfg) -> tuple[jax.Array, jax.Array]:
  """`iters` refinement steps (step 5) from r0, and the fit of the result.

  Args:
    xa: source rows [n_a, k] (unit).
    xb: target rows [n_b, k] (unit).
    r0: the start [k, k].
    iters: steps (0: none).
    cfg: the settings (neighbours, refine_smoothing).

  Returns:
    `(R, fit)`, fit = mean cosine of each mapped source row to its nearest target row.
  """
  alpha = cfg.refine_smoothing

  def step(r, _):
    mapped = _unit(ein("nk,kl->nl", xa, r))
    fwd = _nn_mean(mapped, xb, cfg.neighbours)  # each source row's nearest target row
    back = _nn_mean(xb, mapped, cfg.neighbours)  # each target row's nearest mapped source
    back = ein("nl,kl->nk", back, r)  # … back in source coordinates
    new = _polar(ein("nk,nl->kl", xa, fwd) + ein("nk,nl->kl", back, xb))
    return _polar((1.0 - alpha) * r + alpha * new), None

  r, _ = jax.lax.scan(step, r0, None, length=iters) if iters else (r0, None)
  return r, jnp.mean(jnp.max(ein("nl,ml->nm", _unit(xa @ r), xb), axis=1))


def select_start(xa, xb, ca, cb, cfg, key) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Every start refined `select_iters` steps; the best by fit (no pairs needed).

  Starts: one per k-means restart (steps 3–4 on that restart's centroids) and the
  PCA-sign start.

  Args:
    xa: source rows [n_a, k] (unit).
    xb: target rows [n_b, k] (unit), other texts.
    ca: source centroids [restarts, c, k].
    cb: target centroids [restarts, c, k].
    cfg: the settings.
    key: PRNG key of the matchings' random starts.

  Returns:
    `(R, fit, start)`: start 0 … restarts−1 is a k-means restart's anchors, restarts the
    PCA signs.
  """
  std = lambda r: _unit((r - jnp.mean(r, axis=0)) / (jnp.std(r, axis=0) + 1e-12))
  sel = min(cfg.select_iters, cfg.refine_iters)

  def anchor_start(args):
    ca_r, cb_r, kk = args
    p = match_centroids(ca_r, cb_r, cfg.match_iters, kk)
    ra = std(ein("nk,ck->nc", xa, ca_r))
    rb = std(ein("nk,ck,ac->na", xb, cb_r, p))  # target anchors in source order
    # pseudo-pairs through the anchors: the nearest target rows in the relative space
    r0 = _polar(ein("nk,nl->kl", xa, _nn_mean(ra, rb, cfg.neighbours, values=xb)))
    return refine(xa, xb, r0, sel, cfg)

  rs, fits = jax.lax.map(anchor_start, (ca, cb, jax.random.split(key, ca.shape[0])))
  r_pca, f_pca = refine(xa, xb, pca_sign_start(xa, xb), sel, cfg)
  rs = jnp.concatenate([rs, r_pca[None]])
  fits = jnp.concatenate([fits, f_pca[None]])
  best = jnp.argmax(fits)
  return rs[best], fits[best], best.astype(jnp.int32)


def align_pair(xa, xb, ca, cb, cfg, key) -> tuple[jax.Array, jax.Array]:
  """The unsupervised map of one ordered pair: `select_start`, then the remaining steps.

  (`unsupervised_all_pairs` also offers each pair the transpose of its reverse pair's
  map before the remaining steps.)

  Args:
    xa: source rows [n_a, k] (unit).
    xb: target rows [n_b, k] (unit), other texts.
    ca: source centroids [restarts, c, k].
    cb: target centroids [restarts, c, k].
    cfg: the settings.
    key: PRNG key.

  Returns:
    `(R, start)`: orthogonal R (xa @ R lands in the target space) and the start that won.
  """
  r, _, start = select_start(xa, xb, ca, cb, cfg, key)
  sel = min(cfg.select_iters, cfg.refine_iters)
  return refine(xa, xb, r, cfg.refine_iters - sel, cfg)[0], start


def rank_metrics(src_v: jax.Array, tgt_v: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Top-1 accuracy and mean rank of each val row's true counterpart (cosine, all rows).

  Args:
    src_v: source val rows [n, k].
    tgt_v: target val rows [n, k] (row n is row n's text).
    w: the map [k, k].

  Returns:
    `(top1, mean_rank)`; rank 1 is best; ties count against the true row.
  """
  mapped = _unit(ein("nk,kl->nl", src_v, w))
  s = ein("nl,ml->nm", mapped, _unit(tgt_v))
  true = jnp.diagonal(s)
  rank = 1 + jnp.sum(s > true[:, None], axis=1)
  return jnp.mean(rank == 1), jnp.mean(rank.astype(s.dtype))


def unsupervised_all_pairs(
    train: Sequence[jax.typing.ArrayLike],
    val: Sequence[jax.typing.ArrayLike],
    cfg: UnsupervisedConfig | None = None,
) -> dict:
  """Unsupervised (mini-vec2vec style) maps for every ordered pair, evaluated on val rows.

  Args:
    train: M arrays [N, d_i], row-aligned (the alignment itself uses them unpaired: the
      source half and the target half are disjoint texts).
    val: M arrays [Nv, d_i], row-aligned (evaluation only).
    cfg: the settings; default `UnsupervisedConfig()`.

  Returns:
    `{"methods": METHODS, "k": the common width, "top1": [4, M, M], "mean_rank": [4, M, M],
    "start": [M, M]}` (numpy; method axis in `METHODS` order; NaN on the diagonal; start:
    which start the unsupervised map came from, 0 … restarts−1 a k-means restart's
    anchors, `restarts` the PCA signs, restarts+1 the reverse pair's map transposed, −1
    the diagonal).

  Raises:
    InputError: shape mismatch, non-finite value, fewer than 2 models, or too few rows.
  """
  cfg = cfg or UnsupervisedConfig()
  try:
    gram_lib.check_rows(train, "train", n_rows=int(np.shape(train[0])[0]) if train else None)
    gram_lib.check_rows(val, "val", n_rows=int(np.shape(val[0])[0]) if val else None)
  except ValueError as e:
    raise InputError(str(e)) from None
  m = len(train)
  if m < 2 or len(val) != m:
    raise InputError(f"unsupervised: need ≥ 2 models with train and val rows, got {m}/{len(val)}")
  dims = [int(np.shape(x)[1]) for x in train]
  for i, (x, d) in enumerate(zip(val, dims)):
    if np.shape(x)[1] != d:
      raise InputError(f"val[{i}]: dim {np.shape(x)[1]}, expected {d} (train[{i}]'s)")
  n = int(np.shape(train[0])[0])
  half = min(n // 2, cfg.fit_rows)
  if half < 4 * cfg.clusters:
    raise InputError(
        f"unsupervised: {half} fit rows per side (of {n} train rows) is too few for "
        f"{cfg.clusters} clusters (need ≥ 4 per cluster)"
    )
  k = max(1, min(int(cfg.pca_k), min(dims)))
  top1, mrank, start = _impl(
      tuple(jnp.asarray(x, jnp.float32) for x in train),
      tuple(jnp.asarray(x, jnp.float32) for x in val),
      jnp.asarray(cfg.seed, jnp.uint32),
      k=k,
      cfg=_Frozen(**dataclasses.asdict(cfg)),
  )
  eye = np.eye(m, dtype=bool)
  top1, mrank = np.array(top1, np.float64), np.array(mrank, np.float64)
  top1[:, eye], mrank[:, eye] = np.nan, np.nan
  return {"methods": METHODS, "k": k, "top1": top1, "mean_rank": mrank, "start": np.asarray(start)}


# The settings as a hashable jit static argument: the same fields (and defaults) as
# config.UnsupervisedConfig, frozen.
_Frozen = dataclasses.make_dataclass(
    "_Frozen",
    [(f.name, f.type, f.default) for f in dataclasses.fields(UnsupervisedConfig)],
    frozen=True,
)


@functools.partial(jax.jit, static_argnames=("k", "cfg"))
def _impl(train, val, seed, *, k, cfg):
  m = len(train)
  n = train[0].shape[0]
  if jax.default_backend() == "cpu":
    gram_lib.limit_lapack_threads()
  tr, va = reduce_models(train, val, k)  # [M, N, k], [M, Nv, k]
  key = jax.random.key(seed)
  k_split, k_km, k_rand = jax.random.split(key, 3)
  order = jax.random.permutation(k_split, n)
  half = min(n // 2, cfg.fit_rows)
  h1, h2 = order[:half], order[n // 2 : n // 2 + half]
  src, tgt = tr[:, h1], tr[:, h2]  # source half / target half of every model
  km = lambda x, kk: kmeans(x, cfg.clusters, cfg.kmeans_iters, kk)
  km = jax.vmap(jax.vmap(km, in_axes=(None, 0)))  # over models, then restarts
  r = max(cfg.restarts, 1)
  keys = jax.random.split(k_km, 2 * m * r).reshape(2, m, r)
  cen_src, cen_tgt = km(src, keys[0]), km(tgt, keys[1])  # [M, restarts, c, k]
  pi, pj = (a.ravel() for a in np.indices((m, m)))
  keep = pi != pj
  pi, pj = pi[keep], pj[keep]
  index = {(a, b): t for t, (a, b) in enumerate(zip(pi.tolist(), pj.tolist()))}
  rev = np.asarray([index[b, a] for a, b in zip(pi.tolist(), pj.tolist())])
  pi, pj = jnp.asarray(pi), jnp.asarray(pj)

  keys = jax.random.split(k_rand, pi.shape[0])

  def first(args):  # every start, `select_iters` steps each; the best per ordered pair
    i, j, kk = args
    return select_start(src[i], tgt[j], cen_src[i], cen_tgt[j], cfg, jax.random.fold_in(kk, 1))

  r1, _, start = jax.lax.map(first, (pi, pj, keys))
  sel = min(cfg.select_iters, cfg.refine_iters)

  def one(args):
    i, j, kk, r_own, r_back, st = args
    # the reverse pair's map, transposed, is one more start (j→i ≈ (i→j)ᵀ for rotations)
    _, f_own = refine(src[i], tgt[j], r_own, 0, cfg)
    _, f_back = refine(src[i], tgt[j], r_back.T, 0, cfg)
    use_back = f_back > f_own
    r0 = jnp.where(use_back, r_back.T, r_own)
    r_unsup, _ = refine(src[i], tgt[j], r0, cfg.refine_iters - sel, cfg)
    st = jnp.where(use_back, cfg.restarts + 1, st)
    x, y = tr[i], tr[j]  # paired train rows: the supervised ceiling
    c_xy = ein("nk,nl->kl", x, y)
    r_pro = _polar(c_xy)
    w_ridge = jnp.linalg.solve(ein("nk,nl->kl", x, x) + cfg.ridge_lambda * jnp.eye(k), c_xy)
    q, rr = jnp.linalg.qr(jax.random.normal(kk, (k, k), tr.dtype))
    r_rand = q * jnp.sign(jnp.diagonal(rr))[None, :]  # Haar-distributed orthogonal
    out = [rank_metrics(va[i], va[j], w) for w in (r_unsup, r_pro, w_ridge, r_rand)]
    return jnp.stack([o[0] for o in out]), jnp.stack([o[1] for o in out]), st

  top1, mrank, start = jax.lax.map(one, (pi, pj, keys, r1, r1[rev], start))
  full = lambda v: jnp.full((len(METHODS), m, m), jnp.nan, v.dtype).at[:, pi, pj].set(v.T)
  return full(top1), full(mrank), jnp.full((m, m), -1, jnp.int32).at[pi, pj].set(start)
