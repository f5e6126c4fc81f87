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
factorised in float64 (`_ols_one`: QR, then a triangular solve, or an SVD of R with
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

Predictions are formed only at the chosen λ (argmin val MSE per pair) for the metrics
without a Gram identity: MAE, explained absolute variation, cosine.

Orthogonal Procrustes.  min ‖X̃R − Ỹ‖ over RᵀR = I after zero-padding the smaller side
to max(d_A, d_B): R = U Vᵀ from the thin SVD C_AB = U Σ Vᵀ (the padded rows/columns
only add zeros), computed by an SVD of C_AB itself (`polar`).  The scaled variant uses s* = tr Σ / tr C_AA.  Its val SSE uses the
same identity with W = sR.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from lead_jax.config import ClosedFormConfig, ControlConfig
from lead_jax.distributed import DATA, PAIRS
from lead_jax.similarity import gram as gram_lib
from lead_jax.similarity.gram import Layout, ein
from lead_jax.stitch import metrics

DEFAULT_LAMBDAS = np.asarray(ClosedFormConfig.lambdas)  # 0 and 1e-4 … 1e4, 9 log-spaced
PATH_METRICS = metrics.PATH_METRICS
ROW_METRICS = metrics.ROW_METRICS


# ----------------------------------------------------------------------------- pieces


def member_diag(block: jax.Array) -> jax.Array:
  """[m, d, m, e] group block → [m, d, e] blocks of each member with itself.

  Args:
    block: a group's Gram block with itself, [m, d, m, e].

  Returns:
    The diagonal blocks, [m, d, e].
  """
  return jnp.moveaxis(jnp.diagonal(block, axis1=0, axis2=2), -1, 0)


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


def _gram_small(x):
  """x [..., m, n] → the smaller of x xᵀ / xᵀ x (and whether it was x xᵀ)."""
  m, n = x.shape[-2:]
  if m <= n:
    return ein("...ij,...kj->...ik", x, x), True
  return ein("...ji,...jk->...ik", x, x), False


def singular_values(x: jax.Array) -> jax.Array:
  """Singular values (descending) of x [..., m, n] from eigvalsh of the smaller Gram.

  Much cheaper than an SVD on CPU; values below ~sqrt(eps)·σ_max lose relative accuracy,
  which is fine for a spectrum plot and for ‖WᵀW − I‖ (it uses σ² directly).

  Args:
    x: matrices [..., m, n].

  Returns:
    The min(m, n) singular values [..., min(m, n)], descending.
  """
  g, _ = _gram_small(x)
  ev = gram_lib.linalg_map(jnp.linalg.eigvalsh, g, x.ndim - 2)
  return jnp.sqrt(jnp.maximum(ev, 0.0))[..., ::-1]


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


# ----------------------------------------------------------------------------- sufficient statistics


def stats_from_rows(zs_tr, zs_v, mask_v=None, val_gram=True):
  """Train/val sufficient statistics from grouped rows [N, m, d] (one split).

  Args:
    zs_tr: per group, the train rows [N_train, m, d].
    zs_v: per group, the val rows [N_val, m, d].
    mask_v: [N_val] val row weights; None: all ones.
    val_gram: also form the val Gram blocks `gv`.

  Returns:
    `(st, xc, xv)`: the dict st with c (centred train Gram blocks), gv (val Gram blocks
    centred by train mean; only with `val_gram`), gdiag (per-group diag of the val Gram,
    Σ ỹ²), sv (val column sums of ỹ), nv, mu (train means); and the centred train and
    (masked) val rows (for the dual and for the row-projected validation path).
  """
  mu = [jnp.mean(z, axis=0) for z in zs_tr]
  xc = [z - m for z, m in zip(zs_tr, mu)]
  xv = [z - m for z, m in zip(zs_v, mu)]
  if mask_v is None:
    mask_v = jnp.ones(zs_v[0].shape[0], zs_v[0].dtype)
  xvm = [x * mask_v[:, None, None] for x in xv]
  st = {
      "c": gram_lib.gram_blocks(xc),
      "gdiag": [jnp.sum(x * x, axis=0) for x in xvm],
      "sv": [jnp.sum(x, axis=0) for x in xvm],
      "nv": jnp.sum(mask_v),
      "mu": mu,
  }
  if val_gram:
    st["gv"] = gram_lib.gram_blocks(xvm)
  return st, xc, xvm


# ----------------------------------------------------------------------------- exact OLS


def _columns(layout: Layout, b: int) -> np.ndarray:
  """The columns of target group b's members in the caller-order concatenation [.., T]."""
  off = np.concatenate([[0], np.cumsum(layout.dims)])
  d_b, members = layout.groups[b]
  return np.concatenate([np.arange(off[t], off[t] + d_b) for t in members])


def _ols_one(x, xv, y, yv, tmask, vmask):
  """Val SSE per target column of min-norm least squares, one source.

  x, xv, tmask and vmask are float64; y and yv are the targets in the engine's dtype.
  The source is factorised in float64, X̃ = QR (Householder QR, backward stable), so
  directions whose variance is float32 rounding noise (dead dimensions, σ ratios ~1e-7)
  are resolved and fitted as `numpy.linalg.lstsq` fits them, which no Gram-based solve
  can do. With R well inside float64's range (every |R_ii| > eps64·max(N, d)·max|R_ii|)
  W = R⁻¹ QᵀỸ by a triangular solve; otherwise (exactly dependent columns) from an SVD
  of R with lstsq's cutoff σ > eps64·max(N, d)·σ_max, the minimum-norm solution. The
  products with the targets (QᵀỸ and the val predictions, the FLOPs that scale with
  ΣD) run in the targets' dtype with Q and W rounded to it: their rounding is relative
  to each entry, not amplified by 1/σ. Train rows with tmask 0 are left out (k-fold);
  val rows are weighted by vmask.

  Args:
    x: train rows [N, d].
    xv: val rows [n, d].
    y: the targets' train rows [N, T].
    yv: their val rows [n, T].
    tmask: [N] train row weights (0 or 1).
    vmask: [n] val row weights.

  Returns:
    Σ_n vmask_n (ỹ_n − x̃_n W)² per target column [T], float64.
  """
  lo = y.dtype
  ntr = jnp.sum(tmask)
  mu_x = tmask @ x / ntr
  mu_y = tmask.astype(lo) @ y / ntr.astype(lo)
  q, r = jnp.linalg.qr((x - mu_x) * tmask[:, None])
  cut = np.finfo(x.dtype).eps * max(x.shape)
  c = (q.astype(lo).T @ ((y - mu_y) * tmask.astype(lo)[:, None])).astype(x.dtype)  # [k, T]
  dr = jnp.abs(jnp.diagonal(r))

  def triangular(_):
    return jax.scipy.linalg.solve_triangular(r, c, lower=False)

  def min_norm(_):
    u, sig, vt = jnp.linalg.svd(r, full_matrices=False)
    keep = sig > cut * sig[0]
    inv = jnp.where(keep, 1.0 / jnp.where(keep, sig, 1.0), 0.0)
    return vt.T @ (inv[:, None] * (u.T @ c))

  if r.shape[0] == r.shape[1]:  # N ≥ d
    w = jax.lax.cond(jnp.min(dr) > cut * jnp.max(dr), triangular, min_norm, None)  # [d, T]
  else:  # N < d: rank ≤ N < d, always the minimum-norm solution
    w = min_norm(None)
  res = (yv - mu_y) - ((xv - mu_x).astype(lo) @ w.astype(lo))
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
    one = lambda a: _ols_one(a[0], a[1][vi], y, yv[vi], f64(tm), f64(vm)).astype(jnp.float64)
    return jax.lax.map(one, (x, xv))

  return jax.lax.map(fold, (vidx, tmask, vmask))


@jax.jit
def _concat(xs):
  return jnp.concatenate(xs, axis=1)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _no_ols(shape, dtype):
  """NaN ("no exact value") in place of the exact OLS when it is not computed: a device
  array like the real one, so the engine's compiled program is the same either way."""
  return jnp.full(shape, jnp.nan, dtype)


def _exact_ols(xs, xvs, layout, lambdas, dtype, *, vidx=None, tmask=None, vmask=None):
  """Per source group, the float64 OLS val SSE per target column ([F, m_a, T] in `dtype`).

  NaN when the λ-path has no 0. Without vidx/tmask/vmask: one split (F = 1, all rows).
  """
  n, nv = int(np.shape(xs[0])[0]), int(np.shape(xvs[0])[0])
  if vidx is None:
    vidx, tmask, vmask = np.arange(nv)[None], np.ones((1, n), np.float32), np.ones((1, nv))
  if not np.any(np.asarray(lambdas) == 0):
    return [
        _no_ols((len(vidx), len(m), sum(layout.dims)), np.dtype(dtype)) for _, m in layout.groups
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


# ----------------------------------------------------------------------------- core


def _targets(st, layout):
  """Per-target-group val quantities: g_B (diag), SST, weights, count of valid dims."""
  out = []
  for b, (d_b, _) in enumerate(layout.groups):
    g = st["gdiag"][b]  # [m, d] = Σ ỹ²
    sst = g - st["sv"][b] ** 2 / st["nv"]
    ok = sst > metrics.CONST_DIM_RTOL * jnp.max(sst, axis=1, keepdims=True)
    w = jnp.where(ok, 1.0 / jnp.where(ok, sst, 1.0), 0.0)
    out.append(
        {
            "g": g,
            "sst": sst,
            "w": w,
            "n_valid": jnp.sum(ok, axis=1).astype(g.dtype),
            "sst_tot": jnp.sum(sst, axis=1),
            "ssy": jnp.sum(g, axis=1),
            "ssy_w": jnp.sum(w * g, axis=1),
        }
    )
  return out


def _path(st, eig, lambdas, layout, rcond, with_procrustes, ols, proj=None, yv=None, mesh=None):
  """Val metrics for every pair × λ (+ Procrustes) from Grams; no predictions.

  `ols[a]` [m_a, T] holds source group a's float64 min-norm OLS val SSE per target
  column (`_exact_ols`, caller-order columns); it replaces the λ = 0 entries.

  The val terms Q = Vᵀ G_AB and M = Vᵀ G_AA V come from the val Gram blocks, or, when
  the projected val rows `proj[a] = x̃_v V [n, m_a, k]` and centred val rows `yv` are
  given, as Q = x̂ᵀ ỹ and M = x̂ᵀ x̂ (fewer flops when n_val < d_A, and no val Gram).
  """
  tg = _targets(st, layout)
  pairs = lambda x: gram_lib.constrain(x, mesh, None, PAIRS, None, None)  # target members
  out = {}
  for a, (d_a, _) in enumerate(layout.groups):
    v, s = eig[a]
    filt = lambda_filter(s, lambdas, rcond[a])  # [m_a, L, k]
    if proj is None:
      mv = ein("aik,aij,ajl->akl", v, member_diag(st["gv"][a, a]), v)  # [m_a, k, k]
    else:
      mv = ein("nak,nal->akl", proj[a], proj[a])
    for b, (d_b, _) in enumerate(layout.groups):
      t = tg[b]
      p = pairs(ein("aik,aibj->abkj", v, st["c"][a, b]))  # [m_a, m_b, k, d_b]
      if proj is None:
        q = pairs(ein("aik,aibj->abkj", v, st["gv"][a, b]))
      else:
        q = pairs(ein("nak,nbj->abkj", proj[a], yv[b]))
      pq = p * q
      t1 = jnp.sum(pq, axis=-1)
      t1w = ein("abkj,bj->abk", pq, t["w"])
      pp = ein("abkj,ablj->abkl", p, p) * mv[:, None]
      ppw = ein("abkj,ablj->abkl", p * t["w"][None, :, None], p) * mv[:, None]
      quad = ein("ablk,alk->abl", ein("abkm,alm->ablk", pp, filt), filt)
      quadw = ein("ablk,alk->abl", ein("abkm,alm->ablk", ppw, filt), filt)
      sse = t["ssy"][None, :, None] - 2.0 * ein("alk,abk->abl", filt, t1) + quad
      ssew = t["ssy_w"][None, :, None] - 2.0 * ein("alk,abk->abl", filt, t1w) + quadw
      cols = _columns(layout, b)
      exact = ols[a][:, cols].reshape(ols[a].shape[0], len(layout.groups[b][1]), d_b)
      e_sse = jnp.sum(exact, -1)[..., None].astype(sse.dtype)
      at0 = (lambdas == 0) & ~jnp.isnan(e_sse)  # NaN: no exact value (`_no_ols`)
      sse = jnp.where(at0, e_sse, sse)
      ssew = jnp.where(at0, ein("abj,bj->ab", exact, t["w"])[..., None].astype(sse.dtype), ssew)
      res = {
          "path": metrics.sse_summaries(
              sse, ssew, t["sst_tot"][None, :, None], t["n_valid"][None, :, None], st["nv"], d_b
          ),
          "p": p,
          "filt": filt,
      }
      if with_procrustes:
        res.update(_procrustes(st, a, b, t))
      out[a, b] = res
  return out, tg


def _procrustes(st, a, b, t):
  c = jnp.transpose(st["c"][a, b], (0, 2, 1, 3))  # [m_a, m_b, d_a, d_b]
  r, sig = polar(c)
  tr_aa = jnp.trace(member_diag(st["c"][a, a]), axis1=1, axis2=2)  # [m_a]
  scale = jnp.sum(sig, axis=-1) / tr_aa[:, None]
  gv_ab = jnp.transpose(st["gv"][a, b], (0, 2, 1, 3))
  cross = jnp.sum(r * gv_ab, axis=2)  # [m_a, m_b, d_b]
  quad = jnp.sum(r * ein("aik,abkj->abij", member_diag(st["gv"][a, a]), r), axis=2)
  d_b = c.shape[-1]
  res = {}
  for name, sc in (("procrustes", jnp.ones_like(scale)), ("procrustes_scaled", scale)):
    sse_j = t["g"][None] - 2.0 * sc[..., None] * cross + sc[..., None] ** 2 * quad
    m = metrics.sse_summaries(
        jnp.sum(sse_j, -1),
        jnp.sum(t["w"][None] * sse_j, -1),
        t["sst_tot"][None],
        t["n_valid"][None],
        st["nv"],
        d_b,
    )
    m["scale"] = sc
    res[name] = m
  return res


def _chosen(st, eig, paths, idx, rows_v, mask_v, med, layout, with_spectra, proj=None, mesh=None):
  """Row-dependent part at the chosen λ: W, b, MAE/EAV/cosine, W diagnostics.

  Predictions are laid out [m_a, m_b, n, d_b]; with `proj` (x̂ = x̃_v V) they are
  x̂ (F P), which skips the x̃_v W product's wider contraction when k < d_A.
  """
  out = {}
  for (a, b), pth in paths.items():
    v, _ = eig[a]
    d_a, d_b = layout.groups[a][0], layout.groups[b][0]
    sel = idx[a, b]  # [m_a, m_b]
    f = jnp.take_along_axis(pth["filt"][:, None], sel[..., None, None], axis=2)[..., 0, :]
    dp = f[..., None] * pth["p"]  # [m_a, m_b, k, d_b]
    w = ein("aik,abkj->abij", v, dp)
    mu_a, mu_b = st["mu"][a], st["mu"][b]
    bias = mu_b[None] - jnp.sum(mu_a[:, None, :, None] * w, axis=2)  # μ_B − μ_A W
    res = {
        "W": w,
        "b": bias,
        "bias_norm": jnp.linalg.norm(bias, axis=-1),
        "target_mean_norm": jnp.broadcast_to(jnp.linalg.norm(mu_b, axis=-1)[None], sel.shape),
    }
    res["bias_ratio"] = res["bias_norm"] / res["target_mean_norm"]
    if with_spectra:
      k = dp.shape[-2]
      sig = singular_values(dp)  # [m_a, m_b, min(k, d_b)]
      extra = d_b - min(k, d_b)  # zero eigenvalues of WᵀW
      res["spectrum"] = sig
      res["orth_dev"] = jnp.sqrt(jnp.sum((sig**2 - 1.0) ** 2, -1) + extra) / np.sqrt(d_b)
      res["orth_dev_min"] = jnp.sqrt(jnp.sum((sig**2 - 1.0) ** 2, -1) / min(d_a, d_b))
    if rows_v is not None:
      if proj is not None:
        pred = ein("nak,abkj->abnj", proj[a], dp)
      else:
        pred = ein("nai,abij->abnj", rows_v[a] - mu_a, w)
      pred = pred + mu_b[None, :, None]  # [m_a, m_b, n, d_b]
      pred = gram_lib.constrain(pred, mesh, None, PAIRS, DATA, None)
      yt = jnp.transpose(rows_v[b], (1, 0, 2))[None]  # [1, m_b, n, d_b]
      nv = jnp.sum(mask_v)
      sabs = jnp.sum(jnp.sum(jnp.abs(yt - pred), -1) * mask_v, -1)
      dev = jnp.sum(jnp.sum(jnp.abs(yt[0] - med[b][:, None]), -1) * mask_v, -1)
      res["mae"] = sabs / (nv * d_b)
      res["eav"] = 1.0 - sabs / dev[None]
      dot = jnp.sum(pred * yt, -1)
      cos = dot / (jnp.sqrt(jnp.sum(pred * pred, -1) * jnp.sum(yt * yt, -1)) + 1e-30)
      res["cos"] = jnp.sum(cos * mask_v, -1) / nv
    out[a, b] = res
  return out


def _choose(mse_blocks):
  """argmin over λ of val MSE (NaN-safe), per pair."""
  return {
      k: jnp.argmin(jnp.where(jnp.isnan(m), jnp.inf, m), axis=-1) for k, m in mse_blocks.items()
  }


# ----------------------------------------------------------------------------- assembly


def _assemble_pairs(blocks: dict, layout: Layout, fill_diag: bool = True):
  arr = gram_lib.assemble(blocks, layout)
  if fill_diag:
    m = layout.n_models
    eye = jnp.eye(m, dtype=bool).reshape((m, m) + (1,) * (arr.ndim - 2))
    arr = jnp.where(eye, jnp.nan, arr)
  return arr


def _pad_last(x, n):
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])], constant_values=jnp.nan)


