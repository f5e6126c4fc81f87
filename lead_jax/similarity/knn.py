"""Exact cosine k-nearest-neighbour lists and mutual-kNN, traceable (no host round trips).

`lead_jax.eval.retrieval.knn` is the retrieval layer's search (sharded corpus, host
merge); the similarity layer sits below it and needs kNN lists inside its own jitted
programs (the permutation null, CKNNA), so this is a small jnp version of the same
definition: rows L2-normalised, similarity = cosine, a row is never its own neighbour.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lead_jax.errors import InputError
from lead_jax.similarity import gram as gram_lib
from lead_jax.similarity.gram import ein


def l2_rows(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows scaled to unit L2 norm (zero rows stay zero).

  Args:
    x: rows [N, d].
    eps: floor of the norm.

  Returns:
    [N, d].
  """
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def knn_lists(x_nd: jax.Array, k: int, block: int = 1024) -> jax.Array:
  """Indices [N, k] of each row's k nearest other rows by cosine, nearest first (traceable).

  Query rows are taken `block` at a time (`lax.map`), so memory is [block, N].

  Args:
    x_nd: rows [N, d].
    k: neighbours per row, 1 ≤ k < N.
    block: query rows per step.

  Returns:
    int32 [N, k].
  """
  n = x_nd.shape[0]
  xn = l2_rows(x_nd)
  nb = -(-n // block)
  pad = nb * block - n
  q = jnp.pad(xn, ((0, pad), (0, 0))).reshape(nb, block, -1)
  ids = jnp.arange(nb * block, dtype=jnp.int32).reshape(nb, block)

  def one(args):
    qb, ib = args
    s = ein("bd,nd->bn", qb, xn)
    s = jnp.where(ib[:, None] == jnp.arange(n)[None, :], -jnp.inf, s)
    return jax.lax.top_k(s, k)[1].astype(jnp.int32)

  return jax.lax.map(one, (q, ids)).reshape(nb * block, k)[:n]


def overlap_counts(knn_a: jax.Array, knn_b: jax.Array) -> jax.Array:
  """Per row, |N_A(n) ∩ N_B(n)| of two [N, k] neighbour lists (each row's ids distinct).

  Args:
    knn_a: [N, k] int.
    knn_b: [N, k] int.

  Returns:
    [N] int32 counts.
  """
  return jnp.sum(knn_a[:, :, None] == knn_b[:, None, :], axis=(1, 2), dtype=jnp.int32)


def mutual_knn(knn_a: jax.Array, knn_b: jax.Array) -> jax.Array:
  """mKNN@k = mean_n |N_A(n) ∩ N_B(n)| / k (Huh et al. 2024).

  Args:
    knn_a: [N, k] int.
    knn_b: [N, k] int.

  Returns:
    A scalar in [0, 1].
  """
  return jnp.mean(overlap_counts(knn_a, knn_b)) / knn_a.shape[1]


def knn_all(xs, k: int, control_dim: int | None = None, control_seed: int = 0) -> jax.Array:
  """Every model's kNN lists stacked, the Gaussian control (drawn as CKA draws it) last.

  Computed once, they can be passed to `null_all_pairs` and `measures_all_pairs`
  (`knn=`), which otherwise each compute them.

  Args:
    xs: M arrays [N, d_i].
    k: neighbours per row.
    control_dim: the control's width, or None/0.
    control_seed: its seed.

  Returns:
    int32 [M(+1), N, k].
  """
  dims = tuple(int(x.shape[1]) for x in xs) + ((int(control_dim),) if control_dim else ())
  xs = tuple(jnp.asarray(x, jnp.result_type(x.dtype, jnp.float32)) for x in xs)
  return _knn_all(xs, jnp.asarray(control_seed, jnp.uint32), k=int(k), dims=dims)


@functools.partial(jax.jit, static_argnames=("k", "dims"))
def _knn_all(xs, control_seed, *, k, dims):
  xs = list(xs)
  if len(dims) > len(xs):
    xs.append(gram_lib.gaussian_control(xs[0].shape[0], dims[-1], control_seed, xs[0].dtype))
  return jnp.stack([knn_lists(x, k) for x in xs])


def check_lists(knn, m: int, n: int, k: int) -> jax.Array | None:
  """Validates precomputed lists (`knn_all`'s shape [m, n, k]); None passes through.

  Args:
    knn: the lists, or None.
    m: models (control included).
    n: rows.
    k: neighbours.

  Returns:
    int32 lists, or None.

  Raises:
    InputError: the shape differs.
  """
  if knn is None:
    return None
  if tuple(np.shape(knn)) != (m, n, k):
    raise InputError(f"knn: expected lists [{m}, {n}, {k}], got {tuple(np.shape(knn))}")
  return jnp.asarray(knn, jnp.int32)
