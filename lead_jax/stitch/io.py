"""Stitches on disk: the chosen closed-form stitches (Orbax) and saved stitches of any kind.

A checkpoint directory is either
  * closed form: `<run>/closed_form` holding `stitches/` (Orbax) + `stitches.json`
    (`save_stitches`): per pair ŷ = x W + b at the chosen λ;
  * MLP: `<run>/mlp/d{depth}_{objective}` (an Orbax `CheckpointManager` directory,
    `lead_jax.stitch.mlp_checkpoint`): per pair the early-stopping best params,
    applied with `lead_jax.stitch.mlp.apply_pair`.

`load` reads either as a list of `SavedStitch` (find, check, apply, describe), which the
retrieval and translate stages use.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lead_jax import files
from lead_jax.stitch import metrics

HIGHEST = jax.lax.Precision.HIGHEST


def chosen_stitches(results: dict, names: Sequence[str] | None = None) -> tuple[dict, list[dict]]:
  """Unpack the grouped stitches of `fit_all_pairs` into per-pair arrays + metadata.

  Args:
    results: the host copy of a `fit_all_pairs` result.
    names: the M model names; None: `model_0`, ….

  Returns:
    `(tree, info)`: `{pair_SSS_TTT: {W [d_s, d_t], b [d_t], lam}}` and, per pair, its key,
    source, target, source/target index, source/target dim and λ.

  Raises:
    ValueError: `names` does not match the model count.
  """
  names = metrics.model_names(results, names)
  meta = results["meta"]
  lam = np.asarray(results["chosen"]["lambda"])
  tree, info = {}, []
  off = np.asarray(meta["column_offsets"])
  for blk, srcs in zip(results["stitches"], meta["stitch_sources"]):
    w, b = np.asarray(blk["W"]), np.asarray(blk["b"])  # [m_a, d_a, T], [m_a, T]
    for i, s in enumerate(srcs):
      for t in range(len(off) - 1):
        if s == t:
          continue
        key = f"pair_{s:03d}_{t:03d}"
        cols = slice(off[t], off[t + 1])
        tree[key] = {"W": w[i][:, cols], "b": b[i][cols], "lam": np.asarray(lam[s, t])}
        info.append(
            {
                "key": key,
                "source": names[s],
                "target": names[t],
                "source_index": int(s),
                "target_index": int(t),
                "source_dim": int(w.shape[1]),
                "target_dim": int(off[t + 1] - off[t]),
                "lam": float(lam[s, t]),
            }
        )
  return tree, info


def save_stitches(
    results: dict, run_dir: str | os.PathLike, names: Sequence[str] | None = None
) -> Path:
  """Orbax checkpoint `<run_dir>/stitches` of {pair_SSS_TTT: {W, b, lam}} + stitches.json.

  Args:
    results: the host copy of a `fit_all_pairs` result.
    run_dir: the directory (created if missing); an existing checkpoint is replaced.
    names: the M model names; None: `model_0`, ….

  Returns:
    The checkpoint's path, `<run_dir>/stitches`.
  """
  import orbax.checkpoint as ocp

  run_dir = Path(run_dir).absolute()
  run_dir.mkdir(parents=True, exist_ok=True)
  tree, info = chosen_stitches(results, names)
  path = run_dir / "stitches"
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, tree, force=True)
  ckptr.wait_until_finished()
  files.write_json(run_dir / "stitches.json", info)
  return path


def load_stitches(run_dir: str | os.PathLike) -> tuple[dict, list[dict]]:
  """The tree and metadata written by `save_stitches`.

  Args:
    run_dir: the directory holding `stitches/` and `stitches.json`.

  Returns:
    `(tree, info)` as `chosen_stitches` gives them.
  """
  import orbax.checkpoint as ocp

  run_dir = Path(run_dir).absolute()
  tree = ocp.StandardCheckpointer().restore(run_dir / "stitches")
  info = json.loads((run_dir / "stitches.json").read_text())
  return tree, info


class StitchError(ValueError):
  """A stitch checkpoint is missing, unreadable or does not fit the array; names both."""


@dataclasses.dataclass(frozen=True, eq=False)
class SavedStitch:
  """One pair's saved stitch, closed form or MLP.

  Attributes:
    kind: "closed_form" | "mlp".
    method: the results-table method: "ridge" | "mlp_d{depth}_{objective}".
    checkpoint: the absolute checkpoint directory.
    key: the pair key inside the checkpoint.
    source: the source model.
    target: the target model.
    source_dim: the source width.
    target_dim: the target width.
    params: a numpy pytree (W and b, or the MLP's unpadded params).
    lam: the chosen λ (closed form).
    depth: the MLP depth.
    objective: the MLP objective.
    cfg: the `mlp.StitchConfig` for MLPs.
  """

  kind: str  # "closed_form" | "mlp"
  method: str  # results-table method: "ridge" | "mlp_d{depth}_{objective}"
  checkpoint: str  # absolute directory
  key: str  # pair key inside the checkpoint
  source: str
  target: str
  source_dim: int
  target_dim: int
  params: Any  # numpy pytree
  lam: float | None = None
  depth: int | None = None
  objective: str | None = None
  cfg: Any = None  # mlp.StitchConfig for MLPs

  def apply(self, x_nd: jax.typing.ArrayLike) -> np.ndarray:
    """ŷ [n, target_dim] float32 from x [n, source_dim].

    Args:
      x_nd: the source rows [n, source_dim].

    Returns:
      The predictions, float32 numpy.

    Raises:
      StitchError: x is not [n, source_dim].
    """
    x = np.asarray(x_nd, np.float32)
    if x.ndim != 2 or x.shape[1] != self.source_dim:
      raise StitchError(
          f"{self.checkpoint} [{self.key}]: stitch {self.source}→{self.target} takes rows of "
          f"dim {self.source_dim}, got shape {x.shape}"
      )
    # parameters are arguments, not constants baked into the program: one compiled
    # program per (kind, shapes, MLP config) serves every stitch of that shape
    if self.kind == "closed_form":
      return np.asarray(_apply_affine(self._device_params, jnp.asarray(x)))
    return np.asarray(_apply_mlp(self._device_params, jnp.asarray(x), self.cfg))

  @functools.cached_property
  def _device_params(self):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), self.params)

  @functools.cached_property
  def digest(self) -> str:
    """sha256 over the parameters' bytes (identifies the stitch in store metadata)."""
    return files.sha256_arrays(jax.tree.leaves(self.params))

  def provenance(self) -> dict:
    """What a translated array's meta records of the stitch.

    Returns:
      `{"stitch_kind", "stitch_method", "stitch_checkpoint", "stitch_key", "stitch_digest",
      "source_model", "target_model", "source_dim", "target_dim"}`, plus `lam`
      (closed form) or `depth`, `objective`, `stitch_config` (MLP).
    """
    out = {
        "stitch_kind": self.kind,
        "stitch_method": self.method,
        "stitch_checkpoint": self.checkpoint,
        "stitch_key": self.key,
        "stitch_digest": self.digest,
        "source_model": self.source,
        "target_model": self.target,
        "source_dim": self.source_dim,
        "target_dim": self.target_dim,
    }
    if self.lam is not None:
      out["lam"] = self.lam
    if self.depth is not None:
      out["depth"] = self.depth
      out["objective"] = self.objective
      out["stitch_config"] = dataclasses.asdict(self.cfg)
    return out


@jax.jit
def _apply_affine(params, x_nd):
  return jnp.matmul(x_nd, params["W"], precision=HIGHEST) + params["b"]


@functools.partial(jax.jit, static_argnames="cfg")
def _apply_mlp(params, x_nd, cfg):
  from lead_jax.stitch import mlp

  return mlp.apply_pair(params, x_nd, cfg)


def load_closed_form(run_dir: str | os.PathLike) -> list[SavedStitch]:
  """Every pair's stitch in a closed-form directory.

  Args:
    run_dir: the directory holding `stitches/` and `stitches.json`.

  Returns:
    One `SavedStitch` per entry of `stitches.json`, method "ridge".

  Raises:
    StitchError: no `stitches.json`, the checkpoint cannot be restored, or a pair is
      missing from it or has a W of the wrong shape.
  """
  run_dir = Path(run_dir).absolute()
  if not (run_dir / "stitches.json").exists():
    raise StitchError(f"{run_dir}: no stitches.json (not a closed-form stitch directory)")
  try:
    tree, info = load_stitches(run_dir)
  except Exception as e:  # noqa: BLE001 - Orbax raises many kinds
    raise StitchError(f"{run_dir / 'stitches'}: cannot restore ({type(e).__name__}: {e})") from e
  out = []
  for rec in info:
    p = tree.get(rec["key"])
    if p is None:
      raise StitchError(
          f"{run_dir / 'stitches.json'}: pair {rec['key']} is missing from the checkpoint"
      )
    w = np.asarray(p["W"], np.float32)
    if w.shape != (rec["source_dim"], rec["target_dim"]):
      raise StitchError(
          f"{run_dir}: {rec['key']} W has shape {w.shape}, stitches.json says "
          f"[{rec['source_dim']}, {rec['target_dim']}]"
      )
    out.append(
        SavedStitch(
            "closed_form",
            "ridge",
            str(run_dir),
            rec["key"],
            rec["source"],
            rec["target"],
            int(rec["source_dim"]),
            int(rec["target_dim"]),
            {"W": w, "b": np.asarray(p["b"], np.float32)},
            lam=float(rec["lam"]),
        )
    )
  return out


def load_mlp(run_dir: str | os.PathLike) -> list[SavedStitch]:
  """Every pair's early-stopping best stitch in an MLP checkpoint directory (latest step).

  Args:
    run_dir: the MLP run directory (an Orbax `CheckpointManager` directory).

  Returns:
    One `SavedStitch` per trained pair, params unpadded to the pair's widths.

  Raises:
    StitchError: the checkpoint cannot be restored, or has no saved step.
  """
  from lead_jax.stitch import mlp, mlp_checkpoint

  run_dir = Path(run_dir).absolute()
  try:
    state, meta = mlp_checkpoint.restore_any(run_dir)
  except Exception as e:  # noqa: BLE001
    raise StitchError(
        f"{run_dir}: cannot restore an MLP stitch checkpoint ({type(e).__name__}: {e})"
    ) from e
  if state is None:
    raise StitchError(f"{run_dir}: no saved step")
  cfg = mlp.StitchConfig(**meta["stitch"])
  plan = mlp.make_plan(meta["dims"], cfg, [tuple(p) for p in meta["pairs"]])
  best = mlp.per_pair(state, plan, "best_params")
  names = meta["names"]
  out = []
  for k, (s, t) in enumerate(plan.pairs):
    d_in, d_out = plan.dims[s], plan.dims[t]
    params = best[k]
    out.append(
        SavedStitch(
            "mlp",
            cfg.method,
            str(run_dir),
            f"pair_{s:03d}_{t:03d}",
            names[s],
            names[t],
            int(d_in),
            int(d_out),
            params,
            depth=cfg.depth,
            objective=cfg.objective,
            cfg=cfg,
        )
    )
  return out


def is_closed_form(path: str | os.PathLike) -> bool:
  """Whether `path` is a closed-form stitch directory.

  Args:
    path: a checkpoint directory.

  Returns:
    True when it holds `stitches.json`.
  """
  return (Path(path) / "stitches.json").exists()


def load(path: str | os.PathLike) -> list[SavedStitch]:
  """Every pair's stitch in one checkpoint directory (closed form or MLP, detected).

  Args:
    path: the checkpoint directory.

  Returns:
    The `SavedStitch` list.

  Raises:
    StitchError: no such directory, or it cannot be read (see `load_closed_form`,
      `load_mlp`).
  """
  path = Path(path)
  if not path.is_dir():
    raise StitchError(f"{path}: no such stitch checkpoint directory")
  return load_closed_form(path) if is_closed_form(path) else load_mlp(path)


def find(stitches: list[SavedStitch], source: str, target: str, *, where: str = "") -> SavedStitch:
  """The stitch source→target.

  Args:
    stitches: the stitches of one checkpoint.
    source: the source model.
    target: the target model.
    where: the checkpoint, for the error message.

  Returns:
    The first stitch of `stitches` from `source` to `target`.

  Raises:
    StitchError: there is none; the message lists the pairs held.
  """
  for st in stitches:
    if st.source == source and st.target == target:
      return st
  pairs = sorted({f"{s.source}→{s.target}" for s in stitches})
  raise StitchError(
      f"{where or 'stitch checkpoint'}: no stitch {source}→{target}; it holds {pairs}"
  )


def check_fits(
    st: SavedStitch, model: str, dim: int, array: str, weights_digest: str | None = None
) -> None:
  """Refuses a stitch whose source model or dim does not match the array it is applied to.

  Args:
    st: the stitch.
    model: the model the array was embedded with.
    dim: the array's width.
    array: the array, for messages.
    weights_digest: the array's weights digest; when given, it must match the one the
      stitch's `run.json` records for `model` (if any).

  Raises:
    StitchError: the source model, dim or weights digest differs.
  """
  if st.source != model:
    raise StitchError(
        f"{st.checkpoint} [{st.key}]: stitch source is {st.source!r}, but {array} holds "
        f"model {model!r}"
    )
  if st.source_dim != dim:
    raise StitchError(
        f"{st.checkpoint} [{st.key}]: stitch takes dim {st.source_dim}, but {array} has "
        f"dim {dim}"
    )
  run_json = Path(st.checkpoint) / "run.json"
  if weights_digest and run_json.exists():
    want = (
        json.loads(run_json.read_text()).get("model_meta", {}).get(model, {}).get("weights_digest")
    )
    if want and want != weights_digest:
      raise StitchError(
          f"{st.checkpoint}: stitch was fitted on {model!r} weights {want[:12]}…, but {array} "
          f"was embedded with weights {weights_digest[:12]}…"
      )