def _collect(st, paths, tg, chosen, ctrl, idx, lambdas, layout, with_procrustes, with_spectra):
  keys = list(paths)
  res = {"lambdas": lambdas}
  res["ridge"] = {
      m: _assemble_pairs({k: paths[k]["path"][m] for k in keys}, layout) for m in PATH_METRICS
  }
  ch = {"lambda_index": _assemble_pairs({k: idx[k].astype(lambdas.dtype) for k in keys}, layout)}
  ch["lambda"] = jnp.where(
      jnp.isnan(ch["lambda_index"]),
      jnp.nan,
      lambdas[jnp.nan_to_num(ch["lambda_index"]).astype(jnp.int32)],
  )
  for m in PATH_METRICS:
    ch[m] = _assemble_pairs(
        {k: jnp.take_along_axis(paths[k]["path"][m], idx[k][..., None], -1)[..., 0] for k in keys},
        layout,
    )
  names = ["bias_norm", "target_mean_norm", "bias_ratio"]
  if with_spectra:
    names += ["orth_dev", "orth_dev_min"]
  if "mae" in chosen[keys[0]]:
    names += list(ROW_METRICS)
  for m in names:
    ch[m] = _assemble_pairs({k: chosen[k][m] for k in keys}, layout)
  res["chosen"] = ch
  if with_spectra:
    r = max(layout.dims)
    res["spectra"] = _assemble_pairs({k: _pad_last(chosen[k]["spectrum"], r) for k in keys}, layout)
  if with_procrustes:
    for name in ("procrustes", "procrustes_scaled"):
      res[name] = {
          m: _assemble_pairs({k: paths[k][name][m] for k in keys}, layout)
          for m in PATH_METRICS + ("scale",)
      }
  res["controls"] = {
      name: {m: gram_lib.assemble_vec([c[name][m] for c in ctrl], layout) for m in ctrl[0][name]}
      for name in ("train_mean", "zero")
  }
  res["stitches"] = [{"W": chosen[k]["W"], "b": chosen[k]["b"]} for k in keys]
  return res


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
def _medians(xs):
  """Per model, the per-dimension median of its rows ([d])."""
  return [metrics.masked_median(x) for x in xs]


