"""The calibration-size curve: every ordered pair's ridge stitch fitted on nested prefixes.

A practitioner moving a vector store asks how many texts they must re-embed; the study
asks whether more data would let linear stitches do better.  The curve answers both: for
sizes K_1 < … < K_J ≤ N, the ridge stitch of every ordered pair fitted on the first K_j
rows of one seeded permutation of the train rows (so every subset is spread over the
collection and each contains the smaller ones), λ chosen per pair and size by val MSE
(the closed-form stage's protocol), and its val MSE and R².  At K_J = N it is the
closed-form stage's chosen ridge stitch on the same rows.

One pass, no refits.  The rows are shifted by the full train mean m (a constant, so the
float32 sums stay small), and for each block of rows [K_{j-1}, K_j) the column sums and
the cross-products with every target are formed once; the statistics of the first K_j
rows are cumulative sums of the blocks.  With μ_K the prefix mean of the shifted rows,

    C_K = Σ_{i<K} x_i x_iᵀ − K μ_K μ_Kᵀ

is exactly the centred Gram a refit on those K rows would form.  The targets are every
model's columns side by side ([N, ΣD]), so one source's program serves every target and
one program is compiled per source width.  Per size and source: one eigh
C_AA = V diag(s) Vᵀ, P = Vᵀ C_A·, and for the whole λ-path, from the projected val rows
x̂ = (x_v − μ) V and centred val targets ỹ,

    SSE_j(λ) = ‖ỹ_j‖² − 2 Σ_k g_k x̂ᵀỹ_kj P_kj + Σ_kl g_k P_kj (x̂ᵀx̂)_kl g_l P_lj,
    g_k = 1/(s_k + λ),

summed per target with weights 1 (MSE) and ω_j = 1/SST_j over the non-constant columns
(the per-dimension R², as `metrics.regression_metrics` defines it).  Summed, each is
a − 2 gᵀt + gᵀHg with t_k = Σ_j ω_j (x̂ᵀỹ)_kj P_kj and H = x̂ᵀx̂ ∘ (P diag(ω) Pᵀ), formed
once per target and size, so the λ-path costs O(L·d²) on top.  Only λ > 0: below K < d
the λ = 0 fit is not determined.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lead_jax.config import ClosedFormConfig, RetrievalConfig
from lead_jax.errors import InputError
from lead_jax.similarity import gram as gram_lib
from lead_jax.similarity.gram import ein
from lead_jax.stitch import metrics

DEFAULT_SIZES = RetrievalConfig.curve_sizes  # defaults are defined once, in lead_jax.config
DEFAULT_LAMBDAS = tuple(x for x in ClosedFormConfig.lambdas if x > 0)  # the λ-path without 0


def curve_sizes(n_rows: int, sizes: Sequence[int]) -> tuple[int, ...]:
  """The sizes the curve is fitted at: those of `sizes` below `n_rows`, then `n_rows`.

  Args:
    n_rows: the train rows available.
    sizes: the requested sizes.

  Returns:
    Sorted distinct sizes, each in [2, n_rows], ending with n_rows.

  Raises:
    InputError: `n_rows` < 2, or a requested size < 2.
  """
  if n_rows < 2:
    raise InputError(f"the calibration curve needs at least 2 train rows, got {n_rows}")
  bad = [k for k in sizes if k < 2]
  if bad:
    raise InputError(f"calibration curve sizes must be ≥ 2, got {bad}")
  return tuple(sorted({int(k) for k in sizes if k < n_rows} | {int(n_rows)}))


def permutation(n_rows: int, seed: int) -> np.ndarray:
  """The seeded order in which train rows join the prefixes.

  Args:
    n_rows: the train rows.
    seed: the seed.

  Returns:
    int64 [n_rows], a permutation of 0..n_rows−1.
  """
  return np.random.default_rng(seed).permutation(n_rows)


@dataclasses.dataclass(frozen=True)
class SourceCurve:
  """One source's curve against every target (targets in the caller's model order).

  Attributes:
    source: the source's index.
    sizes: [J] the prefix sizes.
    lam: [J, T] the chosen λ per size and target.
    mse: [J, T] val MSE at the chosen λ.
    r2: [J, T] val R² (per-dimension average) at the chosen λ.
    r2_vw: [J, T] val R² (variance-weighted) at the chosen λ.
    w: [J, d_A, ΣD] the chosen stitches, every target's columns side by side.
    b: [J, ΣD] their intercepts.
    cols: per target, its column slice of w and b.
  """

  source: int
  sizes: np.ndarray
  lam: np.ndarray
  mse: np.ndarray
  r2: np.ndarray
  r2_vw: np.ndarray
  w: np.ndarray
  b: np.ndarray
  cols: tuple[slice, ...]

  def stitch(self, j: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """(W [d_A, d_t], b [d_t]) of size index `j` into target `t`."""
    return self.w[j][:, self.cols[t]], self.b[j][self.cols[t]]


@functools.partial(jax.jit, static_argnames=("bounds", "cols"))
def _source_curve(x, xv, y, yv, lambdas, *, bounds, cols):
  """One source's curve; x, xv [N|n, d] and y, yv [N|n, D] shifted by the full train means."""
  edges = (0,) + bounds
  blocks = [(e0, e1) for e0, e1 in zip(edges[:-1], edges[1:])]
  sx = jnp.cumsum(jnp.stack([x[e0:e1].sum(0) for e0, e1 in blocks]), 0)  # [J, d]
  sy = jnp.cumsum(jnp.stack([y[e0:e1].sum(0) for e0, e1 in blocks]), 0)  # [J, D]
  gxx = jnp.cumsum(jnp.stack([ein("ni,nj->ij", x[e0:e1], x[e0:e1]) for e0, e1 in blocks]), 0)
  gxy = jnp.cumsum(jnp.stack([ein("ni,nj->ij", x[e0:e1], y[e0:e1]) for e0, e1 in blocks]), 0)
  k = jnp.asarray(bounds, x.dtype)
  mux, muy = sx / k[:, None], sy / k[:, None]
  cxx = gxx - k[:, None, None] * mux[:, :, None] * mux[:, None, :]
  cxy = gxy - k[:, None, None] * mux[:, :, None] * muy[:, None, :]
  s, v = gram_lib.linalg_map(jnp.linalg.eigh, 0.5 * (cxx + jnp.swapaxes(cxx, 1, 2)), 1)
  s = jnp.maximum(s, 0.0)

  sst = jnp.sum(jnp.square(yv - jnp.mean(yv, 0)), 0)  # [D], about the val mean
  omegas, n_valid = [], []
  for c0, c1 in cols:
    ok = sst[c0:c1] > metrics.CONST_DIM_RTOL * jnp.max(sst[c0:c1])
    omegas.append(jnp.where(ok, 1.0 / jnp.where(ok, sst[c0:c1], 1.0), 0.0))
    n_valid.append(jnp.sum(ok).astype(x.dtype))
  n_valid = jnp.stack(n_valid)
  sst_t = jnp.stack([jnp.sum(sst[c0:c1]) for c0, c1 in cols])
  width = jnp.asarray([c1 - c0 for c0, c1 in cols], x.dtype)
  n_t = len(cols)

  def one_size(args):
    v_j, s_j, mux_j, muy_j, cxy_j = args
    p = ein("ik,ij->kj", v_j, cxy_j)  # [d, D]
    xh = ein("ni,ik->nk", xv - mux_j, v_j)  # [n, d]
    yc = yv - muy_j
    m = ein("nk,nl->kl", xh, xh)
    pq = p * ein("nk,nj->kj", xh, yc)
    yy = jnp.sum(yc * yc, 0)
    g = 1.0 / (s_j[None, :] + lambdas[:, None])  # [L, d]
    sse, ssew = [], []  # per target [L]: weights 1 and ω
    for (c0, c1), om in zip(cols, omegas):
      pt = p[:, c0:c1]
      for out, wt in ((sse, None), (ssew, om)):
        h = m * ein("kj,lj->kl", pt if wt is None else pt * wt, pt)
        t = jnp.sum(pq[:, c0:c1] if wt is None else pq[:, c0:c1] * wt, 1)
        a = jnp.sum(yy[c0:c1] if wt is None else yy[c0:c1] * wt)
        out.append(a - 2.0 * g @ t + jnp.sum(ein("Lk,kl->Ll", g, h) * g, 1))
    sse, ssew = jnp.stack(sse, 1), jnp.stack(ssew, 1)  # [L, T]
    mse = sse / (xv.shape[0] * width)
    best = jnp.argmin(mse, 0)  # [T]
    pick = lambda a: a[best, jnp.arange(n_t)]
    g_cols = jnp.concatenate(
        [
            jnp.broadcast_to(g[best[t]][:, None], (g.shape[1], c1 - c0))
            for t, (c0, c1) in enumerate(cols)
        ],
        1,
    )  # [d, D]: each column's target's g at its chosen λ
    w = ein("ik,kj->ij", v_j, g_cols * p)
    r2, r2_vw = 1.0 - pick(ssew) / n_valid, 1.0 - pick(sse) / sst_t
    return lambdas[best], pick(mse), r2, r2_vw, w, muy_j - mux_j @ w

  return jax.lax.map(one_size, (v, s, mux, muy, cxy))


