"""Beyond one chip: the device mesh, multi-process start-up, and each process's share of the work.

Every stage reads the settings from `config.mesh` (`lead_jax.config.MeshConfig`):

    --config.mesh.data=-1 --config.mesh.pairs=1     mesh shape (data × pairs; -1: all the rest)
    --config.mesh.distributed=auto|on|off          start jax.distributed?
    --config.mesh.coordinator_address=HOST:PORT --config.mesh.num_processes=N
    --config.mesh.process_id=I

and `initialize` runs first. With `distributed=auto` (the default) jax.distributed is
started when more than one process is asked for, by the config or by the environment
(`LEAD_JAX_COORDINATOR`, `LEAD_JAX_NUM_PROCESSES`, `LEAD_JAX_PROCESS_ID`; the config
wins), or when running on a Cloud TPU VM, where JAX detects the coordinator, process
count and process id itself (a single-host VM then runs as one process). `on` always
starts it, letting JAX detect what was not given (TPU VMs, Slurm, Open MPI); `off`
never does.

The mesh has two axes: `data` (rows are sharded over it; Gram contractions over rows
become all-reduces) and `pairs` (model pairs may be spread over it). Devices are laid
out process-major, so with `data` a multiple of the process count and `pairs`
dividing the local device count, each process holds a contiguous run of rows.

Work split between processes:
  * `process_rows` / `block_aligned_rows`: contiguous, balanced row ranges covering
    every row exactly once (the latter on store block boundaries, so each process
    writes whole store chunks);
  * `process_pairs`: round-robin (pair i goes to process i mod P), so pairs of similar
    cost, which tend to be neighbours, land on different processes;
  * `global_rows` / `gather`: a row-sharded global array from each process's rows, and
    a full host copy of any result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA = "data"  # mesh axis over rows (Gram contractions become psums over it)
PAIRS = "pairs"  # mesh axis over the pair / model-member axes

MODES = ("auto", "on", "off")
ENV_COORDINATOR = "LEAD_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "LEAD_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "LEAD_JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
  v = os.environ.get(name)
  return int(v) if v not in (None, "") else None


def _on_cloud_tpu_vm() -> bool:
  try:  # set by `import jax` when libtpu is installed and TPU chips are present
    from jax._src import cloud_tpu_init

    return bool(cloud_tpu_init.running_in_cloud_tpu_vm)
  except (ImportError, AttributeError):
    return False


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    mode: str = "auto",
) -> bool:
  """Starts jax.distributed if `mode` says so (see the module docstring).

  Idempotent. Must run before JAX touches a device.

  Args:
    coordinator_address: `HOST:PORT` of process 0; None: `LEAD_JAX_COORDINATOR` or JAX's own.
    num_processes: the process count; None: `LEAD_JAX_NUM_PROCESSES` or JAX's own.
    process_id: this process's index; None: `LEAD_JAX_PROCESS_ID` or JAX's own.
    mode: `auto`, `on` or `off` (see the module docstring).

  Returns:
    Whether this is a multi-process run.

  Raises:
    ValueError: `mode` is not one of `MODES`.
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  if mode == "off":
    return False
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  if mode == "auto" and (
      num_processes <= 1 if num_processes is not None else not _on_cloud_tpu_vm()
  ):
    return False  # one process asked for, or nothing asked for off a TPU VM
  if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process CPU collectives
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
  logging.info(
      "jax.distributed: process %d of %d, %d local / %d global devices",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
  )
  return jax.process_count() > 1


