"""Query-side serving: a saved stitch maps new-model query vectors into the old space.

    from lead_jax.migrate.serve import Stitch
    st = Stitch.load("checkpoints/migrate")          # calibrate's directory: new → old
    q_old = st.apply(new_model_query_vec)             # [d_new] → [d_old], or [n, d] → [n, d']

The old index keeps serving; only the queries change model (Drift-Adapter's mode). `load`
takes a calibration directory (the chosen method, the new → old pair, or `direction=
"translate"` for old → new) or any stitch checkpoint directory with `source`/`target`.

Two paths, the same numbers (to float32 rounding, tested):
  * batches ([n, d], n > 1) run one jitted XLA program with the parameters as arguments
    (one compiled program per shape serves every stitch of that shape);
  * one vector ([d] or [1, d]) of an affine stitch is a numpy mat-vec against a C-order
    copy of Wᵀ kept at load. A jitted call on CPU pays ~10–30 µs of dispatch and XLA's
    1-row dot is slow; numpy's gemv on a contiguous Wᵀ is ~40 µs for 1024 → 1024 on the
    2-core machine (benchmarks/bench_serve.py measures both). MLP stitches always take
    the jitted path.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from lead_jax.errors import InputError
from lead_jax.stitch import io as stitch_io

HIGHEST = jax.lax.Precision.HIGHEST
CALIBRATION_JSON = "calibration.json"


@jax.jit
def apply_affine(w_de: jax.Array, b_e: jax.Array, x_nd: jax.Array) -> jax.Array:
  """ŷ = x W + b, jitted with the parameters as arguments.

  Args:
    w_de: W [d, e].
    b_e: b [e].
    x_nd: rows [n, d].

  Returns:
    [n, e].
  """
  return jnp.einsum("nd,de->ne", x_nd, w_de, precision=HIGHEST) + b_e


@dataclasses.dataclass(frozen=True, eq=False)
class Stitch:
  """One direction of a saved stitch, ready to apply.

  Attributes:
    saved: the underlying `stitch_io.SavedStitch`.
    method: ridge | ols | procrustes | mlp (or the checkpoint's method).
    normalize: L2-normalise outputs (the old index holds unit vectors).
  """

  saved: stitch_io.SavedStitch
  method: str
  normalize: bool = False

  @property
  def source(self) -> str:
    return self.saved.source

  @property
  def target(self) -> str:
    return self.saved.target

  @property
  def source_dim(self) -> int:
    return self.saved.source_dim

  @property
  def target_dim(self) -> int:
    return self.saved.target_dim

  @property
  def digest(self) -> str:
    return self.saved.digest

  @classmethod
  def load(
      cls,
      path,
      *,
      direction: str = "serve",
      source: str | None = None,
      target: str | None = None,
      method: str | None = None,
  ) -> Stitch:
    """A stitch from a calibration directory or a stitch checkpoint directory.

    Args:
      path: calibrate's work directory (holds calibration.json), or a closed-form / MLP
        stitch checkpoint directory.
      direction: with a calibration directory, "serve" (new → old) or "translate"
        (old → new).
      source: the source model (checkpoint directories; checked for calibration ones).
      target: the target model, likewise.
      method: with a calibration directory, a method other than the chosen one.

    Returns:
      The `Stitch`.

    Raises:
      InputError: the directory holds no such stitch, or `source`/`target` differ from the
        models it was calibrated for.
    """
    path = pathlib.Path(path)
    calib = path / CALIBRATION_JSON
    if not calib.exists():
      if not (source and target):
        raise InputError(f"{path}: not a calibration directory; give source= and target=")
      st = stitch_io.find(stitch_io.load(path), source, target, where=str(path))
      return cls(st, st.method)
    info = json.loads(calib.read_text())
    old, new = info["source_model"], info["target_model"]
    s, t = (new, old) if direction == "serve" else (old, new)
    if direction not in ("serve", "translate"):
      raise InputError(f"direction must be 'serve' or 'translate', got {direction!r}")
    if (source and source != s) or (target and target != t):
      raise InputError(
          f"{path}: the stitch was calibrated for {old!r} → {new!r} (direction {direction}: "
          f"{s!r} → {t!r}), not {source!r} → {target!r}"
      )
    m = method or info["method"]
    where = path / "stitches" / m
    st = stitch_io.find(stitch_io.load(where), s, t, where=str(where))
    return cls(st, m, normalize=bool(info.get("normalize", True)))

  @functools.cached_property
  def _w(self):
    p = self.saved.params
    return jnp.asarray(p["W"], jnp.float32), jnp.asarray(p["b"], jnp.float32)

  @functools.cached_property
  def _wt(self):
    p = self.saved.params
    return np.ascontiguousarray(np.asarray(p["W"], np.float32).T), np.asarray(p["b"], np.float32)

  def apply(self, x) -> np.ndarray:
    """The stitch applied to one vector [d] or a batch [n, d]; float32 numpy, same rank.

    Args:
      x: [source_dim] or [n, source_dim].

    Returns:
      [target_dim] or [n, target_dim] (L2-normalised when `normalize`).

    Raises:
      InputError: the width is not `source_dim`.
    """
    x = np.asarray(x, np.float32)
    if x.ndim not in (1, 2) or x.shape[-1] != self.source_dim:
      raise InputError(
          f"{self.saved.checkpoint} [{self.saved.key}]: stitch {self.source}→{self.target} "
          f"takes vectors of dim {self.source_dim}, got shape {x.shape}"
      )
    if self.saved.kind == "closed_form" and (x.ndim == 1 or x.shape[0] == 1):
      wt, b = self._wt
      y = (wt @ x.reshape(-1) + b).reshape(x.shape[:-1] + (self.target_dim,))
    elif self.saved.kind == "closed_form":
      w, b = self._w
      y = np.asarray(apply_affine(w, b, jnp.asarray(x)))
    else:
      y = self.saved.apply(x.reshape(-1, self.source_dim)).reshape(
          x.shape[:-1] + (self.target_dim,)
      )
    if self.normalize:
      y = y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
    return y.astype(np.float32, copy=False)

  def apply_jit(self, x) -> np.ndarray:
    """The jitted path for any input (the reference the single-vector path is tested on).

    Args:
      x: [source_dim] or [n, source_dim].

    Returns:
      As `apply`.
    """
    x = np.asarray(x, np.float32)
    x2 = x.reshape(-1, self.source_dim)
    if self.saved.kind == "closed_form":
      w, b = self._w
      y = np.asarray(apply_affine(w, b, jnp.asarray(x2)))
    else:
      y = self.saved.apply(x2)
    if self.normalize:
      y = y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
    return y.reshape(x.shape[:-1] + (self.target_dim,)).astype(np.float32, copy=False)
