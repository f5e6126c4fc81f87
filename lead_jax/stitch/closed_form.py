"""Closed-form stitches for every ordered pair of models at once: ridge λ-path, OLS, Procrustes.

Notation (one dataset, one split).  X̃ = X − μ_A and Ỹ = Y − μ_B are the train rows
centred by their *train* means; C_AA = X̃ᵀX̃, C_AB = X̃ᵀỸ are cross-Gram blocks
(`lead_jax.similarity.gram`).  Val rows are centred by the same train means:
x̃ = x − μ_A, ỹ = y − μ_B, with val Grams G_AA = x̃ᵀx̃, G_AB = x̃ᵀỹ, g_B = diag(ỹᵀỹ)
and column sums s_B = Σ_n ỹ_n.

Ridge with an unpenalised intercept.  Minimising ‖Y − XW − 1b‖² + λ‖W‖² over b gives
b = μ_B − μ_A W; substituting leaves ‖Ỹ − X̃W‖² + λ‖W‖², so

    W_λ = (C_AA + λI)⁻¹ C_AB.

One eigendecomposition C_AA = V diag(s) Vᵀ per *source* serves every target and λ:

    W_λ = V diag(f_λ(s)) Vᵀ C_AB = V diag(f_λ) P,      P = Vᵀ C_AB   [k, d_B]
    f_λ(s) = 1/(s + λ)                         (λ > 0)
    f_0(s) = 1/s if s > rcond·max(s) else 0    (λ = 0: minimum-norm least squares, the
                                                pseudo-inverse with a relative cutoff).

The λ = 0 *path metrics* do not come from f_0: a float32 Gram cannot resolve real
embeddings' dead dimensions (eigenvalue ratios < 1e-16) nor, with a k·eps32 cutoff,
an ill-conditioned source. They come from min-norm least squares on each source's rows
factorised in float64 (`_ols_source`: QR, then a triangular solve, or an SVD of R with
lstsq's cutoff when columns are dependent), one program per source width group; the
chosen stitch at λ = 0, rarely chosen, is f_0's.

When N < d_A the dual is cheaper: K = X̃X̃ᵀ = U diag(s) Uᵀ (N×N) and the nonzero
eigenvectors of C_AA are V = X̃ᵀ U diag(s)^-½, so the same (V, s) interface holds with
k = N.  C_AB lies in range(X̃ᵀ) = span(V), so components outside it vanish for every λ.

Validation SSE for the whole λ-path without predictions.  The residual is r = ỹ − x̃W, so
per target dimension j

    SSE_j(λ) = g_Bj − 2 (Wᵀ G_AB)_jj + (Wᵀ G_AA W)_jj.

With W = V F P (F = diag f_λ), Q = Vᵀ G_AB and M = Vᵀ G_AA V:

    (Wᵀ G_AB)_jj   = Σ_k f_k P_kj Q_kj
    (Wᵀ G_AA W)_jj = Σ_kl f_k f_l M_kl P_kj P_lj.

Only two weighted sums over j are needed: weights 1 (total SSE → MSE, variance-weighted
R²) and ω_j = 1/SST_j (per-dimension-average R²).  Hence per pair, once:

    t = Σ_j ω_j P_kj Q_kj            [k]
    H = M ∘ (P diag(ω) Pᵀ)           [k, k]

and per λ only  Σ_ω SSE(λ) = Σ_j ω_j g_Bj − 2 f_λᵀ t + f_λᵀ H f_λ.  SST_j = g_Bj − s_Bj²/n is
the val variance about the *val* mean (sklearn's r2_score convention), so the
train-mean estimator scores R² = −n‖ȳ_val − μ_B‖²/SST ≈ 0 (exactly 0 on the train split).
That per-pair H is one of three exact routes (`_path_route`, by cost): per column
(F p_j)ᵀ M (F p_j), or the residuals ỹ − x̂ F P themselves for every λ when n_val < k.

The chosen λ (argmin val MSE per pair) is then refitted from its residuals ỹ − x̂ F P:
its MSE and R² come from them (no cancellation when the fit is good), and so do the
metrics without a Gram identity: MAE, explained absolute variation, cosine.

Layout.  The engines hold every model's rows side by side, Z [N, T] (T = ΣD), and are
unrolled over *source* width groups only; each source is fitted to all T target
columns at once and per-target sums are products with a column → model one-hot. So the
compiled program grows with the number of source widths, not of width pairs; the work
that needs a kernel per width pair (Procrustes' SVDs, the spectra) runs after it.

Orthogonal Procrustes.  min ‖X̃R − Ỹ‖ over RᵀR = I after zero-padding the smaller side
to max(d_A, d_B): R = U Vᵀ from the thin SVD C_AB = U Σ Vᵀ (the padded rows/columns
only add zeros), computed by an SVD of C_AB itself (`polar`).  The scaled variant uses
s* = tr Σ / tr C_AA.  Its val SSE comes from the val rows' residuals ỹ − s x̃R.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import threadpoolctl
from jax.sharding import NamedSharding, PartitionSpec

from lead_jax import distributed
from lead_jax.config import ClosedFormConfig, ControlConfig
from lead_jax.distributed import DATA, PAIRS
from lead_jax.similarity import gram as gram_lib
from lead_jax.similarity.gram import Layout, ein
from lead_jax.stitch import metrics

DEFAULT_LAMBDAS = np.asarray(ClosedFormConfig.lambdas)  # 0 and 1e-4 … 1e4, 9 log-spaced
PATH_METRICS = metrics.PATH_METRICS
ROW_METRICS = metrics.ROW_METRICS


# ----------------------------------------------------------------------------- pieces


def default_rcond(k: int, dtype) -> float:
  """Relative eigenvalue cutoff for λ = 0.

  Eigenvalues of a Gram computed in `dtype` carry absolute error ~ k·eps·max(s), so
  smaller ones are noise.

  Args:
    k: the Gram's size (the number of eigenvalues).
    dtype: the dtype it was computed in.

  Returns:
    k·eps(dtype).
  """
  return float(k * np.finfo(np.dtype(dtype)).eps)


def lambda_filter(s: jax.Array, lambdas: jax.Array, rcond: float) -> jax.Array:
  """f_λ(s) for every λ: s [..., k] → [..., L, k].

  f_λ(s) = 1/(s + λ) for λ > 0; f_0(s) = 1/s if s > rcond·max(s) else 0.

  Args:
    s: eigenvalues [..., k] (negative ones are clipped to 0).
    lambdas: the λ-path [L].
    rcond: the relative cutoff for λ = 0.

  Returns:
    The filter factors [..., L, k].
  """
  s = jnp.maximum(s, 0.0)
  smax = jnp.max(s, axis=-1, keepdims=True)
  keep = s > rcond * smax
  pinv = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)
  lam = lambdas.astype(s.dtype)[:, None]
  ridge = 1.0 / (s[..., None, :] + jnp.where(lam > 0, lam, 1.0))
  return jnp.where(lam > 0, ridge, pinv[..., None, :])


def source_eig(c_aa: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Primal: C_AA [m, d, d] = V diag(s) Vᵀ.

  Args:
    c_aa: each member's centred train Gram [m, d, d] (symmetrised here).

  Returns:
    `(V [m, d, d], s [m, d])`.
  """
  s, v = gram_lib.linalg_map(jnp.linalg.eigh, 0.5 * (c_aa + jnp.swapaxes(c_aa, -1, -2)), 1)
  return v, s


def source_eig_dual(xc: jax.Array, rcond: float) -> tuple[jax.Array, jax.Array]:
  """Dual (N < d): K = X̃X̃ᵀ = U s Uᵀ, V = X̃ᵀ U s^-½.

  Args:
    xc: centred train rows [N, m, d].
    rcond: relative cutoff; eigenvalues at or below rcond·max(s) are dropped (V columns
      and s set to 0).

  Returns:
    `(V [m, d, N], s [m, N])`, the nonzero eigenpairs of C_AA.
  """
  k = ein("nap,lap->anl", xc, xc)
  s, u = gram_lib.linalg_map(jnp.linalg.eigh, 0.5 * (k + jnp.swapaxes(k, -1, -2)), 1)
  s = jnp.maximum(s, 0.0)
  keep = s > rcond * jnp.max(s, axis=-1, keepdims=True)
  scale = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, s, 1.0)), 0.0)
  v = ein("nap,anl->apl", xc, u) * scale[:, None, :]
  return v, jnp.where(keep, s, 0.0)