def make_mesh(data: int = -1, pairs: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
  """A (data, pairs) mesh over `devices` (default: all devices of all processes), process-major.

  Args:
    data: size of the `data` axis; -1: all devices not taken by `pairs`.
    pairs: size of the `pairs` axis.
    devices: the devices; None: `jax.devices()`. Sorted by (process index, id).

  Returns:
    The `Mesh` with axes (`DATA`, `PAIRS`), both `AxisType.Auto`.

  Raises:
    ValueError: a size is not positive, or data × pairs is not the device count.
  """
  devices = sorted(
      devices if devices is not None else jax.devices(), key=lambda d: (d.process_index, d.id)
  )
  n = len(devices)
  if pairs < 1 or (data != -1 and data < 1):
    raise ValueError(
        f"mesh sizes must be positive (data may be -1), got data={data}, pairs={pairs}"
    )
  if data == -1:
    if n % pairs:
      raise ValueError(f"mesh: pairs={pairs} does not divide the {n} devices")
    data = n // pairs
  if data * pairs != n:
    raise ValueError(
        f"mesh: data={data} × pairs={pairs} = {data * pairs}, but there are {n} devices; "
        "set config.mesh.data / config.mesh.pairs so that their product is the device count"
    )
  return Mesh(
      np.array(devices, dtype=object).reshape(data, pairs),
      (DATA, PAIRS),
      axis_types=(AxisType.Auto, AxisType.Auto),
  )


def engine_mesh(data: int = -1, pairs: int = 1) -> Mesh | None:
  """The mesh the stages pass to the engine.

  Args:
    data: size of the `data` axis (-1: the rest), as in `make_mesh`.
    pairs: size of the `pairs` axis.

  Returns:
    A `(data, pairs)` mesh when there is more than one device, None (plain single-device
    jit) otherwise.
  """
  return make_mesh(data, pairs) if jax.device_count() > 1 else None


def engine_inputs(xs: Sequence[np.ndarray], mesh: Mesh | None) -> list:
  """Host row arrays (every process read all rows from the shared store) → engine inputs.

  One process: unchanged (the jitted engine shards rows over the mesh itself).  Several
  processes: global arrays, replicated, so any row count works; inside the jit the engine
  constrains them to the `data` axis, each device then keeps its own rows and the Gram
  blocks are all-reduced across hosts.

  Args:
    xs: host arrays, all rows of each model.
    mesh: the engine mesh, or None.

  Returns:
    A list with `xs` unchanged, or with one replicated global array per input.
  """
  if mesh is None or jax.process_count() == 1:
    return list(xs)
  rep = NamedSharding(mesh, PartitionSpec())
  return [jax.make_array_from_process_local_data(rep, np.asarray(x), np.shape(x)) for x in xs]


def is_writer() -> bool:
  """Whether this process writes shared outputs (tables, JSON): process 0 only.

  Returns:
    True on process 0.
  """
  return jax.process_index() == 0


def _who(process_index, process_count) -> tuple[int, int]:
  p = jax.process_index() if process_index is None else int(process_index)
  n = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= p < n:
    raise ValueError(f"process_index {p} is not in [0, {n})")
  return p, n


def _split(n: int, p: int, parts: int) -> tuple[int, int]:
  """[lo, hi) of part p when n items are cut into `parts` contiguous runs differing by at most one."""
  q, r = divmod(n, parts)
  lo = p * q + min(p, r)
  return lo, lo + q + (p < r)


def process_rows(
    n_rows: int, process_index: int | None = None, process_count: int | None = None
) -> slice:
  """This process's contiguous, balanced share of rows [0, n_rows).

  Args:
    n_rows: the row count.
    process_index: the process; None: `jax.process_index()`.
    process_count: the process count; None: `jax.process_count()`.

  Returns:
    The rows as a slice; shares differ in length by at most one.

  Raises:
    ValueError: `process_index` is not in [0, process_count).
  """
  lo, hi = _split(n_rows, *_who(process_index, process_count))
  return slice(lo, hi)


def block_aligned_rows(
    n_rows: int, block_rows: int, process_index: int | None = None, process_count: int | None = None
) -> slice:
  """Like `process_rows`, but whole blocks of `block_rows` (the last block may be short).

  Args:
    n_rows: the row count.
    block_rows: rows per store block.
    process_index: the process; None: `jax.process_index()`.
    process_count: the process count; None: `jax.process_count()`.

  Returns:
    The rows as a slice; empty for a process when there are fewer blocks than processes.

  Raises:
    ValueError: `block_rows` is not positive, or `process_index` is not in [0, process_count).
  """
  if block_rows < 1:
    raise ValueError(f"block_rows must be positive, got {block_rows}")
  lo, hi = _split(-(-n_rows // block_rows), *_who(process_index, process_count))
  return slice(min(lo * block_rows, n_rows), min(hi * block_rows, n_rows))


def process_pairs(
    pairs: Sequence, process_index: int | None = None, process_count: int | None = None
) -> list:
  """This process's share of `pairs`, round-robin: items p, p + P, p + 2P, … keep their order.

  Args:
    pairs: all the work items.
    process_index: the process p; None: `jax.process_index()`.
    process_count: the process count P; None: `jax.process_count()`.

  Returns:
    The items of this process, as a list.

  Raises:
    ValueError: `process_index` is not in [0, process_count).
  """
  p, n = _who(process_index, process_count)
  return list(pairs)[p::n]


def row_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of a 2-D [rows, d] array with rows over the `data` axis.

  Args:
    mesh: a mesh with a `data` axis.

  Returns:
    `NamedSharding(mesh, PartitionSpec(DATA, None))`.
  """
  return NamedSharding(mesh, PartitionSpec(DATA, None))


def mesh_rows(mesh: Mesh, n_rows: int) -> slice:
  """The rows this process holds of an [n_rows, …] array row-sharded over `mesh`.

  They are contiguous for meshes from `make_mesh`.

  Args:
    mesh: a mesh with a `data` axis.
    n_rows: the global row count.

  Returns:
    This process's rows as a slice.

  Raises:
    ValueError: this process's rows are not contiguous.
  """
  idx = row_sharding(mesh).addressable_devices_indices_map((n_rows, 1)).values()
  starts = [s[0].start or 0 for s in idx]
  stops = [n_rows if s[0].stop is None else s[0].stop for s in idx]
  lo, hi = min(starts), max(stops)
  if sum(b - a for a, b in {(a, b) for a, b in zip(starts, stops)}) != hi - lo:
    raise ValueError("this process's rows on the mesh are not contiguous; build it with make_mesh")
  return slice(lo, hi)


def global_rows(local: np.ndarray, mesh: Mesh, n_rows: int) -> jax.Array:
  """A global [n_rows, d] array row-sharded over the mesh's `data` axis.

  Args:
    local: this process's rows `mesh_rows(mesh, n_rows)`, or all n_rows rows (of which
      they are taken).
    mesh: a mesh with a `data` axis.
    n_rows: the global row count; a multiple of the data axis size.

  Returns:
    The global array, sharded by `row_sharding(mesh)`.

  Raises:
    ValueError: n_rows does not divide over the data axis, or `local` has the wrong row count.
  """
  if n_rows % mesh.shape[DATA]:
    raise ValueError(f"{n_rows} rows do not divide over data={mesh.shape[DATA]} devices")
  rows = mesh_rows(mesh, n_rows)
  local = np.asarray(local)
  if local.shape[0] == n_rows and rows.stop - rows.start != n_rows:
    local = local[rows]
  if local.shape[0] != rows.stop - rows.start:
    raise ValueError(
        f"process {jax.process_index()} holds rows [{rows.start}, {rows.stop}) of the mesh "
        f"but was given {local.shape[0]} rows"
    )
  return jax.make_array_from_process_local_data(
      row_sharding(mesh), local, (n_rows, *local.shape[1:])
  )


def gather(x: Any) -> Any:
  """A host (numpy) copy of every array in the pytree `x`, complete on every process.

  Args:
    x: a pytree; non-array leaves are kept as they are.

  Returns:
    The pytree with every `jax.Array` leaf as a full numpy array.
  """

  def one(a):
    if not isinstance(a, jax.Array):
      return a
    if a.is_fully_addressable or a.is_fully_replicated:
      return np.asarray(a)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))

  return jax.tree.map(one, x)


def barrier(name: str) -> bool:
  """Waits until every process reaches `name`.

  Args:
    name: the barrier's name, the same on every process.

  Returns:
    True after waiting; False (no wait) in a one-process run.
  """
  if jax.process_count() == 1:
    return False
  from jax.experimental import multihost_utils

  multihost_utils.sync_global_devices(name)
  return True
