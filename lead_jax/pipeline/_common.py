"""What every stage shares: the mesh, engine inputs and outputs across hosts, precision."""

from __future__ import annotations

import contextlib
import os

import jax

from lead_jax import distributed
from lead_jax.config import StudyConfig


def initialize(cfg: StudyConfig) -> bool:
  """Starts jax.distributed as `cfg.mesh` says (see `lead_jax.distributed.initialize`).

  Args:
    cfg: the study config; empty / zero / negative `mesh` fields mean "not given".

  Returns:
    Whether this is a multi-process run.
  """
  use_compilation_cache(cfg.compilation_cache)
  m = cfg.mesh
  return distributed.initialize(
      m.coordinator_address or None,
      m.num_processes or None,
      m.process_id if m.process_id >= 0 else None,
      mode=m.distributed,
  )


def use_compilation_cache(directory: str) -> None:
  """Turns on JAX's persistent compilation cache in `directory` ("" leaves it off).

  A rerun of a stage, and every stage of `run_all` after the first that compiles the
  same program, then loads the compiled executable instead of compiling again. Programs
  that compile in under 0.2 s are not stored.

  Args:
    directory: the cache directory (`~` is expanded); "" for no cache.
  """
  if not directory:
    return
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def mesh(cfg: StudyConfig):
  """The engine mesh from `cfg.mesh` with more than one device; None (plain jit) otherwise.

  Args:
    cfg: the study config.

  Returns:
    A `(data, pairs)` `Mesh`, or None.
  """
  return distributed.engine_mesh(cfg.mesh.data, cfg.mesh.pairs)


def on_engine(fn, *row_lists, mesh, **kw):
  """Runs an all-pairs engine function on every host's rows; returns a host copy of the result.

  The multi-host pattern in one place: each process read every row from the shared store;
  `engine_inputs` makes them global arrays, the engine shards rows over `data` inside its
  jit, and `gather` brings the (small) result back to every process. Process 0 writes it
  (`distributed.is_writer`).

  Args:
    fn: the engine function, called as `fn(*inputs, mesh=mesh, **kw)`.
    *row_lists: lists of host row arrays, one per positional engine argument.
    mesh: the engine mesh, or None.
    **kw: further keyword arguments of `fn`.

  Returns:
    A host (numpy) copy of `fn`'s result, on every process.
  """
  inputs = [distributed.engine_inputs(xs, mesh) for xs in row_lists]
  return distributed.gather(fn(*inputs, mesh=mesh, **kw))


def precision(float64: bool):
  """A context computing in float64 (jax x64 on) when asked, for this stage only.

  Args:
    float64: whether to turn x64 on.

  Returns:
    `jax.enable_x64(True)`, or a null context.
  """
  return jax.enable_x64(True) if float64 else contextlib.nullcontext()


def dtype(float64: bool):
  """The `dtype` argument of the engine functions.

  Args:
    float64: whether the stage computes in float64.

  Returns:
    `"float64"`, or None (the engine's default).
  """
  return "float64" if float64 else None