def polar(c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Orthogonal polar factor R = U Vᵀ of c [..., m, n] (thin SVD c = U Σ Vᵀ) and Σ.

  From a thin SVD of c itself, not an eigh of cᵀc: the Gram would square c's condition
  number, and cutting its small eigenvalues would leave a partial isometry instead of
  an orthogonal map. Here R is (semi-)orthogonal to working precision whatever c's rank
  (RᵀR = I for m ≥ n, RRᵀ = I otherwise), so it is the zero-padded Procrustes solution
  and A→B and B→A give the same error for equal widths. Where c is rank deficient (dead
  source dimensions) the completion of R is arbitrary, as is the optimum; it acts only
  on directions the rows do not use.

  Args:
    c: matrices [..., m, n].

  Returns:
    `(R [..., m, n], Σ [..., min(m, n)])`, Σ descending.
  """
  svd = functools.partial(jnp.linalg.svd, full_matrices=False)
  u, sig, vt = gram_lib.linalg_map(svd, c, c.ndim - 2)
  return ein("...ik,...kj->...ij", u, vt), sig


# ----------------------------------------------------------------------------- exact OLS


def _columns(layout: Layout, b: int) -> np.ndarray:
  """The columns of target group b's members in the caller-order concatenation [.., T]."""
  off = _offsets(layout)
  d_b, members = layout.groups[b]
  return np.concatenate([np.arange(off[t], off[t] + d_b) for t in members])


def _ols_targets(y, yv, tmask=None):
  """`_ols_source`'s targets: the train rows centred by their train mean μ (and masked)
  [N, T], and the val rows minus μ [n, T]; computed once per split, shared by every
  source. tmask None: every train row counts (the host path passes a fold's train rows)."""
  if tmask is None:
    mu_y = y.mean(axis=0)
    return y - mu_y, yv - mu_y
  lo = y.dtype
  mu_y = tmask.astype(lo) @ y / tmask.sum().astype(lo)
  return (y - mu_y) * tmask.astype(lo)[:, None], yv - mu_y


def _ols_source(x, xv, targets, tmask, vmask, xp=jnp):
  """Val SSE per target column of min-norm least squares, one source.

  x, xv, tmask and vmask are float64; the targets (`_ols_targets`) are in the engine's
  dtype. The source is factorised in float64, X̃ = QR (Householder QR, backward stable), so
  directions whose variance is float32 rounding noise (dead dimensions, σ ratios ~1e-7)
  are resolved and fitted as `numpy.linalg.lstsq` fits them, which no Gram-based solve
  can do. With R well inside float64's range (every |R_ii| > eps64·max(N, d)·max|R_ii|)
  W = R⁻¹ QᵀỸ by a triangular solve; otherwise (exactly dependent columns) from an SVD
  of R with lstsq's cutoff σ > eps64·max(N, d)·σ_max, the minimum-norm solution. The
  products with the targets (QᵀỸ and the val predictions, the FLOPs that scale with
  ΣD) run in the targets' dtype with Q and W rounded to it: their rounding is relative
  to each entry, not amplified by 1/σ. Train rows with tmask 0 are left out (k-fold;
  tmask None: every row counts); val rows are weighted by vmask.

  Args:
    x: train rows [N, d].
    xv: val rows [n, d].
    targets: `_ols_targets(y, yv, tmask)` for the targets' train rows y [N, T] and val
      rows yv [n, T] (once per split, shared by every source).
    tmask: [N] train row weights (0 or 1), or None.
    vmask: [n] val row weights.
    xp: `jnp` (traced) or `np` (on the host, `_exact_ols` on a CPU backend).

  Returns:
    Σ_n vmask_n (ỹ_n − x̃_n W)² per target column [T], float64.
  """
  yc, yvc = targets
  lo = yc.dtype
  if tmask is None:
    mu_x = x.mean(axis=0)
    xc = x - mu_x
  else:
    mu_x = tmask @ x / xp.sum(tmask)
    xc = (x - mu_x) * tmask[:, None]
  q, r = xp.linalg.qr(xc)
  cut = np.finfo(x.dtype).eps * max(x.shape)
  c = (q.astype(lo).T @ yc).astype(x.dtype)  # [k, T]
  dr = xp.abs(xp.diagonal(r))
  sl = jax.scipy.linalg if xp is jnp else scipy.linalg

  def triangular(_):
    return sl.solve_triangular(r, c, lower=False)

  def min_norm(_):
    u, sig, vt = xp.linalg.svd(r, full_matrices=False)
    keep = sig > cut * sig[0]
    inv = xp.where(keep, 1.0 / xp.where(keep, sig, 1.0), 0.0)
    return vt.T @ (inv[:, None] * (u.T @ c))

  if r.shape[0] != r.shape[1]:  # N < d: rank ≤ N < d, always the minimum-norm solution
    w = min_norm(None)
  elif xp is jnp:
    w = jax.lax.cond(jnp.min(dr) > cut * jnp.max(dr), triangular, min_norm, None)  # [d, T]
  else:
    w = triangular(None) if np.min(dr) > cut * np.max(dr) else min_norm(None)
  res = yvc - ((xv - mu_x).astype(lo) @ w.astype(lo))
  return vmask.astype(lo) @ (res * res)


@jax.jit
def _ols_exact(xs, xvs, y, yv, vidx, tmask, vmask):
  """Min-norm OLS val SSE per target column (float64 factorisation), one group, per fold.

  Args:
    xs: the group's members' train rows, a tuple of [N, d].
    xvs: their val rows, a tuple of [N_v, d] (k-fold: `xs` itself).
    y: all targets' train rows side by side [N, T] (caller order).
    yv: their val rows [N_v, T].
    vidx: per fold the val row indices into xvs / yv [F, n].
    tmask: per fold the train row weights [F, N].
    vmask: per fold the val row weights [F, n].

  Returns:
    [F, m, T] float64.
  """
  f64 = lambda a: a.astype(jnp.float64)
  x, xv = jnp.stack([f64(a) for a in xs]), jnp.stack([f64(a) for a in xvs])

  def fold(args):
    vi, tm, vm = args
    targets = _ols_targets(y, yv[vi], f64(tm))  # once per fold, shared by the sources
    one = lambda a: _ols_source(a[0], a[1][vi], targets, f64(tm), f64(vm)).astype(jnp.float64)
    return jax.lax.map(one, (x, xv))

  return jax.lax.map(fold, (vidx, tmask, vmask))


@jax.jit
def _concat(xs):
  return jnp.concatenate(xs, axis=1)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _no_ols(shape, dtype):
  """NaN ("no exact value") in place of the exact OLS when it is not computed: a device
  array like the real one (numpy on the host, like the host's real one), so the engine's
  compiled program is the same either way."""
  return jnp.full(shape, jnp.nan, dtype)


def _exact_ols(xs, xvs, layout, lambdas, dtype, *, vidx=None, tmask=None, vmask=None):
  """Per source group, the float64 OLS val SSE per target column ([F, m_a, T] in `dtype`).

  NaN when the λ-path has no 0. Without vidx/tmask/vmask: one split (F = 1, all rows).
  """
  n, nv = int(np.shape(xs[0])[0]), int(np.shape(xvs[0])[0])
  if vidx is None:
    vidx, tmask, vmask = np.arange(nv)[None], np.ones((1, n), np.float32), np.ones((1, nv))
  if not np.any(np.asarray(lambdas) == 0):
    full = (lambda shape, dt: np.full(shape, np.nan, dt)) if _on_host() else _no_ols
    return [full((len(vidx), len(m), sum(layout.dims)), np.dtype(dtype)) for _, m in layout.groups]
  if _on_host():  # numpy's LAPACK: the same factorisations, no program to compile
    xs, xvs = distributed.gather((list(xs), list(xvs)))
    y, yv = np.concatenate(xs, axis=1), np.concatenate(xvs, axis=1)
    f64 = lambda a: np.asarray(a, np.float64)
    # Per fold only its train rows (a fold's held-out rows would be zero rows of the
    # QR), and the targets centred once per fold, not once per source.
    rows = [np.flatnonzero(np.asarray(t) > 0) for t in tmask]
    targets = _host_map(lambda f: _ols_targets(y[rows[f]], yv[vidx[f]]), range(len(vidx)))
    jobs = [(f, i) for f in range(len(vidx)) for i in range(len(xs))]
    one = lambda fi: _ols_source(
        f64(xs[fi[1]][rows[fi[0]]]),
        f64(xvs[fi[1]][vidx[fi[0]]]),
        targets[fi[0]],
        None,
        f64(vmask[fi[0]]),
        xp=np,
    )
    sse = dict(zip(jobs, _host_map(one, jobs)))
    return [
        np.asarray([[sse[f, i] for i in members] for f in range(len(vidx))], dtype)
        for _, members in layout.groups
    ]
  y, yv = _concat(tuple(xs)), _concat(tuple(xvs))
  out = []
  with jax.enable_x64(True):
    for _, members in layout.groups:
      sse = _ols_exact(
          tuple(xs[i] for i in members),
          tuple(xvs[i] for i in members),
          y,
          yv,
          jnp.asarray(vidx),
          jnp.asarray(tmask, jnp.float32),
          jnp.asarray(vmask, jnp.float32),
      )
      out.append(sse.astype(dtype))
  return out


# ----------------------------------------------------------------------------- columns
#
# The engines hold every model's rows side by side, Z [N, T] (T = ΣD, caller order), and
# loop in Python over *source* width groups only: for source group a the targets are all
# T columns at once, and per-target sums are products with the [T, M] one-hot column →
# model map. The per-(source, target) width-pair work that cannot be written that way
# (Procrustes' SVDs, the spectra's eigvalsh) runs after the engine in `_pair_block`: on
# the host with numpy's LAPACK on a CPU backend, where it costs no compile, and as one
# small jitted program per width pair on accelerators. The engine's kernel count then
# grows with the number of source widths, not with the number of width pairs.


def _offsets(layout: Layout) -> np.ndarray:
  """The caller-order column offsets of the models in Z, [M + 1]."""
  return np.concatenate([[0], np.cumsum(layout.dims)]).astype(np.int64)


class _Seg(NamedTuple):
  """Z's columns → models: `cols` [T, M] one-hot; `chunks` [T/c, M], the same for blocks
  of c columns, c the widths' gcd (each block lies inside one model)."""

  cols: jax.Array
  chunks: jax.Array
  c: int


def _segments(layout: Layout, dtype) -> _Seg:
  """The one-hots of `_Seg`, from an iota (no [T, M] literal in the program)."""
  off = _offsets(layout).astype(np.int32)
  c = int(np.gcd.reduce(np.asarray(layout.dims)))

  def onehot(rows, step):
    i = jax.lax.broadcasted_iota(jnp.int32, (rows, len(layout.dims)), 0) * step
    return ((i >= off[None, :-1]) & (i < off[None, 1:])).astype(dtype)

  return _Seg(onehot(int(off[-1]), 1), onehot(int(off[-1]) // c, c), c)


def _segsum(x: jax.Array, seg: _Seg) -> jax.Array:
  """Σ over each model's columns: [..., T] → [..., M].

  In two steps: a reduction within blocks of c columns, then the block one-hot's
  product. A product with the [T, M] one-hot alone accumulates up to d terms in one
  float32 running sum (4.6e-7 relative on a 1,536-wide target's Σ ỹ², against 6e-8
  for a reduction), and R² near 0 amplifies that (1.3e-4 relative at λ = 1e3 in
  `bench_closed_form`).
  """
  blocks = jnp.sum(x.reshape(x.shape[:-1] + (x.shape[-1] // seg.c, seg.c)), axis=-1)
  return ein("...u,um->...m", blocks, seg.chunks)


def _to_cols(x: jax.Array, seg: _Seg) -> jax.Array:
  """Per-model values onto the model's columns: [..., M] → [..., T] (exact: a one-hot)."""
  return ein("...m,tm->...t", x, seg.cols)


def _group_cols(x, layout: Layout, a: int, xp=jnp):
  """x [..., T] → source group a's members' columns, [..., m_a, d_a]."""
  off = _offsets(layout)
  d, members = layout.groups[a]
  return xp.stack([x[..., off[i] : off[i] + d] for i in members], axis=-2)


def _gram(z: jax.Array, parts: int = 4) -> jax.Array:
  """zᵀz [..., T, T] for z [..., N, T] from its upper block triangle.

  `parts` row blocks, each against the columns from its own on: (q + 1)/2q of the full
  product's flops (62.5 % for q = 4), in q products however many models there are.
  """
  t = z.shape[-1]
  cuts = np.linspace(0, t, min(parts, t) + 1).astype(int)
  q = len(cuts) - 1
  upper = [
      ein("...ni,...nj->...ij", z[..., cuts[i] : cuts[i + 1]], z[..., cuts[i] :]) for i in range(q)
  ]
  rows = []
  for i in range(q):
    left = [
        jnp.swapaxes(upper[j][..., cuts[i] - cuts[j] : cuts[i + 1] - cuts[j]], -1, -2)
        for j in range(i)
    ]
    rows.append(jnp.concatenate(left + [upper[i]], axis=-1))
  return jnp.concatenate(rows, axis=-2)


def _group_rows(c: jax.Array, layout: Layout, a: int) -> jax.Array:
  """c [..., T, T] → source group a's members' rows, [..., m_a, d_a, T]."""
  off = _offsets(layout)
  d, members = layout.groups[a]
  return jnp.stack([c[..., off[i] : off[i] + d, :] for i in members], axis=-3)


def _self_blocks(ca: jax.Array, layout: Layout, a: int) -> jax.Array:
  """ca [m_a, d_a, T] (group a's rows of the centred train Gram) → members' own blocks."""
  off = _offsets(layout)
  d, members = layout.groups[a]
  return jnp.stack([ca[j, :, off[i] : off[i] + d] for j, i in enumerate(members)])


# ----------------------------------------------------------------------------- core


def _target_stats(sp: dict, seg: jax.Array) -> dict:
  """Per val column the weight ω_j = 1/SST_j (0 on near-constant dims); per model the sums."""
  g, sv, nv = sp["g"], sp["sv"], sp["nv"]
  sst = g - sv**2 / nv
  smax = jnp.max(jnp.where(seg.cols > 0, sst[:, None], -jnp.inf), axis=0)  # [M]
  ok = sst > metrics.CONST_DIM_RTOL * _to_cols(smax, seg)
  w = jnp.where(ok, 1.0 / jnp.where(ok, sst, 1.0), 0.0)
  return {
      "w": w,
      "n_valid": _segsum(ok.astype(g.dtype), seg),
      "sst_tot": _segsum(sst, seg),
      "ssy": _segsum(g, seg),
      "ssy_w": _segsum(w * g, seg),
  }


# Per source member, the λ-path's val SSE costs (flops, up to a common factor):
#   "direct"  residuals ỹ − x̂ F_λ P for every λ          L·n·k·T   (no cancellation)
#   "gram"    (F p_j)ᵀ M (F p_j) per column, M = x̂ᵀ x̂     L·k²·T
#   "pairs"   H_B = M ∘ P_B Ω P_Bᵀ once per target model  2·k²·T, but a few kernels per
#             (source, target) width-group pair, so its compile grows with the pairs.
# XLA:CPU compiles ~12 ms per kernel (BUILD_NOTES §7.1), ~5 kernels per pair: at ~100
# GFLOP/s that is ~6 GFLOP of arithmetic, so "pairs" is taken only when it saves more.
_PAIR_KERNEL_FLOPS_CPU = 6e9
_PAIR_KERNEL_FLOPS_ACCEL = 3e12  # ~60 ms of compile at tens of TFLOP/s


def _path_route(n: int, k: int, m: int, t: int, n_lambdas: int, n_groups: int) -> str:
  """The cheapest of `_source_path`'s routes for a source group (see the table above)."""
  per_kernel = _PAIR_KERNEL_FLOPS_CPU if _on_host() else _PAIR_KERNEL_FLOPS_ACCEL
  cost = {
      "direct": m * n_lambdas * n * k * t,
      "gram": m * (n_lambdas * k * k * t + n * k * k),
      "pairs": m * (2 * k * k * t + n * k * k) + per_kernel * n_groups,
  }
  return min(cost, key=cost.get)


def _source_path(ca, eig, xva, sp, tg, seg, lambdas, rcond, ols_a, dvec, layout):
  """Val SSE of one source group to every target model over the λ-path.

  Args:
    ca: the group's rows of the centred train Gram, [m, d, T].
    eig: `(V [m, d, k], s [m, k])`.
    xva: the group's centred val rows [n, m, d].
    sp: the split: `xv` [n, T] (centred, masked val rows), g, sv, nv, mu.
    tg: `_target_stats(sp)`.
    seg: the [T, M] one-hot.
    lambdas: [L].
    rcond: the λ = 0 cutoff.
    ols_a: the float64 min-norm OLS val SSE per target column [m, T] (NaN: none).
    dvec: [M] the target widths.
    layout: the grouping.

  Returns:
    {sse, ssew: [m, M, L] (Σ_j SSE_j, Σ_j ω_j SSE_j), exact0 [m, M] (λ = 0's values are
    the exact OLS ones), p [m, k, T] (P), filt [m, L, k], xh [m, n, k] (x̂, the val rows
    in the eigenbasis)}.
  """
  v, s = eig
  filt = lambda_filter(s, lambdas, rcond)  # [m, L, k]
  p = ein("mdk,mdt->mkt", v, ca)  # P = Vᵀ C_AB, every target column at once
  xh = ein("nmd,mdk->mnk", xva, v)  # x̂ = x̃_v V
  (m, n, k), t = xh.shape, p.shape[-1]
  route = _path_route(n, k, m, t, len(lambdas), len(layout.groups))
  w = tg["w"]
  if route == "direct":

    def one(f):  # one λ, f [m, k]: Σ_n (ỹ − x̂ F p)² per column, then per target
      e = sp["xv"][None] - ein("mnk,mkt->mnt", xh, f[..., None] * p)
      e2 = jnp.sum(e * e, axis=1)
      return _segsum(e2, seg), _segsum(e2 * w, seg)

    sse, ssew = (jnp.moveaxis(a, 0, -1) for a in jax.lax.map(one, jnp.moveaxis(filt, 1, 0)))
  else:
    pq = p * ein("mnk,nt->mkt", xh, sp["xv"])  # P ∘ Q, Q = x̂ᵀ ỹ
    lin = lambda wt: ein("mlk,mkb->mbl", filt, _segsum(pq * wt, seg))  # fᵀ t per target
    mv = ein("mnk,mnl->mkl", xh, xh)  # M = x̂ᵀ x̂
    if route == "gram":

      def one(f):  # (F p_j)ᵀ M (F p_j) per column, then per target
        fp = f[..., None] * p
        qc = jnp.sum(fp * ein("mkl,mlt->mkt", mv, fp), axis=1)
        return _segsum(qc, seg), _segsum(qc * w, seg)

      quad, quadw = (jnp.moveaxis(a, 0, -1) for a in jax.lax.map(one, jnp.moveaxis(filt, 1, 0)))
    else:  # "pairs": H = M ∘ (P_B Ω P_Bᵀ) per target model, fᵀ H f per λ
      quad, quadw = [], []
      for b, (d_b, mem_b) in enumerate(layout.groups):
        cols = _columns(layout, b)
        pb = p[:, :, cols].reshape(m, k, len(mem_b), d_b)
        wb = jnp.stack([jnp.ones_like(w[cols]), w[cols]]).reshape(2, len(mem_b), d_b)
        h = ein("mkbj,zbj,mlbj->zmbkl", pb, wb, pb) * mv[None, :, None]
        qb = ein("mLk,zmbkl,mLl->zmbL", filt, h, filt)
        quad.append(qb[0])
        quadw.append(qb[1])
      inv = np.asarray(layout.inverse)
      quad, quadw = (jnp.concatenate(q, axis=1)[:, inv] for q in (quad, quadw))
    sse = tg["ssy"][None, :, None] - 2.0 * lin(1.0) + quad
    ssew = tg["ssy_w"][None, :, None] - 2.0 * lin(w) + quadw
  have = ~jnp.isnan(ols_a)
  exact = jnp.where(have, ols_a, 0.0).astype(sse.dtype)
  full = _segsum(have.astype(sse.dtype), seg) == dvec  # an exact value for every column
  at0 = (lambdas == 0)[None, None, :] & full[..., None]
  sse = jnp.where(at0, _segsum(exact, seg)[..., None], sse)
  ssew = jnp.where(at0, _segsum(exact * w, seg)[..., None], ssew)
  return {"sse": sse, "ssew": ssew, "exact0": full, "p": p, "filt": filt, "xh": xh}


def _source_chosen(path, idx, v, mu, mu_a, seg, xv, w_cols, rows):
  """One source group's stitch to every target at the chosen λ, and its row sums.

  Args:
    path: `_source_path`'s output.
    idx: [m, M] the chosen λ index per pair.
    v: V [m, d, k].
    mu: the train means [T]; mu_a: the group's, [m, d].
    seg: the [T, M] one-hot.
    xv: the centred, masked val rows [n, T].
    w_cols: ω per val column [T].
    rows: None, or (y [n, T] raw val rows, mask [n], med [T] val medians).

  Returns:
    {W [m, d, T], b [m, T], bias_sq [m, M] (‖b‖²), dp [m, k, T] (F P at the chosen λ),
    ch_sse, ch_ssew [m, M] (the chosen stitch's val SSE from its residuals), with rows:
    sabs [m, M] (Σ_n mask·|y − ŷ|₁), cos [m, M] (Σ_n mask·cos(ŷ, y))}.
  """
  f = jnp.take_along_axis(path["filt"][:, None], idx[:, :, None, None], axis=2)[:, :, 0]
  dp = ein("mbk,tb->mkt", f, seg.cols) * path["p"]  # [m, k, T]
  w = ein("mdk,mkt->mdt", v, dp)
  bias = mu[None] - ein("md,mdt->mt", mu_a, w)  # μ_B − μ_A W
  out = {"W": w, "b": bias, "bias_sq": _segsum(bias * bias, seg), "dp": dp}
  # The chosen stitch's SSE from its residuals ỹ − x̂ F P (one λ: n·k·T): the path's
  # Gram identity ‖ỹ‖² − 2fᵀt + fᵀHf cancels when the fit is good, these do not.
  err = xv[None] - ein("mnk,mkt->mnt", path["xh"], dp)  # [m, n, T]; 0 on masked rows
  e2 = jnp.sum(err * err, axis=1)
  out["ch_sse"], out["ch_ssew"] = _segsum(e2, seg), _segsum(e2 * w_cols, seg)
  if rows is not None:
    y, mask, _ = rows
    pred = y - err  # ŷ = μ_B + x̂ F P
    out["sabs"] = _segsum(ein("mnt,n->mt", jnp.abs(err), mask), seg)
    dot, pn = _segsum(pred * y, seg), _segsum(pred * pred, seg)  # [m, n, M]
    cos = dot / (jnp.sqrt(pn * _segsum(y * y, seg)) + 1e-30)
    out["cos"] = ein("mnb,n->mb", cos, mask)
  return out


def _controls(sp, tg, seg, rows):
  """Sums for the train-mean (ŷ = μ_B) and zero (ŷ = 0) predictors, per target model."""
  g, mu, sv, nv = sp["g"], sp["mu"], sp["sv"], sp["nv"]
  zero = g + 2.0 * mu * sv + nv * mu**2  # Σ (ỹ + μ)²
  out = {
      "mean_sse": tg["ssy"],
      "mean_ssew": tg["ssy_w"],
      "zero_sse": _segsum(zero, seg),
      "zero_ssew": _segsum(zero * tg["w"], seg),
  }
  if rows is not None:
    y, mask, med = rows
    colsum = lambda x: _segsum(mask @ x, seg)
    out["dev"] = colsum(jnp.abs(y - med))  # Σ mask·|y − med|, EAV's denominator
    out["mean_sabs"] = colsum(jnp.abs(y - mu))
    out["zero_sabs"] = colsum(jnp.abs(y))
    cos = _segsum(y * mu, seg) / (jnp.sqrt(_segsum(mu * mu, seg) * _segsum(y * y, seg)) + 1e-30)
    out["mean_cos"] = mask @ cos
  return out


def _choose(mse):
  """argmin over λ (the last axis) of val MSE, NaN-safe."""
  return jnp.argmin(jnp.where(jnp.isnan(mse), jnp.inf, mse), axis=-1)


def _split_paths(sp, ca, eig, lambdas, layout, rc, ols, seg):
  """Every source group's λ-path on one split.

  Returns:
    `(paths, tabs, mse)`: per source group `_source_path`'s output; the pair sums sse,
    ssew [M, M, L] (caller order) with the per-target sums; val MSE [M, M, L].
  """
  tg = _target_stats(sp, seg)
  dvec = jnp.asarray(layout.dims, sp["g"].dtype)
  paths = [
      _source_path(
          ca[a],
          eig[a],
          _group_cols(sp["xv"], layout, a),
          sp,
          tg,
          seg,
          lambdas,
          rc[a],
          ols[a],
          dvec,
          layout,
      )
      for a in range(len(layout.groups))
  ]
  rows = lambda k: gram_lib.to_caller_order(
      jnp.concatenate([p[k] for p in paths], axis=0), layout, axes=1
  )
  tabs = {k: rows(k) for k in ("sse", "ssew", "exact0")} | tg
  return paths, tabs, tabs["sse"] / (sp["nv"] * dvec)[None, :, None]


def _split_chosen(sp, ca, eig, paths, tabs, idx, layout, seg, rows, procrustes, spectra):
  """What an engine hands back for one split (see `_results`)."""
  out = {k: tabs[k] for k in ("sse", "ssew", "sst_tot", "n_valid", "w", "exact0")}
  out.update(idx=idx, g=sp["g"], mu=sp["mu"], nv=sp["nv"], W=[], b=[])
  per_pair = {}
  for a, (_, members) in enumerate(layout.groups):
    mu_a = _group_cols(sp["mu"], layout, a)
    ch = _source_chosen(
        paths[a],
        idx[np.asarray(members)],
        eig[a][0],
        sp["mu"],
        mu_a,
        seg,
        sp["xv"],
        tabs["w"],
        rows,
    )
    out["W"].append(ch.pop("W"))
    out["b"].append(ch.pop("b"))
    if spectra:
      out.setdefault("dp", []).append(ch["dp"])
    del ch["dp"]
    for k, x in ch.items():
      per_pair.setdefault(k, []).append(x)
  inv = np.asarray(layout.inverse)
  out.update({k: jnp.concatenate(xs, axis=0)[inv] for k, xs in per_pair.items()})
  out.update(_controls(sp, tabs, seg, rows))
  if procrustes:
    out["ca"], out["xv"] = list(ca), sp["xv"]
    out["tr_aa"] = [
        jnp.trace(_self_blocks(ca[a], layout, a), axis1=1, axis2=2)
        for a in range(len(layout.groups))
    ]
  return out


def _rcond(layout, dtype, rcond, ks):
  return tuple(float(rcond) if rcond is not None else default_rcond(k, dtype) for k in ks)


# Both engines (`_fit_impl`, `_cv_impl`) are jitted with the same static options: the
# layout and everything that changes the traced program's shape or branches. Seeds and
# the λ-path are not among them: the Gaussian control's rows and the val medians come
# from the small programs below, so a new seed reuses the compiled engine, and the
# engine has no host callback (the persistent compilation cache can store it).


@functools.partial(jax.jit, static_argnums=(0, 1, 3, 4))
def _control_rows(n_rows, dim, seed, dtype, sharding):
  g = gram_lib.gaussian_control(n_rows, dim, seed, dtype)
  return g if sharding is None else jax.lax.with_sharding_constraint(g, sharding)


def _append_control(xs_lists, control_dim, seed, dtype, mesh):
  """Each list of row arrays with its slice of one seeded control stream appended.

  Train rows come first, then val rows (`gram.control_split`). On a mesh the rows are a
  replicated global array, like the models' rows (`distributed.engine_inputs`).
  """
  if not control_dim:
    return [list(xs) for xs in xs_lists]
  sharding = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None
  ns = [int(np.shape(xs[0])[0]) for xs in xs_lists]
  g = _control_rows(
      sum(ns), int(control_dim), jnp.asarray(seed, jnp.uint32), np.dtype(dtype), sharding
  )
  starts = np.cumsum([0] + ns)
  return [list(xs) + [g[a:b]] for xs, a, b in zip(xs_lists, starts[:-1], starts[1:])]


@jax.jit
def _medians_dev(xs):
  return [metrics.masked_median(x) for x in xs]


@jax.jit
def _fold_medians_dev(xs, idx, mask):
  one = lambda x, i, m: metrics.masked_median(x[i], m)
  return [jax.vmap(one, in_axes=(None, 0, 0))(x, idx, mask.astype(x.dtype)) for x in xs]


# On a CPU backend the medians are numpy's partition on the host, outside any program:
# XLA's CPU sort is ~10× slower, and a host callback inside a program deadlocked when the
# process had one core (the callback's argument transfer waits on the one busy CPU thread).


def _medians(xs):
  """Per model, the per-dimension median of its rows ([d])."""
  if not _on_host():
    return _medians_dev(tuple(xs))
  return [np.median(x, axis=0).astype(x.dtype) for x in distributed.gather(list(xs))]


def _fold_medians(xs, idx, mask):
  """Per model and fold, the per-dimension median of the fold's rows ([K, d])."""
  if not _on_host():
    return _fold_medians_dev(tuple(xs), jnp.asarray(idx), jnp.asarray(mask))
  idx, mask = np.asarray(idx), np.asarray(mask)
  return [
      np.stack([np.median(x[i[m > 0]], axis=0) for i, m in zip(idx, mask)]).astype(x.dtype)
      for x in distributed.gather(list(xs))
  ]


_jit_engine = functools.partial(
    jax.jit,
    static_argnames=(
        "layout",
        "rcond",
        "procrustes",
        "spectra",
        "predictions",
        "mesh",
    ),
)


# ----------------------------------------------------------------------------- after the engine


def _singular_values(x, xp):
  """Singular values (descending) of x [..., m, n] from eigvalsh of the smaller Gram."""
  m, n = x.shape[-2:]
  xt = xp.swapaxes(x, -1, -2)
  g = x @ xt if m <= n else xt @ x
  if xp is jnp:
    ev = gram_lib.linalg_map(jnp.linalg.eigvalsh, g, x.ndim - 2)
  else:
    ev = np.linalg.eigvalsh(g)
  return xp.sqrt(xp.maximum(ev, 0.0))[..., ::-1]


def _pair_block(xp, a, b, layout, ca, dp, xv, g, w, tr_aa, procrustes, spectra, rot=None):
  """Procrustes' val sums and the spectra of one (source, target) width-group pair.

  Written once for numpy (`xp=np`, on the host: a CPU backend, no compile) and for
  jax.numpy (jitted per width pair on accelerators).

  Args:
    xp: `np` or `jnp`.
    a, b: the source and target group.
    layout: the grouping.
    ca: group a's rows of the centred train Gram [m_a, d_a, T].
    dp: group a's F P at the chosen λ [m_a, k, T] (spectra) or None.
    xv: the centred (masked) val rows [n, T].
    g, w: per val column Σ ỹ² and ω [T].
    tr_aa: tr C_AA per member of a [m_a].
    procrustes, spectra: what to compute.
    rot: None, or (host) `_rotations`' {(i, j): (R_ij, σ_ij)} for the block's pairs.

  Returns:
    {procrustes / procrustes_scaled: (Σ SSE, Σ ω SSE, scale), each [m_a, m_b];
    spectrum: [m_a, m_b, min(k, d_b)]}.
  """
  cols_b = _columns(layout, b)
  (d_a, mem_a), (d_b, mem_b) = layout.groups[a], layout.groups[b]
  m_a, m_b = len(mem_a), len(mem_b)
  out = {}
  if procrustes:
    if rot is None:
      c = xp.transpose(ca[:, :, cols_b].reshape(m_a, d_a, m_b, d_b), (0, 2, 1, 3))
      u, sig, vt = xp.linalg.svd(c, full_matrices=False)
      r = u @ vt  # the polar factor: (semi-)orthogonal whatever c's rank (`polar`)
    else:  # a model with itself: zeros (its entries are NaN-filled in `_finish`)
      none = (np.zeros((d_a, d_b), ca.dtype), np.zeros(min(d_a, d_b), ca.dtype))
      rs = [[rot.get((i, j), none) for j in mem_b] for i in mem_a]
      r, sig = (np.asarray([[x[q] for x in row] for row in rs]) for q in (0, 1))
    xa = xp.swapaxes(_group_cols(xv, layout, a, xp), 0, 1)  # [m_a, n, d_a]
    yb = xp.swapaxes(_group_cols(xv, layout, b, xp), 0, 1)  # [m_b, n, d_b]
    pred = xa[:, None] @ r  # [m_a, m_b, n, d_b]
    cross, quad = xp.sum(pred * yb[None], axis=2), xp.sum(pred * pred, axis=2)
    gb, wb = g[cols_b].reshape(m_b, d_b)[None], w[cols_b].reshape(m_b, d_b)[None]
    scale = xp.sum(sig, axis=-1) / tr_aa[:, None]
    for name, sc in (("procrustes", xp.ones_like(scale)), ("procrustes_scaled", scale)):
      sse_j = gb - 2.0 * sc[..., None] * cross + sc[..., None] ** 2 * quad
      out[name] = (xp.sum(sse_j, -1), xp.sum(wb * sse_j, -1), sc)
  if spectra:
    k = dp.shape[1]
    d = xp.transpose(dp[:, :, cols_b].reshape(m_a, k, m_b, d_b), (0, 2, 1, 3))
    out["spectrum"] = _singular_values(d, xp)
  return out


_pair_block_jit = jax.jit(
    functools.partial(_pair_block, jnp),
    static_argnames=("a", "b", "layout", "procrustes", "spectra"),
)


def _host_map(fn, items) -> list:
  """[fn(x) for x in items] on a thread per core, numpy's BLAS at one thread each.

  The items are LAPACK-bound (SVDs, QRs), which parallelise poorly inside OpenBLAS:
  side by side, one thread each, they ran ~2.5× faster on 2 cores (BUILD_NOTES §7.2).
  """
  with (
      threadpoolctl.threadpool_limits(1, user_api="blas"),
      concurrent.futures.ThreadPoolExecutor(_cores()) as pool,
  ):
    return list(pool.map(fn, items))


def _cores() -> int:
  """The cores this process may run on (its affinity mask, not the machine's count)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _on_host() -> bool:
  """Per-pair linear algebra and result assembly in numpy (a CPU backend: no compile)."""
  return jax.default_backend() == "cpu"


def _rotations(ca, layout) -> dict:
  """Procrustes' polar factor R_ij and singular values σ_ij of every ordered model pair
  i ≠ j, on the host: one SVD per unordered pair, C_ji = C_ijᵀ giving R_ji = R_ijᵀ.

  Args:
    ca: per source group its rows of the centred train Gram [m_a, d_a, T] (numpy).
    layout: the grouping.

  Returns:
    {(i, j): (R [d_i, d_j], σ [min(d_i, d_j)])}.
  """
  off = _offsets(layout)
  where = {i: (a, k) for a, (_, mem) in enumerate(layout.groups) for k, i in enumerate(mem)}
  n_m = layout.n_models

  def one(ij):
    i, j = ij
    a, k = where[i]
    u, sig, vt = np.linalg.svd(ca[a][k, :, off[j] : off[j + 1]], full_matrices=False)
    return u @ vt, sig

  todo = [(i, j) for i in range(n_m) for j in range(i + 1, n_m)]
  out = {}
  for (i, j), (r, sig) in zip(todo, _host_map(one, todo)):
    out[i, j], out[j, i] = (r, sig), (r.T, sig)
  return out


def _pairs(raw, dev, layout, procrustes, spectra):
  """`_pair_block` for every group pair; [M, M] (caller order) numpy results."""
  if not (procrustes or spectra):
    return {}
  host = _on_host()  # `_results` hands numpy copies then
  n_m = layout.n_models
  out = {}
  if procrustes:
    for name in ("procrustes", "procrustes_scaled"):
      out[name] = [np.full((n_m, n_m), np.nan, raw["g"].dtype) for _ in range(3)]
  if spectra:
    out["spectrum"] = np.full((n_m, n_m, max(layout.dims)), np.nan, raw["g"].dtype)
  todo = [
      (a, b)
      for a, (_, mem_a) in enumerate(layout.groups)
      for b in range(len(layout.groups))
      if not (a == b and len(mem_a) == 1)  # the model with itself only (NaN-filled)
  ]

  rot = _rotations(dev["ca"], layout) if host and procrustes else None

  def one(ab):
    a, b = ab
    args = dict(
        a=a,
        b=b,
        layout=layout,
        ca=dev["ca"][a] if procrustes else None,
        dp=dev["dp"][a] if spectra else None,
        xv=dev["xv"] if procrustes else None,
        g=raw["g"],
        w=raw["w"],
        tr_aa=dev["tr_aa"][a] if procrustes else None,
        procrustes=procrustes,
        spectra=spectra,
    )
    return _pair_block(np, rot=rot, **args) if host else distributed.gather(_pair_block_jit(**args))

  results = _host_map(one, todo) if host else [one(ab) for ab in todo]
  for (a, b), res in zip(todo, results):
    mem_a, mem_b = layout.groups[a][1], layout.groups[b][1]
    ix = np.ix_(np.asarray(mem_a), np.asarray(mem_b))
    for name in ("procrustes", "procrustes_scaled"):
      if name in res:
        for dst, src in zip(out[name], res[name]):
          dst[ix] = src
    if "spectrum" in res:
      sig = res["spectrum"]
      out["spectrum"][ix + (slice(0, sig.shape[-1]),)] = sig
  return out


def _finish(raw, pairs, layout, lambdas, ks, procrustes, spectra, predictions):
  """One split's results tree (numpy, caller order) from the engine's sums.

  Args:
    raw: host copies of the engine's per-pair and per-target sums for this split.
    pairs: `_pairs`' output.
    layout: the grouping.
    lambdas: the λ-path [L] (numpy, the engine's dtype).
    ks: per model, its eigenbasis size k as a source.
    procrustes, spectra, predictions: what was computed.

  Returns:
    The tree `fit_all_pairs` documents, without stitches and meta.
  """
  dtype = raw["g"].dtype
  dims = np.asarray(layout.dims).astype(dtype)
  n_m = len(dims)
  nv = raw["nv"]
  diag = np.eye(n_m, dtype=bool)

  def nan_diag(x):
    x = np.asarray(x)
    return np.where(diag.reshape(diag.shape + (1,) * (x.ndim - 2)), np.nan, x).astype(x.dtype)

  def summ(sse, ssew, extra):
    t = (None, slice(None)) + (None,) * extra
    return metrics.sse_summaries(sse, ssew, raw["sst_tot"][t], raw["n_valid"][t], nv, dims[t])

  path = summ(raw["sse"], raw["ssew"], 1)
  res = {"lambdas": lambdas, "ridge": {m: nan_diag(path[m]) for m in PATH_METRICS}}
  idx = np.asarray(raw["idx"])
  ch = {"lambda_index": nan_diag(idx.astype(lambdas.dtype))}
  ch["lambda"] = nan_diag(lambdas[idx])
  # The chosen λ's metrics from the stitch's own residuals, except at an exact-OLS λ = 0,
  # whose values are the float64 least-squares ones (the stitch W there is f_0's).
  direct = summ(raw["ch_sse"], raw["ch_ssew"], 0)
  exact = raw["exact0"] & (lambdas[idx] == 0)
  for m in PATH_METRICS:
    at = np.take_along_axis(path[m], idx[..., None], -1)[..., 0]
    ch[m] = nan_diag(np.where(exact, at, direct[m]))
  off = _offsets(layout)[:-1]
  tmn = np.sqrt(np.add.reduceat(raw["mu"] ** 2, off)).astype(raw["mu"].dtype)
  ch["bias_norm"] = nan_diag(np.sqrt(raw["bias_sq"]))
  ch["target_mean_norm"] = nan_diag(np.broadcast_to(tmn[None], (n_m, n_m)))
  ch["bias_ratio"] = nan_diag(np.sqrt(raw["bias_sq"]) / tmn[None])
  if spectra:
    sig = pairs["spectrum"]
    k = np.asarray(ks, dtype)[:, None]  # per source
    extra = np.maximum(dims[None] - np.minimum(k, dims[None]), 0)
    dev2 = np.nansum((sig**2 - 1.0) ** 2, -1)
    ch["orth_dev"] = nan_diag(np.sqrt(dev2 + extra) / np.sqrt(dims[None]))
    ch["orth_dev_min"] = nan_diag(np.sqrt(dev2 / np.minimum(dims[:, None], dims[None])))
  if predictions:
    ch["mae"] = nan_diag(raw["sabs"] / (nv * dims[None]))
    ch["eav"] = nan_diag(1.0 - raw["sabs"] / raw["dev"][None])
    ch["cos"] = nan_diag(raw["cos"] / nv)
  res["chosen"] = ch
  if spectra:
    res["spectra"] = nan_diag(pairs["spectrum"])
  if procrustes:
    for name in ("procrustes", "procrustes_scaled"):
      sse, ssew, scale = pairs[name]
      res[name] = {k: nan_diag(v) for k, v in summ(sse, ssew, 0).items()}
      res[name]["scale"] = nan_diag(scale)
  ctrl = {}
  for name, key in (("train_mean", "mean"), ("zero", "zero")):
    ctrl[name] = dict(
        metrics.sse_summaries(
            raw[f"{key}_sse"], raw[f"{key}_ssew"], raw["sst_tot"], raw["n_valid"], nv, dims
        )
    )
    if predictions:
      sabs = raw[f"{key}_sabs"]
      ctrl[name]["mae"] = sabs / (nv * dims)
      ctrl[name]["eav"] = 1.0 - sabs / raw["dev"]
      ctrl[name]["cos"] = (
          raw["mean_cos"] / nv if key == "mean" else np.full(n_m, np.nan, sabs.dtype)
      )
  res["controls"] = {n: {k: np.asarray(v, dtype) for k, v in d.items()} for n, d in ctrl.items()}
  tree = {k: v for k, v in res.items() if k != "lambdas"}
  return {"lambdas": lambdas, **jax.tree.map(lambda x: np.asarray(x, dtype), tree)}


# ----------------------------------------------------------------------------- single split


@_jit_engine
def _fit_impl(
    train,
    val,
    lambdas,
    med,
    ols,
    *,
    layout,
    rcond,
    procrustes,
    spectra,
    predictions,
    mesh=None,
):
  ntr, nv = train[0].shape[0], val[0].shape[0]
  dtype = train[0].dtype
  side = lambda xs: gram_lib.constrain(jnp.concatenate(xs, axis=1), mesh, DATA, None)
  z, zv = side(train), side(val)
  mu = jnp.mean(z, axis=0)
  xc = gram_lib.constrain(z - mu, mesh, DATA, None)
  xv = gram_lib.constrain(zv - mu, mesh, DATA, None)
  seg = _segments(layout, dtype)
  sp = {
      "xv": xv,
      "g": jnp.sum(xv * xv, axis=0),
      "sv": jnp.sum(xv, axis=0),
      "nv": jnp.asarray(nv, dtype),
      "mu": mu,
  }
  c = _gram(xc)  # the centred train Gram of every model with every model, [T, T]
  ca, eig = [], []
  for a, (d_a, _) in enumerate(layout.groups):
    xa = _group_cols(xc, layout, a)  # [N, m, d]
    ca.append(gram_lib.constrain(_group_rows(c, layout, a), mesh, None, None, PAIRS))
    if ntr < d_a:
      eig.append(source_eig_dual(xa, rcond if rcond is not None else default_rcond(ntr, dtype)))
    else:
      eig.append(source_eig(_self_blocks(ca[-1], layout, a)))
  rc = _rcond(layout, dtype, rcond, [e[0].shape[-1] for e in eig])
  ols = [o[0] for o in ols]
  paths, tabs, mse = _split_paths(sp, ca, eig, lambdas, layout, rc, ols, seg)
  rows = (zv, jnp.ones(nv, dtype), jnp.concatenate(med)) if predictions else None
  return _split_chosen(
      sp, ca, eig, paths, tabs, _choose(mse), layout, seg, rows, procrustes, spectra
  )


_BIG = ("W", "b", "dp", "ca", "xv", "tr_aa")  # per source group / per row: `_pairs`, stitches


def _small(out):
  """Host copies of an engine output's sums (everything but the per-group arrays)."""
  return distributed.gather({k: v for k, v in out.items() if k not in _BIG})


def _results(out, small, layout, lambdas, ks, procrustes, spectra, predictions, fold=None):
  """The results tree of one split (of fold f of a k-fold engine output with `fold=f`)."""
  pick = (lambda x: x) if fold is None else (lambda x: x[fold])
  small = jax.tree.map(pick, small)
  dev = {k: out[k] for k in _BIG if k in out}
  if _on_host():  # numpy views, not an eager slicing program per array
    dev = distributed.gather(dev)
  dev = jax.tree.map(pick, dev)
  pairs = _pairs(small, dev, layout, procrustes, spectra)
  with np.errstate(divide="ignore", invalid="ignore"):  # self pairs (NaN-filled) and log10(0)
    return _finish(small, pairs, layout, lambdas, ks, procrustes, spectra, predictions)


def _model_ks(layout, ks_group):
  ks = np.zeros(layout.n_models, np.int64)
  for k, (_, members) in zip(ks_group, layout.groups):
    ks[list(members)] = k
  return ks


def _prepare(xs_lists, names, lambdas, control_dim, dtype):
  dtype = gram_lib.compute_dtype([x for xs in xs_lists for x in xs], dtype)
  lambdas = np.asarray(lambdas, dtype=np.float64)
  if lambdas.ndim != 1 or lambdas.size == 0 or np.any(~np.isfinite(lambdas)) or np.any(lambdas < 0):
    raise ValueError(f"lambdas must be a non-empty 1-D array of finite values ≥ 0, got {lambdas}")
  dims = [int(np.shape(x)[1]) for x in xs_lists[0]] + ([int(control_dim)] if control_dim else [])
  return dtype, jnp.asarray(lambdas, dtype), gram_lib.make_layout(dims), dims


def _meta(layout, dims, control_dim, dtype):
  m = len(dims) - (1 if control_dim else 0)
  return {
      "dims": list(dims),
      "n_models": m,
      "control_index": m if control_dim else None,
      "dtype": str(np.dtype(dtype)),
      "stitch_sources": [np.asarray(ma) for _, ma in layout.groups],
      "column_offsets": _offsets(layout),
  }


def fit_all_pairs(
    train: Sequence[jax.typing.ArrayLike],
    val: Sequence[jax.typing.ArrayLike],
    lambdas: jax.typing.ArrayLike = DEFAULT_LAMBDAS,
    *,
    control_dim: int | None = ControlConfig.dim,
    seed: int = 0,
    rcond: float | None = None,
    dtype=None,
    procrustes: bool = True,
    spectra: bool = True,
    predictions: bool = True,
    exact_ols: bool = True,
    mesh=None,
) -> dict:
  """Ridge λ-path, OLS (λ = 0), Procrustes and controls for every ordered pair.

  Args:
    train: M arrays `[N_train, d_i]`, rows aligned across models.  May be device-resident
      and row-sharded (see `lead_jax.distributed.global_rows`).
    val: M arrays `[N_val, d_i]`, likewise.
    lambdas: λ-path (absolute, in units of the centred train Gram X̃ᵀX̃); 0 = min-norm OLS.
    control_dim: width of the seeded Gaussian control model appended as model index M
      (`None` to skip).  It is stitched as a source (the random-source control) and as
      a target like any other model.
    seed: seed of the control rows.
    rcond: relative eigenvalue cutoff of the λ = 0 stitch W (default k·eps(dtype)).
    dtype: float32 (default) or float64 (x64 on).
    procrustes: fit the Procrustes stitches (False turns them off).
    spectra: compute the singular-value spectra of W and the orthogonality diagnostics.
    predictions: compute the row-level metrics (MAE, EAV, cosine) at the chosen λ.
    exact_ols: λ = 0's path metrics from float64 least squares on the rows (`_ols_source`);
      False: from the engine-dtype pseudo-inverse of the Gram (cheaper; off by up to
      ~1e-3 relative on real embeddings with dead dimensions).
    mesh: optional `jax.sharding.Mesh` with `data` and/or `pairs` axes
      (`lead_jax.distributed.make_mesh`): rows are sharded over `data` (Gram blocks
      become psums), per-pair solves and predictions over `pairs` (target members).

  Returns:
    A pytree (caller model order, M' = M + control): lambdas [L]; ridge[metric]
    [M', M', L] (source, target, λ; NaN on the diagonal); chosen[...] [M', M'] at the
    per-pair argmin-val-MSE λ (lambda, lambda_index, the path metrics, mae, eav, cos,
    bias_norm, target_mean_norm, bias_ratio, orth_dev, orth_dev_min); spectra
    [M', M', max d] (NaN padded); procrustes[_scaled][metric] [M', M'];
    controls[train_mean|zero][metric] [M']; stitches: a list of
    {W [m_a, d_a, T], b [m_a, T]} per source width group, every model's
    columns side by side in caller order (`meta["column_offsets"]`), source members in
    `meta["stitch_sources"]`; meta (host-side layout info).

  Raises:
    ValueError: `val` and `train` differ in model count, a shape mismatch, a non-finite
      value, an unusable dtype, or a bad λ-path.
  """
  gram_lib.check_rows(train, "train", n_rows=int(np.shape(train[0])[0]))
  dims = [int(np.shape(x)[1]) for x in train]
  if len(val) != len(train):
    raise ValueError(f"val has {len(val)} models, train has {len(train)}")
  gram_lib.check_rows(val, "val", n_rows=int(np.shape(val[0])[0]), dims=dims)
  dtype, lam, layout, alldims = _prepare([train, val], None, lambdas, control_dim, dtype)
  train, val = (tuple(jnp.asarray(x, dtype) for x in xs) for xs in (train, val))
  train, val = _append_control([train, val], control_dim, seed, dtype, mesh)
  out = _fit_impl(
      tuple(train),
      tuple(val),
      lam,
      _medians(val) if predictions else None,
      _exact_ols(train, val, layout, lambdas if exact_ols else [1.0], dtype),
      layout=layout,
      rcond=rcond,
      procrustes=procrustes,
      spectra=spectra,
      predictions=predictions,
      mesh=mesh,
  )
  ntr = int(np.shape(train[0])[0])
  ks = _model_ks(layout, [min(ntr, d) for d, _ in layout.groups])
  res = _results(out, _small(out), layout, np.asarray(lam), ks, procrustes, spectra, predictions)
  res["stitches"] = [{"W": w, "b": b} for w, b in zip(out["W"], out["b"])]
  res["meta"] = _meta(layout, alldims, control_dim, dtype)
  return res


# ----------------------------------------------------------------------------- k-fold


@_jit_engine
def _cv_impl(
    xs,
    idx,
    mask,
    lambdas,
    med,
    ols,
    *,
    layout,
    rcond,
    procrustes,
    spectra,
    predictions,
    mesh=None,
):
  dtype = xs[0].dtype
  mask = mask.astype(dtype)
  z = gram_lib.constrain(jnp.concatenate(xs, axis=1), mesh, DATA, None)
  shift = jnp.mean(z, axis=0)  # so fold means are small and G − n μμᵀ does not cancel badly
  z = z - shift
  zf = z[idx] * mask[..., None]  # [K, n_f, T]
  nf = jnp.sum(mask, axis=1)  # [K]
  ntr = z.shape[0] - nf
  sf = jnp.sum(zf, axis=1)
  mu = (jnp.sum(sf, axis=0)[None] - sf) / ntr[:, None]  # [K, T] fold train means
  seg = _segments(layout, dtype)
  # Fold f's centred train Gram rows from per-fold Grams, no refit from rows:
  # C_tr = (G_all − G_f) − n_tr μμᵀ (the train rows are every row outside fold f).
  c = _gram(z)[None] - _gram(zf) - ntr[:, None, None] * ein("fi,fj->fij", mu, mu)  # [K, T, T]
  ca = [_group_rows(c, layout, a) for a in range(len(layout.groups))]
  xv = (zf - mu[:, None]) * mask[..., None]  # val rows centred by the fold's train mean
  sp = {"xv": xv, "g": jnp.sum(xv * xv, 1), "sv": jnp.sum(xv, 1), "nv": nf, "mu": mu + shift}
  rc = _rcond(layout, dtype, rcond, [d for d, _ in layout.groups])
  rows = (z[idx] + shift, mask, jnp.concatenate(med, axis=-1)) if predictions else None

  def path_one(args):
    spf, caf, olsf = args
    eig = [source_eig(_self_blocks(caf[a], layout, a)) for a in range(len(layout.groups))]
    paths, tabs, mse = _split_paths(spf, caf, eig, lambdas, layout, rc, olsf, seg)
    return eig, paths, tabs, mse

  # lax.map, not vmap: folds run one after another (bounded memory; no batched LAPACK).
  eig, paths, tabs, mse = jax.lax.map(path_one, (sp, ca, ols))
  idx_l = _choose(jnp.mean(mse, axis=0))  # λ per pair: argmin of the fold-mean val MSE

  def chosen_one(args):
    spf, caf, eigf, pathsf, tabsf, rowsf = args
    return _split_chosen(
        spf, caf, eigf, pathsf, tabsf, idx_l, layout, seg, rowsf, procrustes, spectra
    )

  return jax.lax.map(chosen_one, (sp, ca, eig, paths, tabs, rows))


def cross_validate_all_pairs(
    xs: Sequence[jax.typing.ArrayLike],
    lambdas: jax.typing.ArrayLike = DEFAULT_LAMBDAS,
    *,
    n_folds: int = ClosedFormConfig.folds,
    fold_seed: int = 0,
    control_dim: int | None = ControlConfig.dim,
    seed: int = 0,
    rcond: float | None = None,
    dtype=None,
    procrustes: bool = True,
    spectra: bool = True,
    predictions: bool = True,
    exact_ols: bool = True,
    mesh=None,
) -> dict:
  """k-fold CV of every metric of `fit_all_pairs`, from per-fold Grams.

  One Gram per fold G_f (row pass over the data once); fold f trains on Σ_{g≠f} G_g and
  validates on fold f (no refit from rows).  λ is chosen per pair by the mean over folds
  of val MSE; row metrics are computed per fold at that λ.

  Args:
    xs: M arrays `[N, d_i]`, rows aligned across models.
    lambdas: λ-path, as in `fit_all_pairs`.
    n_folds: the number of folds K, in [2, N].
    fold_seed: seeds the fold assignment.
    control_dim: width of the Gaussian control model (`None` to skip), as in `fit_all_pairs`.
    seed: seed of the control rows.
    rcond: relative eigenvalue cutoff of the λ = 0 stitch W (default k·eps(dtype)).
    dtype: float32 (default) or float64 (x64 on).
    procrustes: fit the Procrustes stitches.
    spectra: compute the singular-value spectra of W and the orthogonality diagnostics.
    predictions: compute the row-level metrics (MAE, EAV, cosine) at the chosen λ.
    exact_ols: λ = 0's path metrics from float64 least squares on the rows (`_ols_source`);
      False: from the engine-dtype pseudo-inverse of the Gram (cheaper; off by up to
      ~1e-3 relative on real embeddings with dead dimensions).
    mesh: optional mesh, as in `fit_all_pairs`.

  Returns:
    {lambdas, folds: tree with leading [K] axis, mean, std (ddof=1)}, each tree laid out
    as in `fit_all_pairs` (without stitches), plus meta (with n_folds).

  Raises:
    ValueError: a shape mismatch, a non-finite value, an unusable dtype, a bad λ-path, or
      n_folds not in [2, N].
  """
  n = int(np.shape(xs[0])[0])
  gram_lib.check_rows(xs, "xs", n_rows=n)
  dtype, lam, layout, alldims = _prepare([xs], None, lambdas, control_dim, dtype)
  idx, mask = metrics.fold_indices(n, n_folds, fold_seed)
  (xs,) = _append_control([[jnp.asarray(x, dtype) for x in xs]], control_dim, seed, dtype, mesh)
  tmask = np.ones((len(idx), n), np.float32)  # fold f trains on every row outside it
  for f in range(len(idx)):
    tmask[f, idx[f][mask[f] > 0]] = 0.0
  out = _cv_impl(
      tuple(xs),
      jnp.asarray(idx),
      jnp.asarray(mask),
      lam,
      _fold_medians(xs, idx, mask) if predictions else None,
      _exact_ols(
          xs, xs, layout, lambdas if exact_ols else [1.0], dtype, vidx=idx, tmask=tmask, vmask=mask
      ),
      layout=layout,
      rcond=rcond,
      procrustes=procrustes,
      spectra=spectra,
      predictions=predictions,
      mesh=mesh,
  )
  lam, ks = np.asarray(lam), _model_ks(layout, [d for d, _ in layout.groups])
  small = _small(out)
  folds = [
      _results(out, small, layout, lam, ks, procrustes, spectra, predictions, fold=f)
      for f in range(len(idx))
  ]
  stat = jax.tree.map(
      lambda *x: np.stack(x), *[{k: v for k, v in f.items() if k != "lambdas"} for f in folds]
  )
  out = {
      "lambdas": lam,
      "folds": stat,
      "mean": jax.tree.map(lambda x: np.mean(x, axis=0), stat),
      "std": jax.tree.map(lambda x: np.std(x, axis=0, ddof=1), stat),
  }
  out["meta"] = _meta(layout, alldims, control_dim, dtype)
  out["meta"]["n_folds"] = n_folds
  return out
