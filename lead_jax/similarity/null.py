"""Permutation nulls for linear CKA, debiased CKA and mutual-kNN, every pair at once.

Under H0 "model j's rows carry no information about model i's", the rows of one side
can be shuffled. For each of P seeded permutations π (P×N, drawn once), and every pair
i < j, we recompute each statistic between X_i and ΠX_j. The *same* π serves every pair
and all three statistics in one pass (`_null_impl`'s loop body), so a pair's three null
samples are paired draws of one shuffle, never recomputed per statistic.

What a permutation changes. Centring commutes with Π (the column means are unchanged),
so with centred X = X_i, Y = X_j, row norms r = diag(XXᵀ), s = diag(YYᵀ):

    ‖Xᵀ(ΠY)‖²_F = tr(K_X Π K_Y Πᵀ)       (the only HSIC term that moves)
    rᵀ(Πs)                              (debiased CKA's row-norm term)
    ‖XᵀX‖_F, ‖YᵀY‖_F, tr(XᵀX), HSIC_u(K, K)   unchanged: computed once.

So linear and debiased CKA share one cross product per pair and permutation. Two exact
routes exist: the kernel form Σ_ab K_X[a,b] K_Y[πa,πb] costs N² per pair but is a gather
over N×N kernels (N = 6,000: 144 MB per model, read per permutation: memory bound,
≈ 4 GB of traffic per permutation for 5 models); the feature form X̃ᵀ(ΠỸ) costs
2N·d_i·d_j FLOPs as dense matmuls at the machine's matmul rate. We take the feature form
with one product per pair i < j, each permuted model gathered once per permutation as
its own contiguous [N, d_j] array (2N·Σ_{i<j} d_i d_j FLOPs per permutation: the upper
blocks only; (j, i) is the same null by symmetry of the permutation group). (One product
of X_i against all later models' columns side by side does the same FLOPs; it timed the
same, but gathered the whole [N, ΣD] array per permutation, twice the bytes.)

Mutual-kNN needs no Gram: the kNN lists of ΠY are π⁻¹(N_Y(π(n))), an index gather of the
lists computed once; the overlap with N_X(n) is N·k² comparisons per pair.

Calibrated score. With μ₀, σ₀ the null mean and standard deviation (ddof 1) of a pair's
statistic s:

    calibrated = (s − μ₀) / (1 − μ₀)        (chance-corrected: 0 at the null mean, 1 at
                                            identical spaces; the adjusted-Rand / κ form)
    z          = (s − μ₀) / σ₀
    p          = (1 + #{null ≥ s}) / (P + 1)  (the +1 correction: never 0, exact level)

Each statistic's maximum is 1 (CKA of a space with itself, mKNN of identical lists), so the
calibrated score lies in (−∞, 1] and is comparable across statistics and widths.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lead_jax.config import ControlConfig, NullConfig
from lead_jax.errors import InputError
from lead_jax.similarity import cka as cka_lib
from lead_jax.similarity import gram as gram_lib
from lead_jax.similarity import knn as knn_lib
from lead_jax.similarity.gram import ein

STATISTICS = ("linear", "debiased", "mutual_knn")


def permutations(seed: int, n_perm: int, n_rows: int) -> jax.Array:
  """P seeded row permutations, drawn once for every pair and statistic.

  Args:
    seed: the PRNG seed.
    n_perm: P.
    n_rows: N.

  Returns:
    int32 [P, N]; row p is a permutation of 0 … N−1.
  """
  return _perms(jnp.asarray(seed, jnp.uint32), n_perm=n_perm, n_rows=n_rows)


@functools.partial(jax.jit, static_argnames=("n_perm", "n_rows"))
def _perms(seed, *, n_perm, n_rows):
  keys = jax.random.split(jax.random.key(seed), n_perm)
  return jax.vmap(lambda k: jax.random.permutation(k, n_rows))(keys).astype(jnp.int32)


def null_all_pairs(
    xs: Sequence[jax.typing.ArrayLike],
    *,
    n_perm: int = NullConfig.permutations,
    seed: int = NullConfig.seed,
    knn_k: int = NullConfig.knn_k,
    control_dim: int | None = ControlConfig.dim,
    control_seed: int = ControlConfig.seed,
    perms: jax.typing.ArrayLike | None = None,
    knn: jax.typing.ArrayLike | None = None,
    batch: int = NullConfig.batch,
    dtype=None,
) -> dict[str, dict[str, np.ndarray]]:
  """Observed values and permutation nulls of linear CKA, debiased CKA and mutual-kNN.

  Args:
    xs: M arrays `[N, d_i]` with aligned rows.
    n_perm: P, the number of permutations (ignored when `perms` is given).
    seed: the permutations' seed.
    knn_k: k of mutual-kNN (cosine, self excluded).
    control_dim: width of the appended Gaussian control (`None`/0: none), drawn as
      `cka_all_pairs` draws it, so observed CKA equals the CKA stage's.
    control_seed: the control's seed.
    perms: explicit permutations [P, N] (tests); default `permutations(seed, P, N)`.
    knn: precomputed `knn.knn_all(xs, knn_k, control_dim, control_seed)` lists, or None.
    batch: permutations per step of the loop (vmapped inside a step).
    dtype: float32 (default) or float64 (needs x64).

  Returns:
    `{"observed": {stat: [M', M']}, "null": {stat: [P, M', M']}}` for each of
    `STATISTICS`, numpy, caller order (control last); null diagonals are NaN.

  Raises:
    InputError: a shape mismatch or non-finite value (names the array and row), or k or
      P out of range.
  """
  try:
    gram_lib.check_rows(xs, "xs", n_rows=int(np.shape(xs[0])[0]) if len(xs) else None)
  except ValueError as e:
    raise InputError(str(e)) from None
  n = int(np.shape(xs[0])[0])
  if not 1 <= knn_k < n:
    raise InputError(f"null.knn_k must be in [1, {n - 1}] for {n} rows, got {knn_k}")
  if perms is None:
    if n_perm < 1:
      raise InputError(f"null.permutations must be ≥ 1, got {n_perm}")
    perms = permutations(seed, n_perm, n)
  perms = jnp.asarray(perms, jnp.int32)
  if perms.ndim != 2 or perms.shape[1] != n:
    raise InputError(f"perms: expected [P, {n}], got {perms.shape}")
  dtype = gram_lib.compute_dtype(xs, dtype)
  dims = tuple(int(np.shape(x)[1]) for x in xs) + ((int(control_dim),) if control_dim else ())
  xs = tuple(jnp.asarray(x, dtype) for x in xs)
  knn = knn_lib.check_lists(knn, len(dims), n, knn_k)
  obs, nul = _null_impl(
      xs,
      perms,
      knn,
      jnp.asarray(control_seed, jnp.uint32),
      dims=dims,
      k=int(knn_k),
      batch=max(1, min(int(batch), int(perms.shape[0]))),
  )
  return {
      "observed": {s: np.asarray(obs[s]) for s in STATISTICS},
      "null": {s: np.asarray(nul[s]) for s in STATISTICS},
  }


@functools.partial(jax.jit, static_argnames=("dims", "k", "batch"))
def _null_impl(xs, perms, lists, control_seed, *, dims, k, batch):
  n = xs[0].shape[0]
  xs = list(xs)
  if len(dims) > len(xs):  # the Gaussian control, last (as cka_all_pairs draws it)
    xs.append(gram_lib.gaussian_control(n, dims[-1], control_seed, xs[0].dtype))
  m = len(dims)
  off = np.concatenate([[0], np.cumsum(dims)])
  seg = np.repeat(np.arange(m), dims)
  onehot = jnp.asarray(seg[:, None] == np.arange(m)[None, :], xs[0].dtype)  # [ΣD, M]
  z = jnp.concatenate(xs, axis=1)
  z = z - jnp.mean(z, axis=0)
  zs = [z[:, off[i] : off[i + 1]] for i in range(m)]  # each model's centred rows
  obs = cka_lib.cka_from_centred(z, dims, n)
  fro2_self = jnp.diag(obs["fro2"])
  hsic_self = jnp.diag(obs["hsic_u"])
  r = ein("np,pi->ni", z * z, onehot)  # [N, M] row norms²
  tr = jnp.sum(r, axis=0)
  if lists is None:
    lists = jnp.stack([knn_lib.knn_lists(x, k) for x in xs])  # [M, N, k]
  iu, ju = np.triu_indices(m, 1)
  mk_obs = (
      jnp.zeros((m, m), xs[0].dtype)
      .at[iu, ju]
      .set(
          jnp.mean(jax.vmap(knn_lib.overlap_counts)(lists[iu], lists[ju]).astype(z.dtype), axis=1)
          / k
      )
  )
  mk_obs = mk_obs + mk_obs.T + jnp.eye(m, dtype=mk_obs.dtype)
  upper = jnp.asarray(np.triu(np.ones((m, m), bool), 1))

  def one(pi):
    inv = jnp.zeros_like(pi).at[pi].set(jnp.arange(n, dtype=pi.dtype))
    zp = [zc[pi] for zc in zs[1:]]  # Π X_j, j ≥ 1, each contiguous (no column slices)
    fro2 = jnp.zeros((m, m), z.dtype)
    for i in range(m - 1):  # ‖X_iᵀ (Π X_j)‖²_F for every j > i
      for j in range(i + 1, m):
        blk = ein("nd,ne->de", zs[i], zp[j - 1])
        fro2 = fro2.at[i, j].set(jnp.sum(blk * blk))
    rs = ein("ni,nj->ij", r, r[pi])  # r_iᵀ Π r_j
    fro2 = jnp.where(upper, fro2, 0.0)
    rs = jnp.where(upper, rs, 0.0)
    fro2, rs = fro2 + fro2.T, rs + rs.T
    lin = fro2 / jnp.sqrt(jnp.outer(fro2_self, fro2_self))
    hsic = (fro2 - rs + jnp.outer(tr, tr) / ((n - 1) * (n - 2)) - 2.0 * rs / (n - 2)) / (
        n * (n - 3)
    )
    deb = hsic / jnp.sqrt(jnp.outer(hsic_self, hsic_self))
    lists_p = inv[lists[ju][:, pi]]  # kNN lists of Π X_j: π⁻¹(N_j(π(n)))
    cnt = jax.vmap(knn_lib.overlap_counts)(lists[iu], lists_p)
    mk = jnp.zeros((m, m), z.dtype).at[iu, ju].set(jnp.mean(cnt.astype(z.dtype), axis=1) / k)
    mk = mk + mk.T
    nan = jnp.where(jnp.eye(m, dtype=bool), jnp.nan, 0.0).astype(z.dtype)
    return {"linear": lin + nan, "debiased": deb + nan, "mutual_knn": mk + nan}

  nul = jax.lax.map(one, perms, batch_size=batch)
  return {"linear": obs["linear"], "debiased": obs["debiased"], "mutual_knn": mk_obs}, nul


def calibrate(observed: np.ndarray, null: np.ndarray) -> dict[str, np.ndarray]:
  """Null summary, calibrated score, z and p-value of every pair (definitions: module doc).

  Args:
    observed: [M, M] observed statistic.
    null: [P, M, M] its permutation null (NaN diagonal).

  Returns:
    `{"null_mean", "null_sd", "calibrated", "z", "p_value"}`, each [M, M] float64 with a
    NaN diagonal.
  """
  obs = np.asarray(observed, np.float64)
  nul = np.asarray(null, np.float64)
  p = nul.shape[0]
  mu = nul.mean(axis=0)
  sd = nul.std(axis=0, ddof=1) if p > 1 else np.full_like(mu, np.nan)
  with np.errstate(divide="ignore", invalid="ignore"):
    out = {
        "null_mean": mu,
        "null_sd": sd,
        "calibrated": (obs - mu) / (1.0 - mu),
        "z": (obs - mu) / sd,
        "p_value": (1.0 + np.sum(nul >= obs[None], axis=0)) / (p + 1.0),
    }
  eye = np.eye(obs.shape[0], dtype=bool)
  for v in out.values():
    v[eye] = np.nan
  return out
