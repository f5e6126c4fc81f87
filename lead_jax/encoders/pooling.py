"""Sentence-transformers heads in JAX: Pooling, Dense, Normalize.

Mirrors sentence_transformers' `Pooling._forward_padded` and `Dense.forward`
(checked against them in tests/test_encoders_bert.py). Config files read:

  modules.json               which modules the pipeline has (Pooling / Dense / Normalize)
  1_Pooling/config.json      legacy `pooling_mode_*_tokens` booleans or new `pooling_mode`
  2_Dense/config.json        in_features, out_features, bias, activation_function
  2_Dense/model.safetensors  linear.weight [out, in], linear.bias [out]
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lead_jax.encoders.layers import gelu_exact
from lead_jax.files import read_json
from lead_jax.numerics import HIGHEST

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# Legacy boolean keys, in sentence-transformers' concatenation order.
_LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}

# torch activation class names (as sentence-transformers writes them) -> jax.
DENSE_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.Tanh": jnp.tanh,
    "torch.nn.modules.activation.ReLU": jax.nn.relu,
    "torch.nn.modules.activation.Sigmoid": jax.nn.sigmoid,
    "torch.nn.modules.activation.GELU": gelu_exact,
    "torch.nn.modules.activation.SiLU": jax.nn.silu,
}
_ACTIVATION_ALIASES = {n.rsplit(".", 1)[-1]: n for n in DENSE_ACTIVATIONS}  # "Tanh" -> full name


@dataclasses.dataclass(frozen=True)
class PoolingSpec:
  """Which sentence-transformers pooling modes to apply (see `POOLING_MODES`).

  Raises:
    ValueError: no mode, or an unknown one.
  """

  modes: tuple[str, ...] = ("mean",)  # concatenated in this order
  include_prompt: bool = True

  def __post_init__(self):
    bad = [m for m in self.modes if m not in POOLING_MODES]
    if bad or not self.modes:
      raise ValueError(f"pooling modes {self.modes} invalid; known: {POOLING_MODES}")

  @classmethod
  def from_st_config(cls, cfg: Mapping[str, Any]) -> PoolingSpec:
    """Parses a `1_Pooling/config.json` dict.

    Args:
      cfg: legacy `pooling_mode_*_tokens` booleans (none set means mean) or the new
        `pooling_mode` (a string or a list), plus `include_prompt`.

    Returns:
      The spec.

    Raises:
      ValueError: an unknown mode.
    """
    if "pooling_mode" in cfg:
      pm = cfg["pooling_mode"]
      modes = (pm,) if isinstance(pm, str) else tuple(pm)
    else:
      modes = tuple(mode for key, mode in _LEGACY_KEYS.items() if cfg.get(key, False)) or ("mean",)
    return cls(modes=modes, include_prompt=bool(cfg.get("include_prompt", True)))


@dataclasses.dataclass(frozen=True)
class DenseSpec:
  """A sentence-transformers `Dense` module's config.

  Raises:
    ValueError: an activation not in `DENSE_ACTIVATIONS`.
  """

  in_features: int
  out_features: int
  bias: bool = True
  activation_function: str = "torch.nn.modules.activation.Tanh"
  use_residual: bool = False

  def __post_init__(self):
    if self.activation_function not in DENSE_ACTIVATIONS:
      raise ValueError(
          f"Dense activation_function={self.activation_function!r} not supported; "
          f"known: {sorted(DENSE_ACTIVATIONS)}"
      )

  @classmethod
  def from_st_config(cls, cfg: Mapping[str, Any]) -> DenseSpec:
    """Parses a `2_Dense/config.json` dict (the activation may be a short name, "Tanh").

    Args:
      cfg: the decoded config.

    Returns:
      The spec.

    Raises:
      KeyError: `in_features` or `out_features` is missing.
      ValueError: an unsupported activation, or input/output names other than
        "sentence_embedding".
    """
    for key in ("module_input_name", "module_output_name"):
      if cfg.get(key) not in (None, "sentence_embedding"):
        raise ValueError(f"Dense {key}={cfg[key]!r} unsupported (only 'sentence_embedding')")
    act = cfg.get("activation_function") or "torch.nn.modules.activation.Tanh"
    act = _ACTIVATION_ALIASES.get(act, act)
    return cls(
        in_features=int(cfg["in_features"]),
        out_features=int(cfg["out_features"]),
        bias=bool(cfg.get("bias", True)),
        activation_function=act,
        use_residual=bool(cfg.get("use_residual", False)),
    )


@dataclasses.dataclass(frozen=True)
class STModules:
  """What a sentence-transformers directory asks for after the Transformer module."""

  transformer_path: str = ""  # sub-directory holding config.json / weights ("" = model dir)
  pooling: PoolingSpec | None = None
  dense: tuple[tuple[str, DenseSpec], ...] = ()  # (sub-directory, spec) in pipeline order
  normalize: bool = False


def st_modules_json(*modules: tuple[str, str]) -> list[dict[str, Any]]:
  """The `modules.json` entries of a sentence-transformers pipeline, as it writes them.

  Args:
    *modules: (sub-directory, module type) per step in pipeline order, e.g.
      `("", "Transformer"), ("1_Pooling", "Pooling")`.

  Returns:
    One `{"idx", "name", "path", "type"}` dict per step.
  """
  return [
      {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
      for i, (path, kind) in enumerate(modules)
  ]


def read_st_modules(model_dir: str | pathlib.Path) -> STModules | None:
  """Parses `modules.json` and the Pooling / Dense configs it points to.

  Args:
    model_dir: a model directory.

  Returns:
    What the pipeline asks for after the Transformer, or None when the directory has no
    `modules.json`.

  Raises:
    FileNotFoundError: a config file is missing (named).
    ValueError: a config is invalid or unsupported (the file is named).
  """
  model_dir = pathlib.Path(model_dir)
  mpath = model_dir / "modules.json"
  if not mpath.exists():
    return None
  modules = read_json(mpath)
  transformer_path, pooling, dense, normalize = "", None, [], False
  for i, m in enumerate(modules):
    kind = str(m.get("type", "")).rsplit(".", 1)[-1]
    sub = m.get("path", "")
    if kind == "Transformer":
      transformer_path = sub
    elif kind == "Pooling":
      pooling = PoolingSpec.from_st_config(read_json(model_dir / sub / "config.json"))
    elif kind == "Dense":
      try:
        dense.append((sub, DenseSpec.from_st_config(read_json(model_dir / sub / "config.json"))))
      except (KeyError, ValueError) as e:
        raise ValueError(f"{model_dir / sub / 'config.json'}: {e}") from None
    elif kind == "Normalize":
      normalize = True
    else:
      raise ValueError(
          f"{mpath}: module {i} has type {m.get('type')!r}, which lead_jax does not support"
      )
  if pooling is not None and not pooling.include_prompt:
    raise ValueError(f"{model_dir}: Pooling include_prompt=false is not supported")
  return STModules(transformer_path, pooling, tuple(dense), normalize)


def dense_params_from_state(
    state: Mapping[str, np.ndarray], spec: DenseSpec, where: str
) -> dict[str, np.ndarray]:
  """Converts a `2_Dense` state dict to the parameters `dense` takes.

  Args:
    state: `linear.weight` [out, in], `linear.bias` [out] and (for a residual with a
      width change) `residual.weight`.
    spec: the module's config.
    where: the weight file's path, named in errors.

  Returns:
    `{"kernel": [in, out]}` plus `"bias"` and `"residual"` where the spec has them, fp32.

  Raises:
    ValueError: a tensor is missing or mis-shaped.
  """
  w = state.get("linear.weight")
  if w is None or w.shape != (spec.out_features, spec.in_features):
    raise ValueError(
        f"{where}: linear.weight missing or shape {None if w is None else w.shape}, "
        f"expected {(spec.out_features, spec.in_features)}"
    )
  p = {"kernel": np.ascontiguousarray(np.asarray(w, np.float32).T)}
  if spec.bias:
    if "linear.bias" not in state:
      raise ValueError(f"{where}: bias=true in config but linear.bias missing")
    p["bias"] = np.asarray(state["linear.bias"], np.float32)
  if spec.use_residual and spec.in_features != spec.out_features:
    if "residual.weight" not in state:
      raise ValueError(
          f"{where}: use_residual with in_features != out_features needs residual.weight"
      )
    p["residual"] = np.ascontiguousarray(np.asarray(state["residual.weight"], np.float32).T)
  return p


# --------------------------------------------------------------------------- pure functions


def pool(
    h_bld: jax.Array, attention_mask: jax.Array, modes: Sequence[str] = ("mean",)
) -> jax.Array:
  """Pools token states as sentence-transformers' `Pooling` does.

  Args:
    h_bld: [B, L, D] token states.
    attention_mask: [B, L] 0/1 (left or right padding).
    modes: `POOLING_MODES` entries, concatenated in this order.

  Returns:
    fp32 [B, len(modes) * D].

  Raises:
    ValueError: an unknown mode.
  """
  h_bld = h_bld.astype(jnp.float32)
  m_bl = attention_mask.astype(jnp.float32)
  B, L, D = h_bld.shape
  outs = []
  for mode in modes:
    if mode == "cls":  # first attended token (handles left padding)
      first_b = jnp.argmax(attention_mask.astype(jnp.int32), axis=1)
      outs.append(h_bld[jnp.arange(B), first_b])
    elif mode == "lasttoken":  # last attended token; position L-1 if none
      rev = attention_mask[:, ::-1].astype(jnp.int32)
      idx_b = L - 1 - jnp.argmax(rev, axis=1)
      idx_b = jnp.where(rev.max(axis=1) == 0, L - 1, idx_b)
      outs.append((h_bld * m_bl[..., None])[jnp.arange(B), idx_b])
    elif mode == "max":
      outs.append(jnp.max(jnp.where(m_bl[..., None] > 0, h_bld, -jnp.inf), axis=1))
    elif mode in ("mean", "mean_sqrt_len_tokens"):
      s_bd = jnp.einsum("bld,bl->bd", h_bld, m_bl, precision=HIGHEST)
      n_b1 = jnp.maximum(m_bl.sum(axis=1, keepdims=True), 1e-9)
      outs.append(s_bd / (n_b1 if mode == "mean" else jnp.sqrt(n_b1)))
    elif mode == "weightedmean":  # weights 1..L, shifted so the first attended token weighs 1
      first_b1 = jnp.argmax(attention_mask.astype(jnp.int32), axis=1)[:, None]
      w_bl = m_bl * (jnp.arange(1, L + 1, dtype=jnp.float32)[None, :] - first_b1)
      s_bd = jnp.einsum("bld,bl->bd", h_bld, w_bl, precision=HIGHEST)
      outs.append(s_bd / jnp.maximum(w_bl.sum(axis=1, keepdims=True), 1e-9))
    else:
      raise ValueError(f"unknown pooling mode {mode!r}")
  return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)


# Modes `pool_segments` computes (all of them).
PACKED_POOLING_MODES = POOLING_MODES


def pool_segments(
    h_bld: jax.Array, segment_ids: jax.Array, n_segments: int, modes: Sequence[str] = ("mean",)
) -> jax.Array:
  """Pools the texts of packed rows, each as `pool` pools it alone.

  A packed row holds texts one after another: `segment_ids` numbers them 1, 2, ...
  (each a contiguous run) and marks padding 0.

  Args:
    h_bld: [B, L, D] token states.
    segment_ids: int [B, L].
    n_segments: S, the segment slots per row (ids above S are not pooled).
    modes: `POOLING_MODES` entries, concatenated in this order.

  Returns:
    fp32 [B * S, len(modes) * D]: row `b * S + s - 1` pools segment s of row b (zeros
    for an empty slot).

  Raises:
    ValueError: an unknown mode.
  """
  h_bld = h_bld.astype(jnp.float32)
  B, L, D = h_bld.shape
  S = n_segments
  slot_bsl = segment_ids[:, None, :] == jnp.arange(1, S + 1, dtype=segment_ids.dtype)[None, :, None]
  m_bsl = slot_bsl.astype(jnp.float32)
  n_bs1 = m_bsl.sum(axis=2)[..., None]
  pos_l = jnp.arange(L, dtype=jnp.int32)
  first_bs = jnp.argmax(slot_bsl, axis=2)  # the segment's first token (0 for an empty slot)
  last_bs = L - 1 - jnp.argmax(slot_bsl[..., ::-1], axis=2)
  rows_b1 = jnp.arange(B)[:, None]
  outs = []
  for mode in modes:
    if mode == "cls":
      outs.append(h_bld[rows_b1, first_bs])
    elif mode == "lasttoken":
      outs.append(h_bld[rows_b1, last_bs])
    elif mode == "max":
      pooled_bl = (segment_ids > 0) & (segment_ids <= S)
      flat_bl = jnp.where(pooled_bl, S * rows_b1 + segment_ids - 1, B * S)  # the rest: dropped
      mx = jax.ops.segment_max(h_bld.reshape(B * L, D), flat_bl.reshape(-1), B * S + 1)[:-1]
      outs.append(mx.reshape(B, S, D))  # empty slots (-inf) are zeroed below
    elif mode in ("mean", "mean_sqrt_len_tokens"):
      s_bsd = jnp.einsum("bld,bsl->bsd", h_bld, m_bsl, precision=HIGHEST)
      n_bs1c = jnp.maximum(n_bs1, 1e-9)
      outs.append(s_bsd / (n_bs1c if mode == "mean" else jnp.sqrt(n_bs1c)))
    elif mode == "weightedmean":  # weights 1..len inside each segment, as `pool` gives a text alone
      w_bsl = m_bsl * (pos_l[None, None, :] - first_bs[..., None] + 1).astype(jnp.float32)
      s_bsd = jnp.einsum("bld,bsl->bsd", h_bld, w_bsl, precision=HIGHEST)
      outs.append(s_bsd / jnp.maximum(w_bsl.sum(axis=2)[..., None], 1e-9))
    else:
      raise ValueError(f"unknown pooling mode {mode!r}")
  out_bsd = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)
  out_bsd = jnp.where(n_bs1 > 0, out_bsd, 0.0)
  return out_bsd.reshape(B * S, out_bsd.shape[-1])


def dense(params: Mapping[str, jax.Array], x_bd: jax.Array, spec: DenseSpec) -> jax.Array:
  """Applies a sentence-transformers `Dense`: act(x W^T + b), plus the residual if any.

  Args:
    params: from `dense_params_from_state`.
    x_bd: [B, in_features].
    spec: the module's config.

  Returns:
    [B, out_features].
  """
  y_be = jnp.einsum("bd,de->be", x_bd, params["kernel"], precision=HIGHEST)
  if spec.bias:
    y_be = y_be + params["bias"]
  y_be = DENSE_ACTIVATIONS[spec.activation_function](y_be)
  if spec.use_residual:
    y_be = y_be + (
        x_bd
        if spec.in_features == spec.out_features
        else jnp.einsum("bd,de->be", x_bd, params["residual"], precision=HIGHEST)
    )
  return y_be
