"""Closed-form stitches against plain per-pair float64 numpy references."""

import jax
import numpy as np
import pytest

from lead_jax.stitch import closed_form as cf
from lead_jax.stitch import io as stitch_io
from tests._helpers import correlated

LAMS = np.array([0.0, 1e-3, 1e-1, 10.0])


_data = correlated


def ref_ridge(x, y, lam):
  """[X, 1] normal equations with an unpenalised intercept (or lstsq at λ = 0)."""
  n = len(x)
  xa = np.c_[x, np.ones(n)]
  if lam == 0:
    wb = np.linalg.lstsq(xa, y, rcond=None)[0]
  else:
    pen = np.eye(xa.shape[1]) * lam
    pen[-1, -1] = 0
    wb = np.linalg.solve(xa.T @ xa + pen, xa.T @ y)
  return wb[:-1], wb[-1]


def ref_metrics(y, p):
  r = y - p
  sse = (r**2).sum(0)
  sst = ((y - y.mean(0)) ** 2).sum(0)
  return {
      "mse": (r**2).mean(),
      "r2": np.mean(1 - sse / sst),
      "r2_vw": 1 - sse.sum() / sst.sum(),
      "mae": np.abs(r).mean(),
      "eav": 1 - np.abs(r).sum() / np.abs(y - np.median(y, 0)).sum(),
      "cos": np.mean((p * y).sum(1) / np.linalg.norm(p, axis=1) / np.linalg.norm(y, axis=1)),
  }


@pytest.fixture(scope="module")
def fitted():
  dims = [6, 6, 9, 4]
  xs = _data(dims, 260)
  tr, va = [x[:200] for x in xs], [x[200:] for x in xs]
  with jax.enable_x64(True):
    out = cf.fit_all_pairs(tr, va, LAMS, control_dim=5, dtype=np.float64)
    out = jax.tree.map(np.asarray, out)
  return tr, va, out


def test_ridge_path_matches_numpy(fitted):
  tr, va, out = fitted
  for i in range(4):
    for j in range(4):
      if i == j:
        continue
      for l, lam in enumerate(LAMS):
        w, b = ref_ridge(tr[i], tr[j], lam)
        ref = ref_metrics(va[j], va[i] @ w + b)
        for m in ("mse", "r2", "r2_vw"):
          np.testing.assert_allclose(
              out["ridge"][m][i, j, l], ref[m], rtol=1e-8, err_msg=f"{m} {i}->{j} λ={lam}"
          )
      l = int(out["chosen"]["lambda_index"][i, j])
      assert l == int(np.argmin(out["ridge"]["mse"][i, j]))
      w, b = ref_ridge(tr[i], tr[j], LAMS[l])
      ref = ref_metrics(va[j], va[i] @ w + b)
      for m in ("mae", "eav", "cos"):
        np.testing.assert_allclose(
            out["chosen"][m][i, j], ref[m], rtol=1e-8, err_msg=f"{m} {i}->{j}"
        )
  assert np.all(np.isnan(np.diagonal(out["ridge"]["mse"], axis1=0, axis2=1)))