@jax.jit
def _fold_medians(xs, idx, mask):
  """Per model and fold, the per-dimension median of the fold's rows ([K, d])."""
  one = lambda x, i, m: metrics.masked_median(x[i], m)
  return [jax.vmap(one, in_axes=(None, 0, 0))(x, idx, mask.astype(x.dtype)) for x in xs]


def _group_medians(meds, layout):
  return [jnp.stack([meds[i] for i in members], axis=-2) for _, members in layout.groups]


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
  rows = lambda xs: [gram_lib.constrain(x, mesh, DATA, None) for x in xs]
  train, val = rows(train), rows(val)
  zs_tr = gram_lib.stack_groups(train, layout)
  zs_v = gram_lib.stack_groups(val, layout)
  st, xc, yv = stats_from_rows(zs_tr, zs_v, val_gram=procrustes)
  eig, ks = [], []
  for a, (d_a, _) in enumerate(layout.groups):
    if ntr < d_a:
      eig.append(
          source_eig_dual(xc[a], rcond if rcond is not None else default_rcond(ntr, train[0].dtype))
      )
    else:
      eig.append(source_eig(member_diag(st["c"][a, a])))
    ks.append(eig[-1][0].shape[-1])
  rc = _rcond(layout, train[0].dtype, rcond, ks)
  proj = [ein("nai,aik->nak", y, v) for y, (v, _) in zip(yv, eig)]  # x̂ = x̃_v V
  ols = [o[0] for o in ols]
  paths, tg = _path(st, eig, lambdas, layout, rc, procrustes, ols, proj=proj, yv=yv, mesh=mesh)
  idx = _choose({k: p["path"]["mse"] for k, p in paths.items()})
  mask = jnp.ones(nv, train[0].dtype)
  med = _group_medians(med, layout) if predictions else None
  rows = zs_v if predictions else None
  chosen = _chosen(st, eig, paths, idx, rows, mask, med, layout, spectra, proj=proj, mesh=mesh)
  ctrl = metrics.controls(st, tg, rows, mask, med, layout)
  return _collect(st, paths, tg, chosen, ctrl, idx, lambdas, layout, procrustes, spectra)


