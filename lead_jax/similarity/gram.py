"""Cross-Gram blocks: the single pass over rows that CKA and every stitch derive from.

Models are given as a list of arrays `x_i [N, d_i]` whose rows are aligned (row n
is the same text for every model).  Models with the same width are stacked into a
*group* `z_g [N, m_g, d_g]` so that every later computation has a real pair axis
(`[m_a, m_b, ...]` for a group pair) that can be vmapped or sharded.  Groups are
ordered by width; `Layout` remembers the permutation back to the caller's order.

The Gram block of group pair (a, b) is `G_ab[i, p, j, q] = Σ_n z_a[n, i, p] z_b[n, j, q]`,
i.e. `C_ij = X_iᵀ X_j` for every member i of a and j of b.  It is a contraction over
the row axis, so a row-sharded input gives a psum over row blocks under `jit`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

HIGHEST = jax.lax.Precision.HIGHEST
# Name of the seeded N(0, 1) control model in every results table and matrix.
CONTROL_NAME = "gaussian_control"
ein = functools.partial(jnp.einsum, precision=HIGHEST)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Static grouping of models by width (hashable, so it can be a jit static arg).

  Attributes:
    dims: the models' widths, in caller order.
    groups: per group, in increasing width, (width, member indices in caller order).
  """

  dims: tuple[int, ...]  # caller order
  groups: tuple[tuple[int, tuple[int, ...]], ...]  # (width, member indices in caller order)

  @property
  def n_models(self) -> int:
    """The number of models M."""
    return len(self.dims)

  @property
  def order(self) -> tuple[int, ...]:
    """Caller indices in group order."""
    return tuple(i for _, members in self.groups for i in members)

  @property
  def inverse(self) -> np.ndarray:
    """inverse[u] = position of caller index u in group order (int32 [M])."""
    inv = np.empty(self.n_models, dtype=np.int32)
    inv[list(self.order)] = np.arange(self.n_models)
    return inv


def make_layout(dims: Sequence[int]) -> Layout:
  """Groups models of the same width, groups ordered by width.

  Args:
    dims: the models' widths, in caller order.

  Returns:
    The `Layout`.
  """
  dims = tuple(int(d) for d in dims)
  widths = sorted(set(dims))
  groups = tuple((w, tuple(i for i, d in enumerate(dims) if d == w)) for w in widths)
  return Layout(dims=dims, groups=groups)


def to_caller_order(grouped: jax.Array, layout: Layout, axes: int = 2) -> jax.Array:
  """Permute the leading `axes` model axes from group order back to caller order.

  Args:
    grouped: an array whose leading `axes` axes are [M] in group order.
    layout: the grouping.
    axes: how many leading axes to permute.

  Returns:
    The array with those axes in caller order.
  """
  inv = jnp.asarray(layout.inverse)
  for ax in range(axes):
    grouped = jnp.take(grouped, inv, axis=ax)
  return grouped


def assemble(blocks: dict[tuple[int, int], jax.Array], layout: Layout) -> jax.Array:
  """Group-pair blocks `[m_a, m_b, ...]` → one `[M, M, ...]` array in caller order.

  Args:
    blocks: `{(a, b): [m_a, m_b, ...]}` for every group pair.
    layout: the grouping.

  Returns:
    The `[M, M, ...]` array.
  """
  n = len(layout.groups)
  rows = [jnp.concatenate([blocks[a, b] for b in range(n)], axis=1) for a in range(n)]
  return to_caller_order(jnp.concatenate(rows, axis=0), layout)


def assemble_vec(blocks: Sequence[jax.Array], layout: Layout) -> jax.Array:
  """Per-group `[m_g, ...]` → `[M, ...]` in caller order.

  Args:
    blocks: per group, in group order, `[m_g, ...]`.
    layout: the grouping.

  Returns:
    The `[M, ...]` array.
  """
  return to_caller_order(jnp.concatenate(list(blocks), axis=0), layout, axes=1)


def compute_dtype(xs: Sequence[jax.typing.ArrayLike], dtype=None) -> jnp.dtype:
  """float32 unless float64 is asked for (or given) and x64 is on.

  Args:
    xs: the inputs; with `dtype` None their result type (at least float32) is used.
    dtype: the dtype asked for, or None.

  Returns:
    `float32` or `float64`.

  Raises:
    ValueError: float64 asked for without x64, or a dtype other than float32/float64.
  """
  if dtype is None:
    dtype = jnp.promote_types(jnp.result_type(*xs), jnp.float32)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
      dtype = jnp.dtype(jnp.float32)
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float64 and not jax.config.jax_enable_x64:
    raise ValueError("dtype=float64 needs jax.config.update('jax_enable_x64', True) first")
  if dtype not in (jnp.float32, jnp.float64):
    raise ValueError(f"compute dtype must be float32 or float64, got {dtype}")
  return dtype