def test_stitches_and_w_diagnostics(fitted):
  tr, va, out = fitted
  tree, info = stitch_io.chosen_stitches(out)
  assert len(tree) == 5 * 4
  for rec in info:
    i, j = rec["source_index"], rec["target_index"]
    if max(i, j) >= 4:
      continue
    w_ref, b_ref = ref_ridge(tr[i], tr[j], rec["lam"])
    np.testing.assert_allclose(tree[rec["key"]]["W"], w_ref, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(tree[rec["key"]]["b"], b_ref, rtol=1e-7, atol=1e-9)
    sv = np.linalg.svd(w_ref, compute_uv=False)
    np.testing.assert_allclose(out["spectra"][i, j, : len(sv)], sv, rtol=1e-6, atol=1e-9)
    d_b = w_ref.shape[1]
    orth = np.linalg.norm(w_ref.T @ w_ref - np.eye(d_b)) / np.sqrt(d_b)
    np.testing.assert_allclose(out["chosen"]["orth_dev"][i, j], orth, rtol=1e-7)
    np.testing.assert_allclose(out["chosen"]["bias_norm"][i, j], np.linalg.norm(b_ref), rtol=1e-7)
    np.testing.assert_allclose(
        out["chosen"]["target_mean_norm"][i, j], np.linalg.norm(tr[j].mean(0)), rtol=1e-10
    )


def test_lambda0_is_min_norm_lstsq_when_rank_deficient():
  """N < d: the dual path; λ = 0 must be the minimum-norm least-squares W."""
  xs = _data([30, 4], 20, seed=3)
  tr, va = [x[:12] for x in xs], [x[12:] for x in xs]
  with jax.enable_x64(True):
    out = cf.fit_all_pairs(
        tr, va, np.array([0.0, 1.0]), control_dim=None, dtype=np.float64, procrustes=False
    )
  xc, yc = tr[0] - tr[0].mean(0), tr[1] - tr[1].mean(0)
  for l, lam in enumerate([0.0, 1.0]):
    w = (
        np.linalg.lstsq(xc, yc, rcond=None)[0]
        if lam == 0
        else np.linalg.solve(xc.T @ xc + lam * np.eye(30), xc.T @ yc)
    )
    b = tr[1].mean(0) - tr[0].mean(0) @ w
    ref = ref_metrics(va[1], va[0] @ w + b)
    np.testing.assert_allclose(np.asarray(out["ridge"]["mse"])[0, 1, l], ref["mse"], rtol=1e-7)


def test_float32_within_1e3(fitted):
  tr, va, out64 = fitted
  out32 = cf.fit_all_pairs(
      [x.astype(np.float32) for x in tr], [x.astype(np.float32) for x in va], LAMS, control_dim=5
  )
  for m in ("mse", "r2_vw"):
    a, b = np.asarray(out32["ridge"][m])[:4, :4, 1:], out64["ridge"][m][:4, :4, 1:]
    off = ~np.isnan(b)
    np.testing.assert_allclose(a[off], b[off], rtol=1e-3)


def test_procrustes_recovers_planted_rotation():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(300, 8)) * np.linspace(1, 3, 8)
  q = np.linalg.qr(rng.normal(size=(8, 8)))[0]
  q_pad = np.linalg.qr(rng.normal(size=(12, 8)))[0].T  # [8, 12], orthonormal rows
  ys = [x @ q + 0.01 * rng.normal(size=(300, 8)), x @ q_pad]
  with jax.enable_x64(True):
    out = cf.fit_all_pairs(
        [x[:250]] + [y[:250] for y in ys],
        [x[250:]] + [y[250:] for y in ys],
        LAMS,
        control_dim=None,
        dtype=np.float64,
    )
    r, _ = cf.polar(jax.numpy.asarray((x - x.mean(0)).T @ (ys[0] - ys[0].mean(0))))
    r_pad, _ = jax.jit(cf.polar)(jax.numpy.asarray((x - x.mean(0)).T @ (ys[1] - ys[1].mean(0))))
  np.testing.assert_allclose(np.asarray(r), q, atol=1e-3)
  np.testing.assert_allclose(np.asarray(r_pad), q_pad, atol=1e-9)
  assert out["procrustes"]["r2_vw"][0, 1] > 0.999
  assert out["procrustes"]["r2_vw"][0, 2] > 1 - 1e-6


def test_procrustes_metrics_match_numpy(fitted):
  tr, va, out = fitted
  for i, j in [(0, 2), (2, 3), (3, 1)]:
    xc, yc = tr[i] - tr[i].mean(0), tr[j] - tr[j].mean(0)
    u, s, vt = np.linalg.svd(xc.T @ yc, full_matrices=False)
    r = u @ vt
    for name, sc in (("procrustes", 1.0), ("procrustes_scaled", s.sum() / np.trace(xc.T @ xc))):
      ref = ref_metrics(va[j], (va[i] - tr[i].mean(0)) @ r * sc + tr[j].mean(0))
      for m in ("mse", "r2", "r2_vw"):
        np.testing.assert_allclose(out[name][m][i, j], ref[m], rtol=1e-8)


