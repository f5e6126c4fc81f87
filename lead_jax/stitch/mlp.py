"""MLP stitches for every ordered pair of models, trained at once in one jitted step.

A stitch maps model A's embedding x ∈ R^{d_A} to model B's space.  `depth` counts
nonlinearities, so a stitch has `depth + 1` dense layers:

    depth 0:  ŷ = x W + b                                  (affine map trained by GD)
    depth k:  h₀ = x;  h_{l+1} = act(LN?(h_l W_l + b_l)) [+ h_l if residual and l ≥ 1]
              ŷ = h_k W_k + b_k                            (l = 0 … k−1, k ≤ 6)

Hidden width is max(d_A, d_B) unless `StitchConfig.width` is set.  The residual
connection only joins hidden→hidden layers (the first and last layers change width).

Objectives (per pair, on a minibatch of B rows; `OBJECTIVES` is the registry):
    mse      mean_{n,j} (ŷ_nj − y_nj)²
    cosine   mean_n 1 − cos(ŷ_n, y_n)
    infonce  mean_n [logsumexp_m s_nm − s_nn],  s_nm = cos(ŷ_n, y_m) / τ
             (in-batch negatives, ŷ→y direction; τ fixed or learned as log τ ≥ log 0.01)

Layout: pairs are grouped by (d_in, d_out) (hence the same width); within a group every
parameter carries a leading pair axis [P, …] and one single-pair step is `jax.vmap`ped.
All groups sit in one jitted function, so one call advances every pair.
Rows of models that share a dim are stacked once, `[m_d, N, d]`, and a pair gathers
its minibatch as `stack[model, idx]`; no per-pair copy of the data exists.

Randomness is stateless: pair (s, t) has key fold_in(fold_in(PRNGKey(seed), s), t), its
init uses fold_in(key, 0) and step i's minibatch fold_in(fold_in(key, 1), i).  A pair
therefore trains identically alone or with any set of other pairs, and a resumed run
draws the same batches as an uninterrupted one.

Early stopping is per pair and stays inside the jit: every `eval_every` steps the val
loss is computed; a pair whose val loss has not improved for `patience` evaluations is
marked inactive and its parameter and optimizer updates are masked (`jnp.where`) from
then on; once every pair of a group has stopped, `fit` leaves the group out of the
next chunks' program (`train_chunk(skip=…)`).  `best_params` holds each pair's
parameters at its best val loss.

Everything here is pure: state is a pytree (see `init_state`), the host loop is `fit`;
checkpointing lives in `lead_jax.stitch.mlp_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from lead_jax.config import MlpConfig
from lead_jax.distributed import DATA, PAIRS, gather
from lead_jax.numerics import l2_normalize
from lead_jax.similarity import gram as gram_lib

MAX_DEPTH = 6
MIN_LOG_TEMP = math.log(0.01)
STORE_MIN_SIZE = 1 << 16


# ----------------------------------------------------------------------------- registries


def _registry(items: Sequence[tuple[str, Any]]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for name, fn in items:
    if name in out:
      raise ValueError(f"duplicate registry name {name!r}")
    out[name] = fn
  return out


ACTIVATIONS = _registry([("gelu", jax.nn.gelu), ("relu", jax.nn.relu)])


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class StitchConfig:
  """Architecture and objective of one family of stitches (hashable: a jit static)."""

  depth: int = 2  # nonlinearities; depth + 1 dense layers
  width: int | None = None  # hidden width; None → max(d_in, d_out)
  activation: str = MlpConfig.activation
  residual: bool = MlpConfig.residual
  layer_norm: bool = MlpConfig.layer_norm
  objective: str = MlpConfig.objective
  temperature: float = MlpConfig.temperature  # InfoNCE τ (initial value when learned)
  learn_temperature: bool = MlpConfig.learn_temperature
  precision: str = "highest"  # matmul precision (TF32/bf16 defaults hurt small losses)

  def __post_init__(self):
    if not 0 <= self.depth <= MAX_DEPTH:
      raise ValueError(f"depth must be in [0, {MAX_DEPTH}], got {self.depth}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation {self.activation!r} not in {sorted(ACTIVATIONS)}")
    if self.objective not in OBJECTIVES:
      raise ValueError(f"objective {self.objective!r} not in {sorted(OBJECTIVES)}")
    if self.width is not None and self.width < 1:
      raise ValueError(f"width must be ≥ 1, got {self.width}")
    if not self.temperature > 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}")

  @classmethod
  def from_config(cls, c: MlpConfig, depth: int) -> StitchConfig:
    """The depth-`depth` stitch of the study's `config.mlp`.

    Args:
      c: the study's MLP settings.
      depth: the number of nonlinearities.

    Returns:
      The stitch config (width 0 in the study config becomes None: max(d_in, d_out)).
    """
    return cls(
        depth=depth,
        width=c.width or None,
        activation=c.activation,
        residual=c.residual,
        layer_norm=c.layer_norm,
        objective=c.objective,
        temperature=c.temperature,
        learn_temperature=c.learn_temperature,
    )

  @property
  def method(self) -> str:
    """Name used in the results table, e.g. `mlp_d2_mse`."""
    return f"mlp_d{self.depth}_{self.objective}"

  def width_for(self, d_in: int, d_out: int) -> int:
    """Hidden width of a `d_in` → `d_out` stitch: `width`, or max(d_in, d_out) when unset."""
    return self.width if self.width is not None else max(d_in, d_out)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation: AdamW + warmup-cosine, minibatches, validation, early stopping."""

  steps: int = MlpConfig.steps
  batch_size: int = MlpConfig.batch_size
  lr: float = MlpConfig.lr
  end_lr_ratio: float = MlpConfig.end_lr_ratio  # final lr = lr · end_lr_ratio
  warmup_steps: int = MlpConfig.warmup_steps
  weight_decay: float = MlpConfig.weight_decay  # on weight matrices only
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  grad_clip: float = MlpConfig.grad_clip  # global-norm clip per pair; 0 = off
  eval_every: int = MlpConfig.eval_every  # validation (and early-stopping check) period
  patience: int = MlpConfig.patience  # evaluations without improvement before a stop; 0 = never
  min_delta: float = 0.0
  seed: int = MlpConfig.seed

  def __post_init__(self):
    for f in ("steps", "batch_size", "eval_every"):
      if getattr(self, f) < 1:
        raise ValueError(f"{f} must be ≥ 1, got {getattr(self, f)}")
    if self.warmup_steps < 0 or (self.warmup_steps > 0 and self.warmup_steps >= self.steps):
      raise ValueError(f"warmup_steps ({self.warmup_steps}) must be in [0, steps={self.steps})")

  @classmethod
  def from_config(cls, c: MlpConfig) -> TrainConfig:
    """The optimisation settings of the study's `config.mlp`."""
    names = [f.name for f in dataclasses.fields(cls) if hasattr(c, f.name)]
    kw = {n: getattr(c, n) for n in names}
    kw["warmup_steps"] = min(c.warmup_steps, c.steps - 1)
    return cls(**kw)

  @property
  def n_evals(self) -> int:
    """Number of evaluations in a full run (the last one at `steps`)."""
    return -(-self.steps // self.eval_every)


# ----------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True)
class Group:
  """Pairs sharing (d_in, d_out); indices into the plan's dim stacks and pair list."""

  d_in: int
  d_out: int
  width: int  # hidden width of every stitch in the group
  pairs: tuple[tuple[int, int], ...]  # (source, target) model indices
  src_local: tuple[int, ...]  # row of the source in the d_in stack
  tgt_local: tuple[int, ...]  # row of the target in the d_out stack
  pair_index: tuple[int, ...]  # position of each pair in Plan.pairs


@dataclasses.dataclass(frozen=True)
class Plan:
  """Static layout of an all-pairs run (hashable: a jit static)."""

  dims: tuple[int, ...]
  pairs: tuple[tuple[int, int], ...]
  stacks: tuple[tuple[int, tuple[int, ...]], ...]  # (dim, member model indices)
  groups: tuple[Group, ...]

  def stack_of(self, d: int) -> int:
    """Index into `stacks` (and into `stack_data`'s output) of the dim-`d` stack."""
    return [s for s, (dd, _) in enumerate(self.stacks) if dd == d][0]


def make_plan(
    dims: Sequence[int],
    cfg: StitchConfig,
    pairs: Sequence[tuple[int, int]] | None = None,
) -> Plan:
  """Lays out the ordered pairs for `train_chunk`.

  Pairs sharing (d_in, d_out) form one vmapped group: no wasted FLOPs, one set of
  kernels per distinct shape.

  Args:
    dims: embedding dim of each model, in caller order.
    cfg: the stitch architecture (it sets each group's hidden width).
    pairs: (source, target) model indices; default every ordered pair s ≠ t.

  Returns:
    The static plan (hashable, a jit static).

  Raises:
    ValueError: a pair index is out of range, or a pair is repeated.
  """
  dims = tuple(int(d) for d in dims)
  m = len(dims)
  if pairs is None:
    pairs = [(s, t) for s in range(m) for t in range(m) if s != t]
  pairs = tuple((int(s), int(t)) for s, t in pairs)
  for s, t in pairs:
    if not (0 <= s < m and 0 <= t < m):
      raise ValueError(f"pair ({s}, {t}) out of range for {m} models")
  if len(set(pairs)) != len(pairs):
    raise ValueError(f"duplicate pairs in {pairs}")
  used = sorted({i for p in pairs for i in p})
  stacks = tuple(
      (d, tuple(i for i in used if dims[i] == d)) for d in sorted({dims[i] for i in used})
  )
  local = {i: members.index(i) for _, members in stacks for i in members}
  keyed: dict[tuple[int, int], list[int]] = {}
  for k, (s, t) in enumerate(pairs):
    keyed.setdefault((dims[s], dims[t]), []).append(k)
  groups = tuple(
      Group(
          di,
          do,
          cfg.width_for(di, do),
          tuple(pairs[k] for k in ks),
          tuple(local[pairs[k][0]] for k in ks),
          tuple(local[pairs[k][1]] for k in ks),
          tuple(ks),
      )
      for (di, do), ks in sorted(keyed.items())
  )
  return Plan(dims, pairs, stacks, groups)


def stack_data(
    xs: Sequence[jax.typing.ArrayLike], plan: Plan, dtype=jnp.float32
) -> tuple[jax.Array, ...]:
  """Stacks the rows of models that share a dim, once per distinct dim.

  Args:
    xs: one [N, d_i] array per model, in `plan.dims` order (rows aligned across models).
    plan: the plan from `make_plan`.
    dtype: dtype of the stacks.

  Returns:
    One `[m_d, N, d]` stack per entry of `plan.stacks`.

  Raises:
    ValueError: the row counts differ, or an array's shape does not match its dim.
  """
  n = {int(np.shape(x)[0]) for x in xs}
  if len(n) != 1:
    raise ValueError(f"rows must be aligned across models, got row counts {sorted(n)}")
  for i, x in enumerate(xs):
    if np.ndim(x) != 2 or np.shape(x)[1] != plan.dims[i]:
      raise ValueError(f"xs[{i}]: expected [rows, {plan.dims[i]}], got shape {np.shape(x)}")
  return tuple(
      jnp.stack([jnp.asarray(xs[i], dtype) for i in members]) for _, members in plan.stacks
  )


# ----------------------------------------------------------------------------- one pair


def _dot(a, b, cfg: StitchConfig):
  prec = {"highest": jax.lax.Precision.HIGHEST, "default": None}[cfg.precision]
  return jnp.matmul(a, b, precision=prec)


def _layer_sizes(d_in: int, d_out: int, cfg: StitchConfig) -> list[int]:
  return [d_in] + [cfg.width_for(d_in, d_out)] * cfg.depth + [d_out]


def init_pair(key: jax.Array, d_in: int, d_out: int, cfg: StitchConfig) -> dict:
  """Parameters of one stitch: LeCun-normal weights (variance 1/fan_in), zero biases.

  Args:
    key: the pair's init key.
    d_in: source dim.
    d_out: target dim.
    cfg: the stitch architecture.

  Returns:
    {"dense": ({"w", "b"}, …) per layer, "ln": ({"scale", "bias"}, …) per hidden layer
    when `cfg.layer_norm`, "log_temp" when InfoNCE learns its temperature}.
  """
  return _pair_params(_raw_normals(key, d_in, d_out, cfg), d_in, d_out, cfg)


def _raw_normals(key: jax.Array, d_in: int, d_out: int, cfg: StitchConfig) -> tuple:
  """A stitch's N(0, 1) weight draws, [a, b] per layer (before the 1/√fan_in scale)."""
  sizes = _layer_sizes(d_in, d_out, cfg)
  keys = jax.random.split(key, len(sizes) - 1)
  return tuple(
      jax.random.normal(k, (a, b), jnp.float32) for k, a, b in zip(keys, sizes[:-1], sizes[1:])
  )


def _pair_params(raw, d_in: int, d_out: int, cfg: StitchConfig) -> dict:
  """`init_pair`'s parameters from its layers' N(0, 1) draws `raw` ([a, b] per layer)."""
  sizes = _layer_sizes(d_in, d_out, cfg)
  dense = tuple(
      {"w": r / math.sqrt(a), "b": jnp.zeros((b,), jnp.float32)}
      for r, a, b in zip(raw, sizes[:-1], sizes[1:])
  )
  p: dict[str, Any] = {"dense": dense}
  if cfg.layer_norm and cfg.depth:
    w = sizes[1]
    p["ln"] = tuple(
        {"scale": jnp.ones((w,), jnp.float32), "bias": jnp.zeros((w,), jnp.float32)}
        for _ in range(cfg.depth)
    )
  if cfg.objective == "infonce" and cfg.learn_temperature:
    p["log_temp"] = jnp.asarray(math.log(cfg.temperature), jnp.float32)
  return p


@functools.partial(jax.jit, static_argnums=1)
def _normal_flat(key: jax.Array, n: int) -> jax.Array:
  return jax.random.normal(key, (n,), jnp.float32)


def _draw_normal(key: jax.Array, shape: tuple[int, ...]) -> np.ndarray:
  """`jax.random.normal(key, shape, float32)`, bit for bit, from a program per power of two.

  Threefry draws are elementwise in the flat index (`jax_threefry_partitionable`, JAX's
  default), so a shape's draw is the prefix of any longer flat one: every layer shape of
  every group and depth shares the few programs of the power-of-two lengths. A threefry
  program takes ~0.25 s to compile on CPU; one per layer shape and pair group made the
  MLP's initial state cost 3.5 s of compile per depth on the default job.
  """
  n = math.prod(shape)
  if not jax.config.jax_threefry_partitionable:  # no prefix property: the shape itself
    return np.asarray(jax.random.normal(key, shape, jnp.float32))
  return np.asarray(_normal_flat(key, 1 << max(n - 1, 0).bit_length()))[:n].reshape(shape)


def _layer_norm(h, ln, eps=1e-6):
  mu = jnp.mean(h, -1, keepdims=True)
  var = jnp.mean(jnp.square(h - mu), -1, keepdims=True)
  return (h - mu) * jax.lax.rsqrt(var + eps) * ln["scale"] + ln["bias"]


def apply_pair(params: dict, x_nd: jax.Array, cfg: StitchConfig) -> jax.Array:
  """Applies one stitch.

  Args:
    params: the stitch's parameters (`init_pair`).
    x_nd: source rows [n, d_in].
    cfg: the stitch architecture.

  Returns:
    Predictions ŷ [n, d_out].
  """
  act = ACTIVATIONS[cfg.activation]
  h = x_nd
  dense = params["dense"]
  for l in range(cfg.depth):
    z = _dot(h, dense[l]["w"], cfg) + dense[l]["b"]
    if "ln" in params:
      z = _layer_norm(z, params["ln"][l])
    z = act(z)
    h = h + z if (cfg.residual and l >= 1) else z
  return _dot(h, dense[-1]["w"], cfg) + dense[-1]["b"]


def _mse(params, yhat, y, cfg):
  return jnp.mean(jnp.square(yhat - y))


def _cosine(params, yhat, y, cfg):
  return jnp.mean(1.0 - jnp.sum(l2_normalize(yhat) * l2_normalize(y), -1))


def temperature(params: dict, cfg: StitchConfig) -> jax.Array:
  """InfoNCE temperature τ: learned (clamped at 0.01) when `params` has one, else fixed.

  Args:
    params: the stitch's parameters.
    cfg: the stitch architecture.

  Returns:
    A float32 scalar.
  """
  if "log_temp" in params:
    return jnp.exp(jnp.maximum(params["log_temp"], MIN_LOG_TEMP))
  return jnp.asarray(cfg.temperature, jnp.float32)


def _infonce(params, yhat, y, cfg):
  logits = _dot(l2_normalize(yhat), l2_normalize(y).T, cfg) / temperature(params, cfg)
  return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.diagonal(logits))


