"""More similarity measures for every pair of models: CKNNA, SVCCA, PWCCA, Procrustes angle, RSA.

One centred Gram G = ZᵀZ of every model's rows side by side (blocks C_ij = X̃_iᵀX̃_j,
X̃ centred by its own mean) and one eigendecomposition C_ii = V_i diag(s_i) V_iᵀ per
model serve SVCCA, PWCCA and the Procrustes angle; CKNNA needs only each model's kNN
lists and the kernel values at them; RSA works on a seeded row subsample.

SVCCA (Raghu et al. 2017), k = `svcca_k`: keep the top-k left singular vectors of each
centred space, U_i = X̃_i V_i^k diag(s_i^k)^-½ (orthonormal N×k), and take the mean of the
canonical correlations between them, i.e. of the singular values of

    U_iᵀU_j = diag(s_i^k)^-½ V_i^kᵀ C_ij V_j^k diag(s_j^k)^-½      (k×k).

Centring only: no per-column z-scoring (it would inflate dead dimensions).

PWCCA (Morcos et al. 2018): full CCA of X̃_i and X̃_j. With T_i = V_i diag(s_i)^-½ over
the eigenvalues > rcond·max (the others are dropped: CCA within the range of X̃_i),
M_ij = T_iᵀ C_ij T_j = U Σ Wᵀ gives the canonical correlations ρ = Σ and the canonical
variates h_m = X̃_i T_i u_m (unit norm, mutually orthogonal, so Morcos' QR is a no-op).
Their projection weights on the columns of X̃_i are

    α̃_m = Σ_p |⟨h_m, x̃_p⟩| = Σ_p |(C_ii T_i u_m)_p| = Σ_p |(V_i diag(s_i)^½ u_m)_p|,

and PWCCA = Σ_m α_m ρ_m with α = α̃/Σα̃. The weights live in one space, so the matrix is
not symmetric: entry [i, j] weights by model i's columns (Morcos weight by the space with
fewer neurons, i.e. the entry [narrower, wider]).

Procrustes angle (netrep's `LinearMetric(alpha=1, center_columns=True,
score_method="angular")`, whitening off): θ_ij = arccos(‖C_ij‖_* / (‖X̃_i‖_F ‖X̃_j‖_F)),
in radians, 0 for spaces equal up to rotation (zero-padding the narrower space changes
neither norm). ‖X̃‖_F² = tr C_ii.

CKNNA (Huh et al. 2024, platonic-rep `cknna`, unbiased, topk = k), on L2-normalised rows
with K = XXᵀ (cosine, not centred) and kNN masks m[n, p] = 1 if p is among n's k nearest
other rows: with the intersection mask m = m_i ∘ m_j, Ã = m ∘ K_i, B̃ = m ∘ K_j,

    sim(Ã, B̃) = [Σ_np Ã_np B̃_pn + ΣÃ·ΣB̃ / ((N−1)(N−2)) − 2/(N−2) · 1ᵀÃB̃1] / (N(N−3))
    CKNNA_ij = sim_ij / sqrt(sim_ii · sim_jj)

(platonic-rep adds 1e-6 to the denominator; we do not: it is a scale-dependent offset).
The masked kernels are not symmetric, so 1ᵀÃB̃1 ≠ 1ᵀB̃Ã1 and neither is CKNNA: entry
[i, j] is platonic-rep's `cknna(X_i, X_j)`.
Everything is a sum over mask entries, so it is computed from the [N, k] lists: the mask
is where a neighbour of n in i is also one in j; Σ Ã_np B̃_pn needs (p, n) in the mask
too, i.e. n among p's neighbours in both spaces; 1ᵀÃB̃1 = Σ_p colsum(Ã)_p rowsum(B̃)_p.

RSA: on a seeded subsample of R rows, each model's RDM is the correlation distance
1 − r(x_a, x_b) between rows (Kriegeskorte et al. 2008); RSA = Spearman correlation of
two models' upper triangles (average ranks for ties).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lead_jax.config import ControlConfig, MeasuresConfig
from lead_jax.errors import InputError
from lead_jax.similarity import gram as gram_lib
from lead_jax.similarity import knn as knn_lib
from lead_jax.similarity.gram import ein

MEASURES = ("cknna", "svcca", "pwcca", "procrustes_angle", "rsa")


def rsa_rows(seed: int, n_rows: int, n_sub: int) -> np.ndarray:
  """The RSA subsample: `min(n_sub, n_rows)` distinct row indices, sorted, seeded.

  Args:
    seed: the seed.
    n_rows: N.
    n_sub: rows wanted.

  Returns:
    int32 [R].
  """
  r = min(int(n_sub), int(n_rows))
  idx = jax.random.choice(jax.random.key(seed), n_rows, (r,), replace=False)
  return np.sort(np.asarray(idx, np.int32))


def measures_all_pairs(
    xs: Sequence[jax.typing.ArrayLike],
    *,
    control_dim: int | None = ControlConfig.dim,
    control_seed: int = ControlConfig.seed,
    cknna_k: int = MeasuresConfig.cknna_k,
    svcca_k: int = MeasuresConfig.svcca_k,
    rcond: float = MeasuresConfig.rcond,
    rsa_n: int = MeasuresConfig.rsa_rows,
    rsa_seed: int = MeasuresConfig.rsa_seed,
    knn: jax.typing.ArrayLike | None = None,
    dtype=None,
) -> dict[str, np.ndarray]:
  """CKNNA, SVCCA, PWCCA, Procrustes angle and RSA between every pair (definitions above).

  Args:
    xs: M arrays `[N, d_i]` with aligned rows.
    control_dim: width of the appended Gaussian control (None/0: none), as `cka_all_pairs`.
    control_seed: its seed.
    cknna_k: k of CKNNA's neighbour masks.
    svcca_k: SVD directions kept per space (capped at the narrowest width).
    rcond: relative eigenvalue cutoff of the CCA whitening.
    rsa_n: rows of the RSA subsample.
    rsa_seed: its seed.
    knn: precomputed `knn.knn_all(xs, cknna_k, control_dim, control_seed)` lists, or None.
    dtype: float32 (default) or float64 (needs x64).

  Returns:
    `{measure: [M', M']}` numpy, caller order (control last). `pwcca` is weighted by the
    row model's columns; `procrustes_angle` is in radians (0 on the diagonal).

  Raises:
    InputError: a shape mismatch or non-finite value (names the array and row), or k out
      of range.
  """
  try:
    gram_lib.check_rows(xs, "xs", n_rows=int(np.shape(xs[0])[0]) if len(xs) else None)
  except ValueError as e:
    raise InputError(str(e)) from None
  n = int(np.shape(xs[0])[0])
  if not 2 <= cknna_k < n:
    raise InputError(f"measures.cknna_k must be in [2, {n - 1}] for {n} rows, got {cknna_k}")
  if rsa_n < 4:
    raise InputError(f"measures.rsa_rows must be ≥ 4, got {rsa_n}")
  dtype = gram_lib.compute_dtype(xs, dtype)
  dims = tuple(int(np.shape(x)[1]) for x in xs) + ((int(control_dim),) if control_dim else ())
  k_sv = max(1, min(int(svcca_k), min(dims)))
  out = _measures_impl(
      tuple(jnp.asarray(x, dtype) for x in xs),
      knn_lib.check_lists(knn, len(dims), n, int(cknna_k)),
      jnp.asarray(control_seed, jnp.uint32),
      jnp.asarray(rsa_rows(rsa_seed, n, rsa_n)),
      dims=dims,
      k_nn=int(cknna_k),
      k_sv=k_sv,
      rcond=float(rcond),
  )
  return {k: np.asarray(v) for k, v in out.items()}


@functools.partial(jax.jit, static_argnames=("dims", "k_nn", "k_sv", "rcond"))
def _measures_impl(xs, lists, control_seed, rsa_idx, *, dims, k_nn, k_sv, rcond):
  n = xs[0].shape[0]
  xs = list(xs)
  if len(dims) > len(xs):
    xs.append(gram_lib.gaussian_control(n, dims[-1], control_seed, xs[0].dtype))
  m = len(dims)
  off = np.concatenate([[0], np.cumsum(dims)])
  z = jnp.concatenate(xs, axis=1)
  z = z - jnp.mean(z, axis=0)
  g = ein("np,nq->pq", z, z)
  # Every model and pair padded to the widest model W, so one eigh and one pair program
  # are compiled whatever the widths (an unrolled loop over pairs compiled 10 SVD
  # programs: 6 s on 2 cores). Zero padding adds zero eigenvalues (never among the top k,
  # and below the CCA cutoff) and zero singular values after the min(d_i, d_j) real ones.
  w = max(dims)
  pad = lambda a: jnp.pad(a, ((0, w - a.shape[0]), (0, w - a.shape[1])))
  blk = lambda i, j: g[off[i] : off[i + 1], off[j] : off[j + 1]]
  diag = jnp.stack([pad(0.5 * (blk(i, i) + blk(i, i).T)) for i in range(m)])
  s_all, v_all = gram_lib.linalg_map(jnp.linalg.eigh, diag, 1)  # ascending
  trace = jnp.trace(diag, axis1=1, axis2=2)
  iu, ju = np.triu_indices(m, 1)
  cross = jnp.stack([pad(blk(i, j)) for i, j in zip(iu, ju)])
  dmin = jnp.asarray(np.minimum(np.asarray(dims)[iu], np.asarray(dims)[ju]))

  def pair(args):
    c, si, vi, sj, vj, tri, trj, dm = args
    # SVCCA: the top-k directions (eigh is ascending: the last k)
    ti = vi[:, -k_sv:] / jnp.sqrt(jnp.maximum(si[-k_sv:], 1e-30))
    tj = vj[:, -k_sv:] / jnp.sqrt(jnp.maximum(sj[-k_sv:], 1e-30))
    svcca = jnp.mean(jnp.linalg.svd(ein("pa,pq,qb->ab", ti, c, tj), compute_uv=False))
    # PWCCA: full CCA within each space's range; the first min(d_i, d_j) components
    wi, hi = _whiten(si, vi, rcond)
    wj, hj = _whiten(sj, vj, rcond)
    u, rho, wt = jnp.linalg.svd(ein("pa,pq,qb->ab", wi, c, wj), full_matrices=False)
    real = jnp.arange(rho.shape[0]) < dm
    alpha = jnp.where(real, jnp.sum(jnp.abs(ein("pa,am->pm", hi, u)), axis=0), 0.0)
    beta = jnp.where(real, jnp.sum(jnp.abs(ein("qb,mb->qm", hj, wt)), axis=0), 0.0)
    pw_ij = jnp.sum(alpha * rho) / jnp.sum(alpha)
    pw_ji = jnp.sum(beta * rho) / jnp.sum(beta)
    # Procrustes angle: arccos(‖C_ij‖_* / (‖X̃_i‖_F ‖X̃_j‖_F))
    nuc = jnp.sum(jnp.linalg.svd(c, compute_uv=False))
    ang = jnp.arccos(jnp.clip(nuc / jnp.sqrt(tri * trj), -1.0, 1.0))
    return svcca, pw_ij, pw_ji, ang

  args = (cross, s_all[iu], v_all[iu], s_all[ju], v_all[ju], trace[iu], trace[ju], dmin)
  if jax.default_backend() == "cpu":
    gram_lib.limit_lapack_threads()
  svcca, pw_ij, pw_ji, ang = jax.lax.map(pair, args)
  eye = jnp.eye(m, dtype=z.dtype)
  sym = lambda v, d: jnp.zeros((m, m), z.dtype).at[iu, ju].set(v).at[ju, iu].set(v) + d * eye
  svc, ang = sym(svcca, 1.0), sym(ang, 0.0)
  pw = jnp.zeros((m, m), z.dtype).at[iu, ju].set(pw_ij).at[ju, iu].set(pw_ji) + eye
  return {
      "cknna": _cknna(xs, k_nn, lists),
      "svcca": svc,
      "pwcca": pw,
      "procrustes_angle": ang,
      "rsa": _rsa([x[rsa_idx] for x in xs]),
  }


def _whiten(s, v, rcond):
  """T = V diag(s)^-½ and C^½-side H = V diag(s)^½ over eigenvalues > rcond·max (else 0)."""
  s = jnp.maximum(s, 0.0)
  keep = s > rcond * jnp.max(s)
  inv = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, s, 1.0)), 0.0)
  return v * inv[None, :], v * jnp.where(keep, jnp.sqrt(s), 0.0)[None, :]


def _cknna(xs, k, given=None):
  """CKNNA for every pair from each model's kNN lists and kernel values at them."""
  n = xs[0].shape[0]
  m = len(xs)
  lists, kval, recip = [], [], []
  for i, x in enumerate(xs):
    xn = knn_lib.l2_rows(x)
    nb = knn_lib.knn_lists(xn, k) if given is None else given[i]  # [N, k]
    lists.append(nb)
    kval.append(ein("nd,nkd->nk", xn, xn[nb]))  # K[n, nb[n, s]]
    # is the relation reciprocated: n among the neighbours of nb[n, s]?
    recip.append(jnp.any(nb[nb] == jnp.arange(n)[:, None, None], axis=-1))
  lists, kval, recip = jnp.stack(lists), jnp.stack(kval), jnp.stack(recip)
  iu, ju = (a.ravel() for a in np.indices((m, m)))  # every ordered pair (diagonal: sim_ii)

  def pair(la, ka, ra, lb, kb, rb):
    eq = la[:, :, None] == lb[:, None, :]  # [N, k_a slot, k_b slot]
    mask = jnp.any(eq, axis=-1)  # (n, la[n, s]) is in both neighbour sets
    kb_at = jnp.sum(jnp.where(eq, kb[:, None, :], 0.0), axis=-1)  # K_j at (n, la[n, s])
    rb_at = jnp.any(eq & rb[:, None, :], axis=-1)
    a = jnp.where(mask, ka, 0.0)  # Ã at (n, la[n, s])
    b = jnp.where(mask, kb_at, 0.0)  # B̃ there
    t1 = jnp.sum(jnp.where(ra & rb_at, a * b, 0.0))  # Σ Ã_np B̃_pn: (p, n) in the mask too
    col_a = jax.ops.segment_sum(a.reshape(-1), la.reshape(-1), num_segments=n)
    row_b = jnp.sum(b, axis=1)
    sa, sb = jnp.sum(a), jnp.sum(b)
    return (t1 + sa * sb / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * jnp.dot(col_a, row_b)) / (
        n * (n - 3)
    )

  sim = jax.vmap(pair)(lists[iu], kval[iu], recip[iu], lists[ju], kval[ju], recip[ju])
  s = sim.reshape(m, m)
  d = jnp.diag(s)
  return s / jnp.sqrt(jnp.outer(d, d))


