"""Small numerical helpers shared by every layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
  """`x / max(‖x‖, eps)` along `axis`, like `torch.nn.functional.normalize`.

  Zero rows stay zero. A numpy input gives a float32 numpy result whose norms are
  summed in float64 (host code: retrieval, translation); a jax input (or a tracer)
  gives a jax result whose norms are summed in at least float32.

  Args:
    x: array of vectors.
    axis: the vector axis.
    eps: the smallest norm divided by.

  Returns:
    The normalised array.
  """
  if isinstance(x, jax.Array):
    norm = jnp.sqrt(
        jnp.sum(jnp.square(x.astype(jnp.promote_types(x.dtype, jnp.float32))), axis, keepdims=True)
    )
    return x / jnp.maximum(norm, eps)
  x = np.asarray(x, np.float32)
  norm = np.sqrt(np.sum(np.square(x, dtype=np.float64), axis=axis, keepdims=True))
  return (x / np.maximum(norm, eps)).astype(np.float32)