OBJECTIVES = _registry([("mse", _mse), ("cosine", _cosine), ("infonce", _infonce)])


def pair_loss(params: dict, x_nd: jax.Array, y_nd: jax.Array, cfg: StitchConfig) -> jax.Array:
  """The objective `cfg.objective` of one stitch on rows (x, y).

  Args:
    params: the stitch's parameters.
    x_nd: source rows [n, d_in].
    y_nd: target rows [n, d_out].
    cfg: the stitch architecture and objective.

  Returns:
    The scalar loss.
  """
  return OBJECTIVES[cfg.objective](params, apply_pair(params, x_nd, cfg), y_nd, cfg)


def pair_val_loss(
    params: dict, x_nd: jax.Array, y_nd: jax.Array, cfg: StitchConfig, block: int
) -> jax.Array:
  """The objective on val rows; InfoNCE in blocks of `block` rows (its train-time negatives).

  Args:
    params: the stitch's parameters.
    x_nd: source val rows [n, d_in].
    y_nd: target val rows [n, d_out].
    cfg: the stitch architecture and objective.
    block: InfoNCE block size (the minibatch size); the last n mod block rows are left out.

  Returns:
    The scalar loss (for InfoNCE, the mean over blocks).
  """
  if cfg.objective != "infonce":
    return pair_loss(params, x_nd, y_nd, cfg)
  n = x_nd.shape[0]
  b = min(block, n)
  k = n // b
  xb = x_nd[: k * b].reshape(k, b, -1)
  yb = y_nd[: k * b].reshape(k, b, -1)
  return jnp.mean(jax.lax.map(lambda xy: pair_loss(params, xy[0], xy[1], cfg), (xb, yb)))