def _prepare(xs_lists, names, lambdas, control_dim, dtype):
  dtype = gram_lib.compute_dtype([x for xs in xs_lists for x in xs], dtype)
  lambdas = np.asarray(lambdas, dtype=np.float64)
  if lambdas.ndim != 1 or lambdas.size == 0 or np.any(~np.isfinite(lambdas)) or np.any(lambdas < 0):
    raise ValueError(f"lambdas must be a non-empty 1-D array of finite values ≥ 0, got {lambdas}")
  dims = [int(np.shape(x)[1]) for x in xs_lists[0]] + ([int(control_dim)] if control_dim else [])
  return dtype, jnp.asarray(lambdas, dtype), gram_lib.make_layout(dims), dims


def _meta(layout, dims, control_dim, dtype):
  m = len(dims) - (1 if control_dim else 0)
  srcs, tgts = [], []
  for a, (_, ma) in enumerate(layout.groups):
    for b, (_, mb) in enumerate(layout.groups):
      srcs.append(np.asarray(ma))
      tgts.append(np.asarray(mb))
  return {
      "dims": list(dims),
      "n_models": m,
      "control_index": m if control_dim else None,
      "dtype": str(np.dtype(dtype)),
      "stitch_sources": srcs,
      "stitch_targets": tgts,
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
    exact_ols: λ = 0's path metrics from float64 least squares on the rows (`_ols_one`);
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
    controls[train_mean|zero][metric] [M']; stitches: list over group pairs of
    {W [m_a, m_b, d_a, d_b], b [m_a, m_b, d_b]}; meta (host-side layout info).

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
  out["meta"] = _meta(layout, alldims, control_dim, dtype)
  return out


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
  xs = [gram_lib.constrain(x, mesh, DATA, None) for x in xs]
  zs = gram_lib.stack_groups(xs, layout)
  shift = [jnp.mean(z, axis=0) for z in zs]
  st = metrics.fold_stats([z - s for z, s in zip(zs, shift)], idx, mask)
  st["mu"] = [m + s[None] for m, s in zip(st["mu"], shift)]  # raw coordinates
  ks = [d for d, _ in layout.groups]
  rc = _rcond(layout, dtype, rcond, ks)
  rows = [z[idx] for z in zs] if predictions else None  # [K, n_f, m, d]
  med = _group_medians(med, layout) if predictions else None  # [K, m, d] per group

  def path_one(args):
    stf, olsf = args
    eig = [source_eig(member_diag(stf["c"][a, a])) for a in range(len(layout.groups))]
    paths, tg = _path(stf, eig, lambdas, layout, rc, procrustes, olsf, mesh=mesh)
    return eig, paths, tg

  # lax.map, not vmap: folds run one after another (bounded memory; no batched LAPACK).
  eig, paths, tg = jax.lax.map(path_one, (st, ols))
  # λ per pair: argmin of the mean over folds of val MSE.
  idx_l = _choose({k: jnp.mean(p["path"]["mse"], axis=0) for k, p in paths.items()})

  def chosen_one(args):
    stf, eigf, pathsf, tgf, rowsf, maskf, medf = args
    ch = _chosen(stf, eigf, pathsf, idx_l, rowsf, maskf, medf, layout, spectra, mesh=mesh)
    ctrl = metrics.controls(stf, tgf, rowsf, maskf, medf, layout)
    return _collect(stf, pathsf, tgf, ch, ctrl, idx_l, lambdas, layout, procrustes, spectra)

  folds = jax.lax.map(chosen_one, (st, eig, paths, tg, rows, mask, med))
  folds.pop("stitches")
  folds["lambdas"] = lambdas
  stat = {k: v for k, v in folds.items() if k not in ("lambdas",)}
  mean = jax.tree.map(lambda x: jnp.mean(x, axis=0), stat)
  std = jax.tree.map(lambda x: jnp.std(x, axis=0, ddof=1), stat)
  return {"lambdas": lambdas, "folds": stat, "mean": mean, "std": std}


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
    exact_ols: λ = 0's path metrics from float64 least squares on the rows (`_ols_one`);
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
  out["meta"] = _meta(layout, alldims, control_dim, dtype)
  out["meta"]["n_folds"] = n_folds
  return out