def test_no_retrace_on_same_shapes():
  xs = _data([4, 5], 40, seed=5)
  tr, va = [x[:30].astype(np.float32) for x in xs], [x[30:].astype(np.float32) for x in xs]
  cf.fit_all_pairs(tr, va, LAMS, control_dim=3)
  before = cf._fit_impl._cache_size()
  cf.fit_all_pairs([x + 1 for x in tr], [x + 1 for x in va], LAMS * 2, control_dim=3)
  assert cf._fit_impl._cache_size() == before
  # a new seed (the control's rows) and a new λ-path of the same length: no new program
  a = cf.fit_all_pairs(tr, va, LAMS, control_dim=3, seed=1)
  b = cf.fit_all_pairs(tr, va, LAMS + 0.5, control_dim=3, seed=2)
  assert cf._fit_impl._cache_size() == before
  assert not np.allclose(a["ridge"]["mse"][2], b["ridge"]["mse"][2])  # the control changed
  cv = cf._cv_impl._cache_size()
  cf.cross_validate_all_pairs(tr, LAMS, n_folds=3, control_dim=3, seed=1)
  cv1 = cf._cv_impl._cache_size()
  cf.cross_validate_all_pairs(tr, LAMS * 3, n_folds=3, control_dim=3, seed=7, fold_seed=4)
  assert cf._cv_impl._cache_size() == cv1 <= cv + 1


def test_cka_seed_is_traced():
  from lead_jax.similarity import cka

  xs = [x.astype(np.float32) for x in _data([4, 5], 40, seed=5)]
  one = cka.cka_all_pairs(xs, control_dim=3, seed=1)
  before = cka._cka_impl._cache_size()
  two = cka.cka_all_pairs(xs, control_dim=3, seed=2)
  assert cka._cka_impl._cache_size() == before
  assert not np.allclose(one["linear"][-1], two["linear"][-1])  # the control's column moved


def test_bad_input_names_array_and_row():
  xs = _data([4, 5], 40, seed=5)
  tr, va = [x[:30] for x in xs], [x[30:] for x in xs]
  tr[1] = tr[1].copy()
  tr[1][7, 2] = np.nan
  with pytest.raises(ValueError, match=r"train\[1\].*row 7"):
    cf.fit_all_pairs(tr, va, LAMS)
  with pytest.raises(ValueError, match=r"val\[1\]: 10 rows"):
    cf.fit_all_pairs([x[:30] for x in xs], [xs[0][30:35], xs[1][30:]], LAMS)
  with pytest.raises(ValueError, match="lambdas"):
    cf.fit_all_pairs([x[:30] for x in xs], [x[30:] for x in xs], [-1.0])


def test_save_and_restore_stitches(fitted, tmp_path):
  _, _, out = fitted
  tree, _ = stitch_io.chosen_stitches(out)
  assert not (tmp_path / "stitches").exists()
  stitch_io.save_stitches(out, tmp_path, names=["a", "b", "c", "d"])
  back, info = stitch_io.load_stitches(tmp_path)
  assert info[0]["source"] in "abcd" or info[0]["source"] == "gaussian_control"
  for k in tree:
    np.testing.assert_array_equal(back[k]["W"], tree[k]["W"])


def test_saved_stitches_share_one_program_per_shape(tmp_path):
  """Parameters are jit arguments, not constants: same-shape stitches reuse one program."""
  xs = [x.astype(np.float32) for x in _data([4, 4, 5], 40, seed=2)]
  out = cf.fit_all_pairs([x[:30] for x in xs], [x[30:] for x in xs], LAMS, control_dim=None)
  stitch_io.save_stitches(out, tmp_path, names=["a", "b", "c"])
  saved = stitch_io.load(tmp_path)
  x = xs[0][30:]
  ab, ac = stitch_io.find(saved, "a", "b"), stitch_io.find(saved, "a", "c")
  ab.apply(x)
  before = stitch_io._apply_affine._cache_size()
  y = ac.apply(x)  # 4 → 5: a new shape, one new program
  assert stitch_io._apply_affine._cache_size() == before + 1
  stitch_io.find(saved, "b", "c").apply(xs[1][30:])  # 4 → 5 again: reused
  assert stitch_io._apply_affine._cache_size() == before + 1
  np.testing.assert_allclose(y, x @ ac.params["W"] + ac.params["b"], rtol=1e-5, atol=1e-6)