def _store_large(m: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The barrier of `_scale_by_adam`, on leaves of at least `STORE_MIN_SIZE` elements
  only: the copies it saves are of the big buffers, and for small leaves it would only
  split kernels (a judgement: at bench_mlp's quick shape, all leaves small, the one
  measurement with it everywhere, 0.84 s, sat inside the 0.58–0.85 s spread)."""
  return jax.lax.optimization_barrier((m, v)) if m.size >= STORE_MIN_SIZE else (m, v)


def _scale_by_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformationExtraArgs:
  """`optax.scale_by_adam` (same state, same arithmetic) that takes the pair's `active`
  flag and stores its new moments before the update reads them.

  Masking the moments here and materialising them (`lax.optimization_barrier`) lets
  XLA write them in place: otherwise XLA:CPU fuses the moment updates into the
  parameter update as well as into the stored moments, three fusions then read the old
  moments, and inside the training loop every moment and parameter buffer is copied
  each step. At the benchmark's full shape a step is ~20 % faster (BUILD_NOTES §7.1);
  results are bit-identical to `optax.adamw` (`test_optimizer_matches_optax_adamw`).
  """
  base = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)

  def update(updates, state, params=None, *, active=True, **extra):
    del params, extra
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_increment(state.count)
    keep = lambda new, old: jnp.where(active, new, old)
    mu, nu, count = jax.tree.map(keep, (mu, nu, count), (state.mu, state.nu, state.count))
    leaves, tree = jax.tree.flatten(mu)
    stored = [_store_large(m, v) for m, v in zip(leaves, tree.flatten_up_to(nu))]
    mu, nu = (tree.unflatten([mv[i] for mv in stored]) for i in (0, 1))
    mu_hat = optax.tree.bias_correction(mu, b1, count)
    nu_hat = optax.tree.bias_correction(nu, b2, count)
    out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu_hat, nu_hat)
    return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformationExtraArgs(base.init, update)


def make_optimizer(tcfg: TrainConfig) -> optax.GradientTransformationExtraArgs:
  """AdamW on a warmup-cosine schedule, decay on weight matrices only, optional clipping.

  Args:
    tcfg: the optimisation settings.

  Returns:
    The optax transformation of one pair.
  """
  sched = optax.warmup_cosine_decay_schedule(
      init_value=0.0 if tcfg.warmup_steps else tcfg.lr,
      peak_value=tcfg.lr,
      warmup_steps=tcfg.warmup_steps,
      decay_steps=tcfg.steps,
      end_value=tcfg.lr * tcfg.end_lr_ratio,
  )
  decay_mask = lambda p: jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "w", p
  )
  # optax.adamw's chain, with its Adam step replaced by `_scale_by_adam` (same state
  # and arithmetic, the new moments materialised before the update reads them).
  adamw = optax.chain(
      _scale_by_adam(tcfg.b1, tcfg.b2, tcfg.eps),
      optax.add_decayed_weights(tcfg.weight_decay, decay_mask),
      optax.scale_by_learning_rate(sched),
  )
  if tcfg.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(tcfg.grad_clip), adamw)
  return adamw


def pair_key(seed: int, s: int, t: int) -> jax.Array:
  """The RNG key of pair (s, t).

  Args:
    seed: the run's seed.
    s: source model index.
    t: target model index.

  Returns:
    A raw uint32 [2] key.
  """
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), s), t)


def batch_indices(key: jax.Array, step: jax.Array, n_rows: int, batch_size: int) -> jax.Array:
  """Row indices of a pair's minibatch at `step` (drawn with replacement).

  Args:
    key: the pair's key (`pair_key`).
    step: the step number.
    n_rows: train rows to draw from.
    batch_size: rows per minibatch.

  Returns:
    int32 indices [batch_size].
  """
  k = jax.random.fold_in(jax.random.fold_in(key, 1), step)
  return jax.random.randint(k, (batch_size,), 0, n_rows)


def pair_update(params, opt_state, active, x_bd, y_bd, *, cfg: StitchConfig, tcfg: TrainConfig):
  """One AdamW step of one pair on the minibatch (x, y); a no-op (masked) when not active.

  Args:
    params: the stitch's parameters.
    opt_state: its optimizer state.
    active: bool scalar; False (early-stopped) keeps params and opt_state unchanged.
    x_bd: source minibatch [B, d_in].
    y_bd: target minibatch [B, d_out].
    cfg: the stitch architecture and objective.
    tcfg: the optimisation settings.

  Returns:
    (params, opt_state, minibatch loss before the update).
  """
  loss, grads = jax.value_and_grad(pair_loss)(params, x_bd, y_bd, cfg)
  updates, new_opt = make_optimizer(tcfg).update(grads, opt_state, params, active=active)
  new_params = optax.apply_updates(params, updates)
  keep = lambda new, old: jnp.where(active, new, old)
  adam = lambda st: isinstance(st, optax.ScaleByAdamState)  # masked in `_scale_by_adam`
  mask = lambda new, old: new if adam(new) else jax.tree.map(keep, new, old)
  new_opt = jax.tree.map(mask, new_opt, opt_state, is_leaf=adam)
  return jax.tree.map(keep, new_params, params), new_opt, loss


# ----------------------------------------------------------------------------- all pairs


@functools.partial(jax.jit, static_argnums=(0, 3))
def _pair_keys(seed: int, src, tgt, n_layers: int):
  """Per pair its key (`pair_key`) [P, 2] and its layers' init keys [P, n_layers, 2]."""
  keys = jax.vmap(lambda s, t: pair_key(seed, s, t))(src, tgt)
  return keys, jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, 0), n_layers))(keys)