def _ranks(v):
  """Average ranks (1-based; ties share their mean rank) of a 1-D array."""
  t = v.shape[0]
  order = jnp.argsort(v)
  sv = v[order]
  start = jnp.concatenate([jnp.ones((1,), bool), sv[1:] != sv[:-1]])
  grp = jnp.cumsum(start) - 1
  pos = jnp.arange(t, dtype=v.dtype)
  first = jax.ops.segment_min(pos, grp, num_segments=t)
  last = jax.ops.segment_max(pos, grp, num_segments=t)
  avg = (first + last)[grp] / 2.0 + 1.0
  return jnp.zeros_like(v).at[order].set(avg)


def _rsa(subs):
  """Spearman correlation of the models' correlation-distance RDMs (upper triangles)."""
  r = subs[0].shape[0]
  upper = np.triu(np.ones((r, r), bool), 1).reshape(-1)
  ranked = []
  for x in subs:
    xc = x - jnp.mean(x, axis=1, keepdims=True)
    xn = knn_lib.l2_rows(xc)
    rdm = (1.0 - ein("ad,bd->ab", xn, xn)).reshape(-1)
    # entries off the upper triangle go last (+inf), so the upper ones rank 1 … T
    rk = _ranks(jnp.where(upper, rdm, jnp.inf))
    rk = jnp.where(upper, rk, 0.0)
    t = upper.sum()
    mean = (t + 1) / 2.0
    rk = jnp.where(upper, rk - mean, 0.0)
    ranked.append(rk / jnp.linalg.norm(rk))
  ranked = jnp.stack(ranked)
  return ein("it,jt->ij", ranked, ranked)