def source_curves(
    xs_train: Sequence[np.ndarray],
    xs_val: Sequence[np.ndarray],
    sizes: Sequence[int] = DEFAULT_SIZES,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    *,
    seed: int = 0,
    dtype=None,
) -> Iterator[SourceCurve]:
  """The calibration-size curve of every ordered pair, one source at a time.

  Args:
    xs_train: per model, its train rows [N, d_m] (the same rows for every model).
    xs_val: per model, its val rows [n, d_m].
    sizes: the prefix sizes (see `curve_sizes`; N is always added).
    lambdas: the ridge λ-path, every λ > 0.
    seed: the seed of the row order (`permutation`).
    dtype: the compute dtype; None: float32.

  Yields:
    One `SourceCurve` per model, in order; its targets are every model (itself included).

  Raises:
    InputError: mismatched rows, a λ ≤ 0, or bad sizes.
  """
  dtype = dtype or jnp.float32
  xs_train = [np.asarray(x) for x in xs_train]
  xs_val = [np.asarray(x) for x in xs_val]
  gram_lib.check_rows(xs_train, "train", n_rows=len(xs_train[0]) if xs_train else None)
  dims = [x.shape[1] for x in xs_train]
  gram_lib.check_rows(xs_val, "val", n_rows=len(xs_val[0]) if xs_val else None, dims=dims)
  lam = np.asarray(lambdas, np.float64)
  if lam.size == 0 or (lam <= 0).any():
    raise InputError(f"the calibration curve's λ-path must be positive, got {list(lambdas)}")
  n = xs_train[0].shape[0]
  bounds = curve_sizes(n, sizes)
  order = permutation(n, seed)
  offs = np.concatenate([[0], np.cumsum(dims)])
  cols = tuple(slice(int(a), int(b)) for a, b in zip(offs[:-1], offs[1:]))
  means = [x.astype(np.float64).mean(0) for x in xs_train]
  shift = lambda x, m: jnp.asarray(x.astype(np.float64) - m, dtype)
  tr = [shift(x[order], m) for x, m in zip(xs_train, means)]
  va = [shift(x, m) for x, m in zip(xs_val, means)]
  y, yv = jnp.concatenate(tr, 1), jnp.concatenate(va, 1)
  m_all = np.concatenate(means)
  lam_d = jnp.asarray(lam, dtype)
  static_cols = tuple((c.start, c.stop) for c in cols)
  for a in range(len(dims)):
    out = _source_curve(tr[a], va[a], y, yv, lam_d, bounds=bounds, cols=static_cols)
    lam_j, mse, r2, r2_vw, w, b = (np.asarray(o) for o in out)
    b = b + m_all.astype(b.dtype) - means[a].astype(w.dtype) @ w
    yield SourceCurve(a, np.asarray(bounds), lam_j, mse, r2, r2_vw, w, b, cols)