def _init_draws(plan: Plan, cfg: StitchConfig, tcfg: TrainConfig) -> tuple:
  """Per group: (its pairs' keys [P, 2], per layer their N(0, 1) weight draws [P, a, b])."""
  n_layers = cfg.depth + 1
  src, tgt = (np.asarray(v, np.uint32) for v in zip(*plan.pairs))
  keys, lkeys = (np.asarray(a) for a in _pair_keys(tcfg.seed, src, tgt, n_layers))
  out = []
  for g in plan.groups:
    sizes, ix = _layer_sizes(g.d_in, g.d_out, cfg), list(g.pair_index)
    raw = tuple(
        np.stack([_draw_normal(lkeys[k, j], (a, b)) for k in ix])
        for j, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
    )
    out.append((keys[ix], raw))
  return tuple(out)


def _group_init(g: Group, draws, cfg: StitchConfig, tcfg: TrainConfig) -> dict:
  if draws is None:  # drawn in this program, vmapped over the group's pairs
    src, tgt = (jnp.asarray(v, jnp.uint32) for v in zip(*g.pairs))
    keys = jax.vmap(lambda s, t: pair_key(tcfg.seed, s, t))(src, tgt)
    raw = jax.vmap(lambda k: _raw_normals(jax.random.fold_in(k, 0), g.d_in, g.d_out, cfg))(keys)
  else:
    keys, raw = draws
  params = jax.vmap(lambda r: _pair_params(r, g.d_in, g.d_out, cfg))(raw)
  opt = jax.vmap(make_optimizer(tcfg).init)(params)
  p = len(g.pairs)
  nan = jnp.full((p, tcfg.n_evals), jnp.nan, jnp.float32)
  return {
      "params": params,
      "opt": opt,
      "best_params": params,
      "keys": keys,
      "best": {
          "val": jnp.full((p,), jnp.inf, jnp.float32),
          "step": jnp.zeros((p,), jnp.int32),
          "bad": jnp.zeros((p,), jnp.int32),
          "active": jnp.ones((p,), bool),
          "stopped_at": jnp.full((p,), -1, jnp.int32),
      },
      "history": {"train": nan, "val": nan},
  }