def check_rows(
    xs: Sequence[jax.typing.ArrayLike],
    what: str,
    n_rows: int | None = None,
    dims: Sequence[int] | None = None,
) -> None:
  """Raise naming the array (and row) for shape mismatches or non-finite values.

  Args:
    xs: the models' row arrays.
    what: the name used in messages (`what[i]`).
    n_rows: the row count every array must have, or None.
    dims: per array, the width it must have, or None.

  Raises:
    ValueError: no arrays, one not 2-D, a row count or width mismatch, or a non-finite value.
  """
  if len(xs) == 0:
    raise ValueError(f"{what}: no models given")
  for i, x in enumerate(xs):
    if np.ndim(x) != 2:
      raise ValueError(f"{what}[{i}]: expected [rows, dim], got shape {np.shape(x)}")
    if n_rows is not None and np.shape(x)[0] != n_rows:
      raise ValueError(
          f"{what}[{i}]: {np.shape(x)[0]} rows, expected {n_rows} (rows must be aligned)"
      )
    if dims is not None and np.shape(x)[1] != dims[i]:
      raise ValueError(f"{what}[{i}]: dim {np.shape(x)[1]}, expected {dims[i]}")
  bad = _first_bad_rows_host(xs) if _on_host(xs) else np.asarray(_first_bad_rows(tuple(xs)))
  for i, row in enumerate(bad):
    if row >= 0:
      raise ValueError(f"{what}[{i}]: non-finite value in row {int(row)}")


def _on_host(xs) -> bool:
  """Whether every array can be read in place by numpy: numpy arrays, or jax arrays on
  the CPU backend held whole by this process (a zero-copy view)."""
  return all(
      not isinstance(x, jax.Array)
      or (x.is_fully_addressable and all(d.platform == "cpu" for d in x.devices()))
      for x in xs
  )


def _first_bad_rows_host(xs) -> list[int]:
  """`_first_bad_rows` in numpy: no compiled program, whose size (and compile time, ~0.4
  s at 17 models) would grow with the number of arrays."""
  out = []
  for x in xs:
    bad = np.flatnonzero(~np.isfinite(np.asarray(x)).all(axis=1))
    out.append(int(bad[0]) if bad.size else -1)
  return out


@jax.jit
def _first_bad_rows(xs):
  out = []
  for x in xs:
    bad = ~jnp.all(jnp.isfinite(x), axis=1)
    out.append(jnp.where(jnp.any(bad), jnp.argmax(bad), -1))
  return jnp.stack(out)


def gaussian_control(n_rows: int, dim: int, seed: int, dtype) -> jax.Array:
  """Seeded standard-normal rows: the control 'model' (independent of every text).

  Args:
    n_rows: rows.
    dim: the control's width.
    seed: the PRNG seed.
    dtype: the rows' dtype (drawn in float32, then cast).

  Returns:
    `[n_rows, dim]` rows.
  """
  return jax.random.normal(jax.random.key(seed), (n_rows, dim), dtype=jnp.float32).astype(dtype)


def control_split(
    n_train: int, n_val: int, dim: int, seed: int, dtype
) -> tuple[jax.Array, jax.Array]:
  """The Gaussian control's train and val rows: one seeded stream, train rows first.

  Every stage that uses the control (closed form, MLP, retrieval) draws it this way, so a
  saved control stitch is evaluated on the same val rows it was validated on.

  Args:
    n_train: train rows.
    n_val: val rows.
    dim: the control's width.
    seed: its seed.
    dtype: the rows' dtype.

  Returns:
    `(train [n_train, dim], val [n_val, dim])`.
  """
  g = gaussian_control(n_train + n_val, dim, seed, dtype)
  return g[:n_train], g[n_train:]


def stack_groups(xs: Sequence[jax.Array], layout: Layout) -> list[jax.Array]:
  """Caller-order list of [N, d_i] → per-group `[N, m_g, d_g]`.

  Args:
    xs: the models' rows, in caller order.
    layout: the grouping.

  Returns:
    Per group, in group order, its members' rows stacked on axis 1.
  """
  return [jnp.stack([xs[i] for i in members], axis=1) for _, members in layout.groups]


