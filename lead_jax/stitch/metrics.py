"""Stitch metrics, controls, k-fold statistics from per-fold Grams, and the long results table.

Metric definitions (val rows y [n, d], predictions ŷ, per-dimension val mean ȳ_j and
median med_j; everything per (source, target) pair):

  MSE        = Σ_nj (y − ŷ)² / (n d)                 log10_mse = log10(MSE)
  R² (avg)   = mean_j [1 − SSE_j / SST_j]             SST_j = Σ_n (y_nj − ȳ_j)²  (val mean,
  R² (vw)    = 1 − Σ_j SSE_j / Σ_j SST_j              sklearn's convention; near-constant dims,
                                                      SST_j ≤ 1e-8·max SST, are left out of the average)
  MAE        = Σ_nj |y − ŷ| / (n d)
  EAV        = 1 − Σ_nj |y − ŷ| / Σ_nj |y_nj − med_j|   explained absolute variation: the L1
               analogue of R².  The per-dimension val median is the best constant under L1,
               so any constant predictor scores EAV ≤ 0 and a perfect one scores 1.
  cos        = mean_n cos(ŷ_n, y_n) on raw (uncentred) vectors.

SSE_j for every λ comes from Gram identities (`lead_jax.stitch.closed_form`); only
MAE, EAV and cos need predictions, and they are computed at the chosen λ only.

Controls per target B (same definitions, same val rows):
  train_mean: ŷ = μ_B (train mean).  SSE_j = Σ_n ỹ_nj² = g_Bj.  R² = 0 on the train split by
              construction; on val it is −n(ȳ_j − μ_Bj)²/SST_j ≤ 0, ≈ 0.
  zero:       ŷ = 0, the reference study's "mean estimator".  SSE_j = Σ (ỹ + μ)² =
              g_Bj + 2 μ_Bj s_Bj + n μ_Bj².  cos(0, y) is undefined → NaN.
  random Gaussian source: the control model (seeded N(0, 1) rows) stitched with the
              same solver; it is an ordinary source row in the pair results.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from lead_jax.similarity.gram import CONTROL_NAME

PATH_METRICS = ("mse", "log10_mse", "r2", "r2_vw")
ROW_METRICS = ("mae", "eav", "cos")
W_METRICS = ("orth_dev", "orth_dev_min", "bias_norm", "target_mean_norm", "bias_ratio")


# A target dim whose val variance is below this fraction of the largest dim's is constant
# (some models have dead dims, e.g. all-MiniLM-L6-v2 dims 127 and 223 with variance ~1e-66):
# it is left out of the per-dimension R² average, where 1/SST_j would explode on float noise.
CONST_DIM_RTOL = 1e-8


def regression_metrics(y: jax.Array, yhat: jax.Array, xp=jnp) -> dict[str, jax.Array]:
  """All metrics from explicit predictions (y, ŷ [..., n, d]); the plain definition.

  Args:
    y: the val rows [..., n, d].
    yhat: the predictions, same shape.
    xp: `jnp` (traced, on the devices) or `np` (host arrays: numpy's median is a partition,
      XLA:CPU's a comparator sort ~10× slower).

  Returns:
    `{metric: [...]}` for `PATH_METRICS` and `ROW_METRICS`.
  """
  r = y - yhat
  sse_j = xp.sum(r * r, axis=-2)
  sst_j = xp.sum(xp.square(y - xp.mean(y, axis=-2, keepdims=True)), axis=-2)
  n, d = y.shape[-2], y.shape[-1]
  ok = sst_j > CONST_DIM_RTOL * xp.max(sst_j, axis=-1, keepdims=True)
  out = {"mse": xp.sum(sse_j, -1) / (n * d)}
  out["log10_mse"] = xp.log10(out["mse"])
  out["r2"] = xp.sum(xp.where(ok, 1.0 - sse_j / xp.where(ok, sst_j, 1.0), 0.0), -1) / xp.sum(ok, -1)
  out["r2_vw"] = 1.0 - xp.sum(sse_j, -1) / xp.sum(sst_j, -1)
  sabs = xp.sum(xp.abs(r), axis=(-2, -1))
  out["mae"] = sabs / (n * d)
  out["eav"] = 1.0 - sabs / xp.sum(xp.abs(y - xp.median(y, axis=-2, keepdims=True)), axis=(-2, -1))
  cos = xp.sum(y * yhat, -1) / (xp.linalg.norm(y, axis=-1) * xp.linalg.norm(yhat, axis=-1))
  out["cos"] = xp.mean(cos, -1)
  return out


def sse_summaries(sse_total, sse_w, sst_tot, n_valid, nv, d_b):
  """The path metrics from summed squared errors.

  Args:
    sse_total: Σ_j SSE_j.
    sse_w: Σ_j ω_j SSE_j with ω_j = 1/SST_j (0 for near-constant dims).
    sst_tot: Σ_j SST_j.
    n_valid: the number of dims that are not near-constant.
    nv: the val row count n.
    d_b: the target width d.

  Returns:
    `{"mse", "log10_mse", "r2", "r2_vw"}`, broadcast over the inputs' shapes.
  """
  mse = sse_total / (nv * d_b)
  xp = np if isinstance(mse, (np.ndarray, np.generic)) else jnp  # numpy in, numpy out
  return {
      "mse": mse,
      "log10_mse": xp.log10(mse),
      "r2": 1.0 - sse_w / n_valid,
      "r2_vw": 1.0 - sse_total / sst_tot,
  }


def masked_median(y: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Median over rows of y [n, ...] counting only rows with mask 1 (all rows if None).

  A sort on the devices (rows may be sharded across devices and processes). On a CPU
  backend the closed form takes numpy's partition instead (`closed_form._medians`): XLA's
  CPU sort is a generic comparator sort, ~10× slower on these shapes. Both give the same
  exact value.

  Args:
    y: rows [n, ...].
    mask: [n] row weights, rows with mask > 0 counted; None: all rows.

  Returns:
    The median [...], the mean of the two middle values for an even count.
  """
  if mask is None:
    mask = jnp.ones(y.shape[0], y.dtype)
  big = jnp.where(mask.reshape((-1,) + (1,) * (y.ndim - 1)) > 0, y, jnp.inf)
  srt = jnp.sort(big, axis=0)
  c = jnp.sum(mask > 0).astype(jnp.int32)
  return 0.5 * (srt[(c - 1) // 2] + srt[c // 2])


def fold_indices(n: int, n_folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Random equal-as-possible folds: idx [K, ceil(n/K)] padded with 0, mask [K, ceil(n/K)].

  Args:
    n: the row count.
    n_folds: the number of folds K.
    seed: seeds the permutation.

  Returns:
    `(idx int32, mask float32)`, each [K, ceil(n/K)].

  Raises:
    ValueError: n_folds is not in [2, n].
  """
  if not 2 <= n_folds <= n:
    raise ValueError(f"n_folds must be in [2, {n}], got {n_folds}")
  perm = np.random.default_rng(seed).permutation(n)
  parts = np.array_split(perm, n_folds)
  width = max(len(p) for p in parts)
  idx = np.zeros((n_folds, width), np.int32)
  mask = np.zeros((n_folds, width), np.float32)
  for f, p in enumerate(parts):
    idx[f, : len(p)] = p
    mask[f, : len(p)] = 1
  return idx, mask


# ----------------------------------------------------------------------------- tables

TABLE_COLUMNS = (
    "source",
    "target",
    "source_dim",
    "target_dim",
    "method",
    "lam",
    "fold",
    "metric",
    "value",
    "chosen",
)


def model_names(results: dict, names: Sequence[str] | None = None) -> list[str]:
  """The names of the results' models, with the control's last when there is one.

  Args:
    results: an output of `fit_all_pairs` or `cross_validate_all_pairs` (its `meta`).
    names: the M model names; None: `model_0`, `model_1`, ….

  Returns:
    The M or M + 1 names.

  Raises:
    ValueError: `names` does not have M entries.
  """
  meta = results["meta"]
  m = meta["n_models"]
  names = list(names) if names is not None else [f"model_{i}" for i in range(m)]
  if len(names) != m:
    raise ValueError(f"{len(names)} names for {m} models")
  if meta["control_index"] is not None:
    names.append(CONTROL_NAME)
  return names


def _pair_rows(names, dims, arr, method, metric, lam, chosen, fold):
  """arr [M, M] or [M, M, L] → long rows for off-diagonal pairs."""
  arr = np.asarray(arr, np.float64)
  m = len(names)
  src, tgt = np.nonzero(~np.eye(m, dtype=bool))
  if arr.ndim == 2:
    arr, lam, chosen = arr[..., None], np.asarray(lam)[..., None], np.asarray(chosen)[..., None]
  n_l = arr.shape[-1]
  lam = np.broadcast_to(lam, arr.shape)
  chosen = np.broadcast_to(chosen, arr.shape)
  s = np.repeat(src, n_l)
  t = np.repeat(tgt, n_l)
  return pd.DataFrame(
      {
          "source": np.asarray(names, object)[s],
          "target": np.asarray(names, object)[t],
          "source_dim": np.asarray(dims)[s],
          "target_dim": np.asarray(dims)[t],
          "method": method,
          "lam": lam[src, tgt].reshape(-1),
          "fold": fold,
          "metric": metric,
          "value": arr[src, tgt].reshape(-1),
          "chosen": chosen[src, tgt].reshape(-1),
      }
  )


def _one_fold(tree, lambdas, names, dims, fold):
  frames = []
  lam_idx = np.asarray(tree["chosen"]["lambda_index"])
  m = len(names)
  safe = np.nan_to_num(lam_idx).round().astype(int)
  lam_path = np.broadcast_to(lambdas, (m, m, len(lambdas)))
  is_chosen = np.arange(len(lambdas))[None, None, :] == safe[..., None]
  for metric, arr in tree["ridge"].items():
    frames.append(_pair_rows(names, dims, arr, "ridge", metric, lam_path, is_chosen, fold))
  lam_ch = np.asarray(lambdas)[safe]
  for metric, arr in tree["chosen"].items():
    if metric in PATH_METRICS or metric in ("lambda", "lambda_index"):
      continue
    frames.append(_pair_rows(names, dims, arr, "ridge", metric, lam_ch, True, fold))
  for method in ("procrustes", "procrustes_scaled"):
    for metric, arr in tree.get(method, {}).items():
      frames.append(_pair_rows(names, dims, arr, method, metric, np.nan, False, fold))
  for method, d in tree["controls"].items():
    for metric, arr in d.items():
      frames.append(
          pd.DataFrame(
              {
                  "source": method,
                  "target": names,
                  "source_dim": 0,
                  "target_dim": dims,
                  "method": method,
                  "lam": np.nan,
                  "fold": fold,
                  "metric": metric,
                  "value": np.asarray(arr, np.float64),
                  "chosen": False,
              }
          )
      )
  return frames


def results_to_table(
    results: dict, names: Sequence[str] | None = None, dataset: str | None = None
) -> pd.DataFrame:
  """One row per (source, target, method, λ, fold, metric).

  Works on the output of `fit_all_pairs` (fold = "val") and of
  `cross_validate_all_pairs` (fold = "0".."K-1", "mean", "std").  Ridge rows cover
  the whole λ-path for the Gram metrics (`chosen` marks the selected λ); row metrics
  and W diagnostics exist only at the chosen λ.  Controls have method/source
  "train_mean" or "zero"; the random-source control is source "gaussian_control".

  Args:
    results: the output of `fit_all_pairs` or `cross_validate_all_pairs`.
    names: the M model names; None: `model_0`, ….
    dataset: a leading `dataset` column, if given.

  Returns:
    The DataFrame with `TABLE_COLUMNS` (after `dataset`).

  Raises:
    ValueError: `names` does not match the model count.
  """
  names = model_names(results, names)
  dims = results["meta"]["dims"]
  lambdas = np.asarray(results["lambdas"], np.float64)
  frames = []
  if "folds" in results:
    k = results["meta"]["n_folds"]
    for f in range(k):
      frames += _one_fold(
          jax.tree.map(lambda x: np.asarray(x)[f], results["folds"]), lambdas, names, dims, str(f)
      )
    frames += _one_fold(results["mean"], lambdas, names, dims, "mean")
    frames += _one_fold(results["std"], lambdas, names, dims, "std")
  else:
    frames += _one_fold(results, lambdas, names, dims, "val")
  df = pd.concat(frames, ignore_index=True)
  if dataset is not None:
    df.insert(0, "dataset", dataset)
  return df