def init_state(plan: Plan, cfg: StitchConfig, tcfg: TrainConfig, mesh=None) -> dict:
  """The initial train state of every pair.

  Args:
    plan: the plan from `make_plan`.
    cfg: the stitch architecture.
    tcfg: the optimisation settings.
    mesh: optional mesh; the pair axes then start sharded as `train_chunk` leaves them.

  Returns:
    {"step": int32 [], "groups": tuple over plan.groups of per-group state}.  Per group
    (leading pair axis P): params, opt, best_params, keys [P, 2] uint32 (the RNG), best
    {val, step, bad, active, stopped_at}, history {train, val} [P, n_evals] (mean
    minibatch loss over each eval window, and val loss at its end; NaN = not yet).
    Each pair's params are `init_pair(fold_in(pair_key(seed, s, t), 0), …)`. On a CPU
    backend its N(0, 1) draws come from the host loop `_init_draws` (the same draws bit
    for bit, from a few programs; the 1/√fan_in scale within an ulp of `init_pair`'s
    fused program); on accelerators, where threefry compiles fast and a host round trip
    of every draw would not be, they are drawn inside the one program.
  """
  draws = _init_draws(plan, cfg, tcfg) if jax.default_backend() == "cpu" else None
  return _init_state(draws, plan=plan, cfg=cfg, tcfg=tcfg, mesh=mesh)


