"""Linear and debiased CKA for every pair of models, from cross-Gram blocks.

Everything is in feature space: no N×N kernel is formed.  With X [N, d_x], Y [N, d_y]
centred by their (own) means and linear kernels K = XXᵀ, L = YYᵀ:

Linear CKA (Kornblith et al. 2019):

    HSIC(K, L) ∝ tr(HKH HLH) = ‖XᵀY‖²_F          (X, Y already centred)
    CKA = ‖XᵀY‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)

Debiased CKA uses the unbiased HSIC estimator of Song et al. (2012):

    HSIC_u = [tr(K̃L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n-1)(n-2)) − 2/(n-2) · 1ᵀK̃L̃1] / (n(n-3))

with K̃, L̃ the kernels with their diagonals set to zero.  Let r_n = ‖x_n‖², s_n = ‖y_n‖²
(the kernels' diagonals) and note Σ_n x_n = 0 after centring.  Then

    tr(K̃L̃)   = Σ_{n≠m} K_nm L_nm = ‖XᵀY‖²_F − rᵀs
    1ᵀK̃1     = ‖Σ_n x_n‖² − Σ r = −tr(XᵀX)
    1ᵀK̃L̃1    = (K1 − r)ᵀ(L1 − s) = (X·0 − r)ᵀ(Y·0 − s) = rᵀs

so every term is a Gram block norm, a trace, or a dot of row-norm vectors (R Rᵀ, one
[M, N]×[N, M] product).  HSIC_u is a U-statistic of differences, so it is invariant to
translating the features: centring changes nothing and keeps the arithmetic well scaled.
Debiased CKA = HSIC_u(K, L) / sqrt(HSIC_u(K, K) HSIC_u(L, L)).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lead_jax.config import ControlConfig
from lead_jax.distributed import DATA
from lead_jax.similarity import gram as gram_lib
from lead_jax.similarity.gram import ein


def cka_all_pairs(
    xs: Sequence[jax.typing.ArrayLike],
    *,
    control_dim: int | None = ControlConfig.dim,
    seed: int = 0,
    dtype=None,
    mesh: Mesh | None = None,
) -> dict[str, jax.Array]:
  """Linear and debiased CKA between every pair of models.

  Args:
    xs: M arrays `[N, d_i]` with aligned rows.
    control_dim: width of the appended seeded standard-normal control model (`None` for no
      control).  With it the outputs are (M+1)×(M+1), control last.
    seed: seed of the control rows.
    dtype: float32 (default) or float64 (needs x64).
    mesh: optional mesh (`lead_jax.distributed.make_mesh`): rows are sharded over its
      `data` axis and every Gram block is a psum of per-device partial Grams.  Inputs
      may also arrive row-sharded already (global arrays of a multi-process run).

  Returns:
    dict with `linear` and `debiased` CKA matrices, `hsic_u` (unbiased HSIC) and
    `fro2` (‖X_iᵀX_j‖²_F), all `[M(+1), M(+1)]` in caller order.

  Raises:
    ValueError: no models, a shape mismatch, a non-finite value, or an unusable dtype.
  """
  gram_lib.check_rows(xs, "xs", n_rows=np_rows(xs))
  dtype = gram_lib.compute_dtype(xs, dtype)
  dims = tuple(int(x.shape[1]) for x in xs) + ((int(control_dim),) if control_dim else ())
  xs = tuple(jnp.asarray(x, dtype) for x in xs)
  key = jnp.asarray(seed, jnp.uint32)  # traced: a new seed reuses the compiled program
  return _cka_impl(xs, key, dims=dims, mesh=mesh)


def np_rows(xs) -> int:
  """The row count of the first model.

  Args:
    xs: the models' row arrays.

  Returns:
    `xs[0].shape[0]` as an int.
  """
  return int(xs[0].shape[0])


@functools.partial(jax.jit, static_argnames=("dims", "mesh"))
def _cka_impl(xs, seed, *, dims: tuple[int, ...], mesh=None):
  # One program whose structure does not depend on the number of models: the models'
  # centred rows side by side, Z [N, ΣD], one Gram ZᵀZ, and per-model sums over its
  # blocks through a one-hot segment matrix A [ΣD, M]. (The grouped, triangular version
  # did half the flops but was unrolled over group pairs, so its compile time grew with
  # the number of width groups: BUILD_NOTES §7.)
  n = xs[0].shape[0]
  xs = list(xs)
  if len(dims) > len(xs):  # the Gaussian control, last
    xs.append(gram_lib.gaussian_control(n, dims[-1], seed, xs[0].dtype))
  z = jnp.concatenate([gram_lib.constrain(x, mesh, DATA, None) for x in xs], axis=1)
  z = gram_lib.constrain(z - jnp.mean(z, axis=0), mesh, DATA, None)
  return cka_from_centred(z, dims, n)


def cka_from_centred(z: jax.Array, dims: tuple[int, ...], n: int) -> dict[str, jax.Array]:
  """CKA from every model's centred rows side by side (traceable; rows may be sharded).

  With A the [ΣD, M] one-hot map of columns to models: ‖C_ij‖²_F = (Aᵀ (G∘G) A)_ij for
  G = ZᵀZ, the row norms are R = (Z∘Z) A [N, M], so rᵢᵀrⱼ = (RᵀR)_ij and
  tr(C_ii) = Σ_n R_ni.

  Args:
    z: `[N, ΣD]`, model i's columns centred by their own means, in `dims` order.
    dims: each model's width.
    n: the row count N.

  Returns:
    As `cka_from_stats`, `[M, M]` in `dims` order.
  """
  # Built from an iota, not a [ΣD, M] literal: a dense constant that size made the
  # program text grow with the models (423 kB at 17 models) and slowed its compile.
  off = np.concatenate([[0], np.cumsum(dims)]).astype(np.int32)
  col = jax.lax.broadcasted_iota(jnp.int32, (int(off[-1]), len(dims)), 0)
  onehot = ((col >= off[None, :-1]) & (col < off[None, 1:])).astype(z.dtype)  # [ΣD, M]
  g = ein("np,nq->pq", z, z)
  fro2 = ein("pi,pq,qj->ij", onehot, g * g, onehot)
  r = ein("np,pi->ni", z * z, onehot)
  return cka_from_stats(fro2, ein("ni,nj->ij", r, r), jnp.sum(r, axis=0), n)


def cka_from_stats(fro2: jax.Array, rs: jax.Array, tr: jax.Array, n: int) -> dict[str, jax.Array]:
  """CKA from ‖C_ij‖²_F, rᵢᵀrⱼ and tr(C_ii) (centred data, n rows).

  Args:
    fro2: [M, M] squared Frobenius norms ‖X_iᵀX_j‖²_F of the cross-Gram blocks.
    rs: [M, M] dots rᵢᵀrⱼ of the row-norm vectors r_i[n] = ‖x_in‖².
    tr: [M] traces tr(X_iᵀX_i) = Σ_n r_i[n].
    n: the row count.

  Returns:
    `{"linear", "debiased", "hsic_u", "fro2"}`, each [M, M].
  """
  lin = fro2 / jnp.sqrt(jnp.outer(jnp.diag(fro2), jnp.diag(fro2)))
  hsic_u = (fro2 - rs + jnp.outer(tr, tr) / ((n - 1) * (n - 2)) - 2.0 * rs / (n - 2)) / (
      n * (n - 3)
  )
  d = jnp.diag(hsic_u)
  deb = hsic_u / jnp.sqrt(jnp.outer(d, d))
  return {"linear": lin, "debiased": deb, "hsic_u": hsic_u, "fro2": fro2}
