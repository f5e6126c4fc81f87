"""Timing and JSON helpers shared by the benchmarks."""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def block(x):
  return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


def time_median(fn, repeats: int, warmup: int = 1) -> tuple[float, object, list[float]]:
  """Median wall seconds of fn() over `repeats` (after `warmup` untimed calls)."""
  out = None
  for _ in range(warmup):
    out = block(fn())
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = block(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times), out, times


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of a plain float32 n×n @ n×n jnp matmul (precision HIGHEST) on this backend."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal((n, n), np.float32))
  b = jnp.asarray(rng.standard_normal((n, n), np.float32))
  f = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
  t, _, _ = time_median(lambda: f(a, b), repeats)
  return 2.0 * n**3 / t


def correlated_embeddings(dims, n_rows, seed=0, latent=256, noise=0.7, normalize=True):
  """Synthetic embeddings that share a latent factor (so stitches have signal)."""
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((n_rows, latent)).astype(np.float32)
  out = []
  for d in dims:
    a = rng.standard_normal((latent, d)).astype(np.float32) / np.sqrt(latent)
    x = (
        z @ a
        + noise * rng.standard_normal((n_rows, d)).astype(np.float32)
        + 0.3 * rng.standard_normal(d).astype(np.float32)
    )
    if normalize:
      x /= np.linalg.norm(x, axis=1, keepdims=True)
    out.append(x.astype(np.float32))
  return out


def emit(record: dict) -> None:
  print(json.dumps(record, sort_keys=False), flush=True)