def abstract_state(plan: Plan, cfg: StitchConfig, tcfg: TrainConfig) -> dict:
  """`init_state`'s shapes and dtypes (`jax.ShapeDtypeStruct` leaves), nothing drawn."""
  return jax.eval_shape(functools.partial(_init_state, None, plan=plan, cfg=cfg, tcfg=tcfg))


@functools.partial(jax.jit, static_argnames=("plan", "cfg", "tcfg", "mesh"))
def _init_state(draws, *, plan: Plan, cfg: StitchConfig, tcfg: TrainConfig, mesh=None) -> dict:
  return shard_pairs(
      {
          "step": jnp.zeros((), jnp.int32),
          "groups": tuple(
              _group_init(g, None if draws is None else draws[k], cfg, tcfg)
              for k, g in enumerate(plan.groups)
          ),
      },
      mesh,
  )


def _group_arrays(plan: Plan, g: Group, data):
  return (
      data[plan.stack_of(g.d_in)],
      data[plan.stack_of(g.d_out)],
      jnp.asarray(g.src_local, jnp.int32),
      jnp.asarray(g.tgt_local, jnp.int32),
  )


def shard_pairs(tree, mesh):
  """Constrains every leaf's leading pair axis to the mesh's `pairs` axis.

  Args:
    tree: a pytree whose non-scalar leaves have a leading pair axis.
    mesh: a mesh, or None (then `tree` is returned unchanged).

  Returns:
    `tree` with sharding constraints (inside jit).
  """
  return jax.tree.map(
      lambda a: gram_lib.constrain(a, mesh, PAIRS, *([None] * (a.ndim - 1))) if a.ndim else a,
      tree,
  )


def all_pairs_step(
    params_opt: tuple,
    active: tuple[jax.Array, ...],
    train: Sequence[jax.Array],
    idx: tuple[jax.Array, ...],
    *,
    plan: Plan,
    cfg: StitchConfig,
    tcfg: TrainConfig,
    skip: tuple[int, ...] = (),
    mesh=None,
) -> tuple[tuple, tuple[jax.Array, ...]]:
  """One optimisation step of every pair (`pair_update` vmapped per group).

  With a mesh, pairs are sharded over its `pairs` axis and each minibatch's rows over
  `data` (the gradient's mean over rows becomes a psum).

  Args:
    params_opt: per group, (params, opt_state) with a leading pair axis.
    active: per group, which pairs still train [P] (the others' updates are masked).
    train: the train stacks (`stack_data`).
    idx: per group, the minibatch row indices [P, B] (None for a group in `skip`).
    plan: the plan.
    cfg: the stitch architecture and objective.
    tcfg: the optimisation settings.
    skip: groups left unchanged (all their pairs have stopped early); loss NaN.
    mesh: optional mesh.

  Returns:
    (per group the new (params, opt_state), per group the minibatch losses [P]).
  """
  upd = functools.partial(pair_update, cfg=cfg, tcfg=tcfg)
  out, losses = [], []
  for k, (g, (params, opt), act, ix) in enumerate(zip(plan.groups, params_opt, active, idx)):
    if k in skip:
      out.append((params, opt))
      losses.append(jnp.full(act.shape, jnp.nan, jnp.float32))
      continue
    xs, ys, src, tgt = _group_arrays(plan, g, train)
    x = gram_lib.constrain(xs[src[:, None], ix], mesh, PAIRS, DATA, None)  # [P, B, d_in]
    y = gram_lib.constrain(ys[tgt[:, None], ix], mesh, PAIRS, DATA, None)  # [P, B, d_out]
    params, opt, loss = jax.vmap(upd)(params, opt, act, x, y)
    out.append((params, opt))
    losses.append(loss)
  return shard_pairs(tuple(out), mesh), tuple(losses)


def val_losses(
    params_groups, val: Sequence[jax.Array], *, plan: Plan, cfg: StitchConfig, tcfg: TrainConfig
) -> tuple[jax.Array, ...]:
  """Val loss (`pair_val_loss`) of every pair.

  Args:
    params_groups: per group, the stacked parameters [P, …].
    val: the val stacks (`stack_data`).
    plan: the plan.
    cfg: the stitch architecture and objective.
    tcfg: the optimisation settings (its batch size is InfoNCE's val block).

  Returns:
    Per group, the val losses [P].
  """
  out = []
  for g, params in zip(plan.groups, params_groups):
    xs, ys, src, tgt = _group_arrays(plan, g, val)
    f = lambda p, s, t: pair_val_loss(p, xs[s], ys[t], cfg, tcfg.batch_size)
    out.append(jax.vmap(f)(params, src, tgt))
  return tuple(out)


