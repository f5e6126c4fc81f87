"""Query-side serving: `Stitch.load(path).apply(x)`, its single-vector and batch paths."""

import json

import numpy as np
import pytest

from lead_jax.errors import InputError
from lead_jax.migrate import calibrate, serve


def _saved(tmp, seed=0, d_new=48, d_old=32):
  rng = np.random.default_rng(seed)
  pairs = {
      (0, 1): {"W": rng.normal(size=(d_old, d_new)), "b": rng.normal(size=d_new), "lam": 1.0},
      (1, 0): {"W": rng.normal(size=(d_new, d_old)), "b": rng.normal(size=d_old), "lam": 0.1},
  }
  calibrate.save_affine(tmp / "stitches" / "ridge", pairs, ["old_m", "new_m"])
  (tmp / "calibration.json").write_text(
      json.dumps(
          {"source_model": "old_m", "target_model": "new_m", "method": "ridge", "normalize": False}
      )
  )
  return pairs


def test_single_vector_path_matches_the_jitted_path_and_numpy(tmp_path):
  pairs = _saved(tmp_path)
  st = serve.Stitch.load(tmp_path)  # serve: new → old
  assert (st.source, st.target, st.source_dim, st.target_dim) == ("new_m", "old_m", 48, 32)
  p = pairs[1, 0]
  x = np.random.default_rng(1).normal(size=(20, 48)).astype(np.float32)
  want = x.astype(np.float64) @ p["W"] + p["b"]
  one = st.apply(x[3])
  assert one.shape == (32,) and one.dtype == np.float32
  np.testing.assert_allclose(one, st.apply_jit(x[3]), atol=1e-5)
  np.testing.assert_allclose(one, want[3], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(st.apply(x[3:4]), want[3:4], rtol=1e-5, atol=1e-4)
  batch = st.apply(x)
  np.testing.assert_allclose(batch, want, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(batch, st.apply_jit(x), atol=1e-5)
  fwd = serve.Stitch.load(tmp_path, direction="translate")
  assert (fwd.source, fwd.target) == ("old_m", "new_m") and fwd.digest != st.digest


def test_params_are_arguments_so_one_program_serves_every_stitch(tmp_path):
  _saved(tmp_path / "a", seed=0)
  _saved(tmp_path / "b", seed=1)
  x = np.ones((5, 48), np.float32)
  a = serve.Stitch.load(tmp_path / "a")
  before = serve.apply_affine._cache_size()
  ya = a.apply(x)
  after_one = serve.apply_affine._cache_size()
  yb = serve.Stitch.load(tmp_path / "b").apply(x)
  assert serve.apply_affine._cache_size() == after_one <= before + 1
  assert not np.allclose(ya, yb)  # two different stitches, one compiled program


def test_wrong_inputs_are_refused(tmp_path):
  _saved(tmp_path)
  st = serve.Stitch.load(tmp_path)
  with pytest.raises(InputError, match="takes vectors of dim 48, got shape"):
    st.apply(np.ones(32, np.float32))
  with pytest.raises(InputError, match="calibrated for 'old_m' → 'new_m'"):
    serve.Stitch.load(tmp_path, target="someone_else")
  with pytest.raises(InputError, match="give source= and target="):
    serve.Stitch.load(tmp_path / "stitches" / "ridge")
  direct = serve.Stitch.load(tmp_path / "stitches" / "ridge", source="new_m", target="old_m")
  np.testing.assert_allclose(direct.apply(np.ones(48)), st.apply(np.ones(48)), atol=1e-6)


def test_normalize_gives_unit_vectors(tmp_path):
  _saved(tmp_path)
  info = json.loads((tmp_path / "calibration.json").read_text())
  (tmp_path / "calibration.json").write_text(json.dumps({**info, "normalize": True}))
  st = serve.Stitch.load(tmp_path)
  x = np.random.default_rng(2).normal(size=(4, 48))
  np.testing.assert_allclose(np.linalg.norm(st.apply(x), axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(st.apply(x[0])), 1.0, rtol=1e-5)