def test_exact_ols_switch():
  """exact_ols=False takes λ = 0 from the Gram's pseudo-inverse, in the same program."""
  xs = _data([6, 9], 80, seed=1)
  tr, va = [x[:60].astype(np.float32) for x in xs], [x[60:].astype(np.float32) for x in xs]
  a = cf.fit_all_pairs(tr, va, [0.0, 1.0], control_dim=None)
  n = cf._fit_impl._cache_size()
  b = cf.fit_all_pairs(tr, va, [0.0, 1.0], control_dim=None, exact_ols=False)
  assert cf._fit_impl._cache_size() == n
  ma, mb = np.asarray(a["ridge"]["mse"]), np.asarray(b["ridge"]["mse"])
  np.testing.assert_allclose(mb, ma, rtol=1e-4)  # well conditioned: both are OLS
  np.testing.assert_array_equal(mb[..., 1], ma[..., 1])  # λ > 0 untouched


_ONE_CORE = """
import json, os, sys
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
import numpy as np
from lead_jax.stitch import closed_form as cf
from tests._helpers import correlated
xs = [x.astype(np.float32) for x in correlated([6, 9, 6], 90, seed=3)]
fit = cf.fit_all_pairs([x[:70] for x in xs], [x[70:] for x in xs], [0.0, 1.0], control_dim=4)
cv = cf.cross_validate_all_pairs(xs, [0.0, 1.0], n_folds=3, control_dim=4)
print(json.dumps({"fit": np.nan_to_num(fit["chosen"]["eav"]).tolist(),
                  "cv": np.nan_to_num(cv["mean"]["chosen"]["eav"]).tolist()}))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="no affinity")
def test_one_core_process_finishes():
  """A process confined to one core fits and cross-validates (the val medians once ran as
  a host callback that deadlocked there), with the same EAV as this process."""
  import json
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, "-c", _ONE_CORE], cwd=root, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  xs = [x.astype(np.float32) for x in correlated([6, 9, 6], 90, seed=3)]
  fit = cf.fit_all_pairs([x[:70] for x in xs], [x[70:] for x in xs], [0.0, 1.0], control_dim=4)
  cv = cf.cross_validate_all_pairs(xs, [0.0, 1.0], n_folds=3, control_dim=4)
  np.testing.assert_allclose(got["fit"], np.nan_to_num(fit["chosen"]["eav"]), atol=1e-6)
  np.testing.assert_allclose(got["cv"], np.nan_to_num(cv["mean"]["chosen"]["eav"]), atol=1e-6)


def test_exact_ols_device_route_matches_host(monkeypatch):
  """The jitted exact OLS (the accelerators' route) equals the host's numpy one, on one
  split and on k-fold masks, and both match float64 lstsq on the fold's rows."""
  xs = [x.astype(np.float32) for x in _data([5, 8, 5], 60, seed=4)]
  layout = cf.gram_lib.make_layout([5, 8, 5])
  idx, mask = cf.metrics.fold_indices(60, 3, 0)
  tmask = np.ones((3, 60), np.float32)
  for f in range(3):
    tmask[f, idx[f][mask[f] > 0]] = 0.0
  kw = dict(vidx=idx, tmask=tmask, vmask=mask)
  host = cf._exact_ols(xs, xs, layout, [0.0], np.float32, **kw)
  monkeypatch.setattr(cf, "_on_host", lambda: False)
  dev = cf._exact_ols(xs, xs, layout, [0.0], np.float32, **kw)
  for h, d in zip(host, dev):
    np.testing.assert_allclose(np.asarray(d), h, rtol=1e-5, atol=1e-7)
  y = np.concatenate(xs, 1).astype(np.float64)
  tr, va = tmask[0] > 0, idx[0][mask[0] > 0]
  x = np.c_[xs[1][tr].astype(np.float64), np.ones(tr.sum())]
  w = np.linalg.lstsq(x, y[tr], rcond=None)[0]
  ref = ((np.c_[xs[1][va].astype(np.float64), np.ones(len(va))] @ w - y[va]) ** 2).sum(0)
  g = [a for a, (_, mem) in enumerate(layout.groups) if 1 in mem][0]
  k = list(layout.groups[g][1]).index(1)
  np.testing.assert_allclose(host[g][0, k], ref, rtol=1e-4, atol=1e-6)