@functools.partial(
    jax.jit,
    static_argnames=("n_steps", "plan", "cfg", "tcfg", "skip", "mesh"),
    donate_argnums=(0,),
)
def train_chunk(
    state: dict,
    train: tuple[jax.Array, ...],
    val: tuple[jax.Array, ...],
    *,
    n_steps: int,
    plan: Plan,
    cfg: StitchConfig,
    tcfg: TrainConfig,
    skip: tuple[int, ...] = (),
    mesh=None,
) -> dict:
  """`n_steps` steps of every pair, then validation, early stopping and history.

  The minibatch indices of all `n_steps` steps are drawn up front (threefry outside the
  step loop).  The input state is donated.

  Args:
    state: the train state (`init_state`).
    train: the train stacks (`stack_data`).
    val: the val stacks.
    n_steps: steps in this chunk (`fit` ends each chunk at an evaluation boundary).
    plan: the plan.
    cfg: the stitch architecture and objective.
    tcfg: the optimisation settings.
    skip: indices of groups whose pairs have all stopped early; their steps are left out
      of the program (`fit` passes them; a new set compiles a new program).
    mesh: optional mesh (pairs over `pairs`, minibatch rows over `data`).

  Returns:
    The state after the chunk and its evaluation.
  """
  state = shard_pairs(state, mesh)
  zero = tuple(jnp.zeros((len(g.pairs),), jnp.float32) for g in plan.groups)
  n_rows = train[0].shape[1]
  steps = state["step"] + jnp.arange(n_steps, dtype=jnp.int32)
  draw = jax.vmap(
      jax.vmap(lambda k, t: batch_indices(k, t, n_rows, tcfg.batch_size), (None, 0)), (0, None)
  )
  # [P, T, B] per group; none for a skipped group (it draws no minibatches)
  idx_all = tuple(
      None if k in skip else draw(gs["keys"], steps) for k, gs in enumerate(state["groups"])
  )
  active = tuple(gs["best"]["active"] for gs in state["groups"])

  # One loop over steps with every group inside (not a loop per group, nor a `lax.cond`
  # per group and step: the cond's operand copies made the quick shape 2.3× slower).
  # The loop carries only what changes per step (params, opt state).
  def body(i, carry):
    po, acc = carry
    idx = tuple(
        None if ix is None else jax.lax.dynamic_index_in_dim(ix, i, axis=1, keepdims=False)
        for ix in idx_all
    )
    po, losses = all_pairs_step(
        po, active, train, idx, plan=plan, cfg=cfg, tcfg=tcfg, skip=skip, mesh=mesh
    )
    return po, tuple(a + l for a, l in zip(acc, losses))

  po0 = tuple((gs["params"], gs["opt"]) for gs in state["groups"])
  po, acc = jax.lax.fori_loop(0, n_steps, body, (po0, zero))
  state = {
      "step": state["step"] + n_steps,
      "groups": tuple({**gs, "params": p, "opt": o} for gs, (p, o) in zip(state["groups"], po)),
  }
  step = state["step"]
  e = (step - 1) // tcfg.eval_every
  vals = val_losses(
      tuple(gs["params"] for gs in state["groups"]), val, plan=plan, cfg=cfg, tcfg=tcfg
  )
  groups = []
  for gs, a, v in zip(state["groups"], acc, vals):
    b = gs["best"]
    improved = (v < b["val"] - tcfg.min_delta) & b["active"]
    sel = lambda new, old: jnp.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
    bad = jnp.where(improved, 0, b["bad"] + 1)
    stop = b["active"] & (tcfg.patience > 0) & (bad >= tcfg.patience)
    best = {
        "val": jnp.where(improved, v, b["val"]),
        "step": jnp.where(improved, step, b["step"]),
        "bad": bad,
        "active": b["active"] & ~stop,
        "stopped_at": jnp.where(stop, step, b["stopped_at"]),
    }
    hist = {
        "train": gs["history"]["train"].at[:, e].set(a / n_steps),
        "val": gs["history"]["val"].at[:, e].set(v),
    }
    groups.append(
        {
            **gs,
            "best_params": jax.tree.map(sel, gs["params"], gs["best_params"]),
            "best": best,
            "history": hist,
        }
    )
  return shard_pairs({"step": step, "groups": tuple(groups)}, mesh)


def _stopped_groups(state: dict) -> tuple[int, ...]:
  """Indices of the groups whose pairs have all stopped early (a host read of [P] bools,
  gathered across processes when the pairs are sharded over hosts)."""
  active = gather([gs["best"]["active"] for gs in state["groups"]])
  return tuple(k for k, a in enumerate(active) if not np.any(a))


def fit(
    plan: Plan,
    train: tuple[jax.Array, ...],
    val: tuple[jax.Array, ...],
    cfg: StitchConfig,
    tcfg: TrainConfig,
    state: dict | None = None,
    on_eval: Callable[[dict], None] | None = None,
    mesh=None,
) -> dict:
  """Host loop: chunks of `eval_every` steps until `tcfg.steps`; resumes from `state`.

  With `mesh` (`lead_jax.distributed.make_mesh`) every pair group is sharded over its
  `pairs` axis and minibatch rows over `data`; results equal a one-device run up to
  float summation order.

  Args:
    plan: the plan from `make_plan`.
    train: the train stacks (`stack_data`).
    val: the val stacks.
    cfg: the stitch architecture and objective.
    tcfg: the optimisation settings.
    state: a state to resume from (donated); default a fresh `init_state`.
    on_eval: called with the state after each chunk (checkpointing hooks in here).
    mesh: optional mesh.

  Returns:
    The final train state.
  """
  if state is None:
    state = init_state(plan, cfg, tcfg, mesh)
  step = int(state["step"])
  while step < tcfg.steps:
    n = min(tcfg.eval_every - step % tcfg.eval_every, tcfg.steps - step)
    skip = _stopped_groups(state) if tcfg.patience > 0 else ()
    state = train_chunk(
        state, train, val, n_steps=n, plan=plan, cfg=cfg, tcfg=tcfg, skip=skip, mesh=mesh
    )
    step += n
    if on_eval is not None:
      on_eval(state)
  return state


# ----------------------------------------------------------------------------- results