def gram_blocks(
    zs: Sequence[jax.Array], ws: Sequence[jax.Array] | None = None, *, symmetric: bool = True
) -> dict[tuple[int, int], jax.Array]:
  """All group-pair Gram blocks `G_ab = Σ_n z_a[n]ᵀ w_b[n]` as `[m_a, d_a, m_b, d_b]`.

  With `ws is None` (`w = z`) only a ≤ b is multiplied; a > b is the transpose,
  which saves `Σ_{a<b}` of the flops of one big `ZᵀZ`.

  Args:
    zs: per group, `[N, m_g, d_g]` rows.
    ws: per group, the right-hand rows; None: `zs`.
    symmetric: with `ws` None, compute a ≤ b only and transpose the rest.

  Returns:
    `{(a, b): [m_a, d_a, m_b, d_b]}` for every group pair.
  """
  n = len(zs)
  out = {}
  if ws is None and symmetric:
    # One product per group against all later columns of the group-ordered [N, D] matrix:
    # big, contiguous matmuls (≈2× faster on CPU than one einsum per block pair).
    flat = [z.reshape(z.shape[0], -1) for z in zs]
    off = np.cumsum([0] + [f.shape[1] for f in flat])
    zall = jnp.concatenate(flat, axis=1)
    for a in range(n):
      row = ein("nd,ne->de", flat[a], zall[:, off[a] :])
      for b in range(a, n):
        blk = row[:, off[b] - off[a] : off[b + 1] - off[a]]
        out[a, b] = blk.reshape(zs[a].shape[1:] + zs[b].shape[1:])
    for a in range(n):
      for b in range(a):
        out[a, b] = jnp.transpose(out[b, a], (2, 3, 0, 1))
    return out
  ws = zs if ws is None else ws
  for a in range(n):
    for b in range(n):
      out[a, b] = ein("nip,njq->ipjq", zs[a], ws[b])
  return out


def constrain(x: jax.Array, mesh: Mesh | None, *spec) -> jax.Array:
  """`with_sharding_constraint(x, P(*spec))` on `mesh`; x unchanged without a mesh.

  Axis names the mesh lacks (or of size 1) are dropped from the spec, so one code path
  serves a data-only, a pairs-only and a 2-D mesh.  Inside jit, GSPMD pads dimensions
  that do not divide the axis size (e.g. 3 target members over 2 devices).

  Args:
    x: the array.
    mesh: the mesh, or None.
    *spec: per axis of x, a mesh axis name or None.

  Returns:
    x, constrained.
  """
  if mesh is None:
    return x
  keep = lambda a: a if (a is not None and a in mesh.shape and mesh.shape[a] > 1) else None
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, PartitionSpec(*[keep(a) for a in spec]))
  )


@functools.cache
def limit_lapack_threads() -> None:
  """Give jaxlib's CPU LAPACK (scipy's OpenBLAS) `$LEAD_JAX_LAPACK_THREADS` threads (default 1).

  XLA's CPU runtime runs independent ops of a program at once on its own thread pool, so
  an eigh runs beside the Gram and projection matmuls; OpenBLAS threads inside it then
  oversubscribe the cores.  One thread each measured 1.25× faster for the closed-form fit
  on 2 cores (BUILD_NOTES.md).  Process-wide: scipy.linalg calls in this process get the
  same limit; numpy's own BLAS is a different library and is untouched.
  """
  n = int(os.environ.get("LEAD_JAX_LAPACK_THREADS", "1"))
  if n <= 0:
    return
  try:
    import scipy.linalg  # noqa: F401  (jaxlib's LAPACK comes from scipy's cython_lapack)
    import threadpoolctl
  except ImportError:
    return
  info = threadpoolctl.threadpool_info()
  paths = [
      i["filepath"]
      for i in info
      if "scipy" in i["filepath"]
      and "openblas64" not in i["filepath"]
      and i.get("internal_api") == "openblas"
  ]
  if paths:
    threadpoolctl.ThreadpoolController().select(filepath=paths).limit(limits=n)


def linalg_map(fn, x: jax.Array, n_batch: int):
  """Apply a LAPACK-backed `fn` (eigh, svd) over the `n_batch` leading axes of x.

  On CPU a batched LAPACK call in jaxlib 0.10 splits its batch over XLA's intra-op pool
  and blocks on the pieces (`jax::ParallelBatchMap`); when two such calls run at once
  on a small pool (2 cores here) every pool thread waits on work queued behind it and
  the program deadlocks.  So on CPU we loop with `lax.map` over unbatched calls; on
  accelerators the batched call is kept (cuSOLVER/cuBLAS batched kernels).

  Args:
    fn: the batched function (e.g. `jnp.linalg.eigh`).
    x: the input, with `n_batch` leading batch axes.
    n_batch: how many leading axes are batch axes.

  Returns:
    `fn`'s output pytree, with the leading batch axes restored.
  """
  lead = x.shape[:n_batch]
  flat = x.reshape((-1,) + x.shape[n_batch:])
  if jax.default_backend() == "cpu":
    limit_lapack_threads()
  if jax.default_backend() == "cpu" and flat.shape[0] > 1:
    out = jax.lax.map(fn, flat)
  else:
    out = fn(flat) if flat.shape[0] != 1 else jax.tree.map(lambda a: a[None], fn(flat[0]))
  return jax.tree.map(lambda a: a.reshape(lead + a.shape[1:]), out)