def per_pair(state: dict, plan: Plan, key: str | Sequence[str]) -> list:
  """A per-group field of the state, split into one entry per pair.

  Args:
    state: a train state.
    plan: its plan.
    key: a field name ("best_params") or a path into the group state (("best", "val")).

  Returns:
    The field per pair (numpy leaves), in `plan.pairs` order.
  """
  keys = (key,) if isinstance(key, str) else tuple(key)
  out: list = [None] * len(plan.pairs)
  for g, gs in zip(plan.groups, state["groups"]):
    tree = gs
    for k in keys:
      tree = tree[k]
    tree = gather(tree)  # one host copy per leaf, not an eager slice per pair
    for i, k in enumerate(g.pair_index):
      out[k] = jax.tree.map(lambda a: a[i], tree)
  return out


@functools.partial(jax.jit, static_argnames=("plan", "cfg"))
def predict_val(params_groups, val, *, plan: Plan, cfg: StitchConfig):
  """Predictions of every pair on the val rows.

  Args:
    params_groups: per group, the stacked parameters [P, …].
    val: the val stacks (`stack_data`).
    plan: the plan.
    cfg: the stitch architecture.

  Returns:
    Per group, (ŷ [P, n, d_out], y [P, n, d_out]).
  """
  out = []
  for g, params in zip(plan.groups, params_groups):
    xs, ys, src, tgt = _group_arrays(plan, g, val)
    f = lambda p, s, t: (apply_pair(p, xs[s], cfg), ys[t])
    out.append(jax.vmap(f)(params, src, tgt))
  return tuple(out)


def evaluate(
    state: dict, plan: Plan, val: tuple[jax.Array, ...], cfg: StitchConfig
) -> list[dict[str, float]]:
  """Shared regression metrics of every pair at its best (early-stopping) parameters.

  Args:
    state: a train state.
    plan: its plan.
    val: the val stacks (`stack_data`).
    cfg: the stitch architecture.

  Returns:
    Per pair, in `plan.pairs` order, `lead_jax.stitch.metrics.regression_metrics` as floats.
  """
  from lead_jax.stitch import metrics

  preds = predict_val(tuple(gs["best_params"] for gs in state["groups"]), val, plan=plan, cfg=cfg)
  out: list = [None] * len(plan.pairs)
  for g, (yhat, y) in zip(plan.groups, gather(preds)):  # numpy: no program per shape
    for i, k in enumerate(g.pair_index):
      reg = metrics.regression_metrics(y[i], yhat[i], xp=np)
      out[k] = {name: float(v) for name, v in reg.items()}
  return out


def results_to_table(
    state: dict,
    plan: Plan,
    val: tuple[jax.Array, ...],
    cfg: StitchConfig,
    names: Sequence[str],
    dataset: str | None = None,
) -> pd.DataFrame:
  """Rows in the shared schema (`metrics.TABLE_COLUMNS`), method `mlp_d{depth}_{objective}`.

  Metrics are those of the closed-form rows, at each pair's best (early-stopping) params,
  plus `val_loss` (the objective) and `best_step`.

  Args:
    state: a train state.
    plan: its plan.
    val: the val stacks (`stack_data`).
    cfg: the stitch architecture and objective.
    names: model names, in `plan.dims` order.
    dataset: when given, a leading `dataset` column.

  Returns:
    The long results table, one row per (pair, metric).
  """
  from lead_jax.stitch import metrics

  mets = evaluate(state, plan, val, cfg)
  best_val = per_pair(state, plan, ("best", "val"))
  best_step = per_pair(state, plan, ("best", "step"))
  rows = []
  for k, (s, t) in enumerate(plan.pairs):
    vals = {**mets[k], "val_loss": float(best_val[k]), "best_step": float(best_step[k])}
    for metric, v in vals.items():
      rows.append(
          {
              "source": names[s],
              "target": names[t],
              "source_dim": plan.dims[s],
              "target_dim": plan.dims[t],
              "method": cfg.method,
              "lam": np.nan,
              "fold": "val",
              "metric": metric,
              "value": v,
              "chosen": True,
          }
      )
  df = pd.DataFrame(rows, columns=list(metrics.TABLE_COLUMNS))
  if dataset is not None:
    df.insert(0, "dataset", dataset)
  return df


def curves_to_table(
    state: dict, plan: Plan, tcfg: TrainConfig, names: Sequence[str]
) -> pd.DataFrame:
  """Long table of the loss curves.

  Args:
    state: a train state.
    plan: its plan.
    tcfg: the optimisation settings (they place the evaluations).
    names: model names, in `plan.dims` order.

  Returns:
    Columns source, target, step, split (train/val), loss; NaN where not yet evaluated.
  """
  train = per_pair(state, plan, ("history", "train"))
  val = per_pair(state, plan, ("history", "val"))
  steps = np.minimum((np.arange(tcfg.n_evals) + 1) * tcfg.eval_every, tcfg.steps)
  frames = []
  for k, (s, t) in enumerate(plan.pairs):
    for split, arr in (("train", train[k]), ("val", val[k])):
      frames.append(
          pd.DataFrame(
              {
                  "source": names[s],
                  "target": names[t],
                  "step": steps,
                  "split": split,
                  "loss": np.asarray(arr, np.float64),
              }
          )
      )
  return pd.concat(frames, ignore_index=True)


def config_dict(cfg: StitchConfig, tcfg: TrainConfig) -> dict:
  """The run's configuration as JSON-able dicts.

  Args:
    cfg: the stitch architecture and objective.
    tcfg: the optimisation settings.

  Returns:
    {"stitch": fields of `cfg`, "train": fields of `tcfg`}.
  """
  return {"stitch": dataclasses.asdict(cfg), "train": dataclasses.asdict(tcfg)}
