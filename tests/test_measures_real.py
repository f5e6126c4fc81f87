"""The measures and the null on real WordNet embeddings, against the float64 references.

Real rows have what the synthetic ones lack: unit norm, dead dimensions and a near-singular
Gram (paraphrase-MiniLM-L3-v2), so the CCA whitening and the kNN lists see real spectra.
"""

import jax
import numpy as np
import pytest

from lead_jax.encoders import registry
from lead_jax.similarity import measures as ms
from lead_jax.similarity import null as null_lib
from tests import test_measures as ref
from tests._helpers import wordnet_rows
from tests.test_null import _ref_cka, _ref_mknn

MODELS = ("paraphrase-MiniLM-L3-v2", "wordllama")
pytestmark = pytest.mark.skipif(
    not all((registry.models_cache_dir() / m).is_dir() for m in MODELS),
    reason="offline models not installed: run `bash scripts/setup.sh`",
)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
  (tr,) = wordnet_rows(tmp_path_factory.mktemp("real_measures"), MODELS, 400, 300, 100)
  return [np.asarray(x, np.float64) for x in tr]


def test_measures_match_float64_on_real_rows(rows):
  a, b = rows
  with jax.enable_x64(True):
    out = ms.measures_all_pairs(
        rows, control_dim=None, cknna_k=10, svcca_k=10, rcond=1e-13, rsa_n=200, dtype=np.float64
    )
  idx = ms.rsa_rows(0, len(a), 200)
  expect = {
      "cknna": ref.ref_cknna(a, b, 10),
      "svcca": ref.ref_svcca(a, b, 10),
      "pwcca": ref.ref_pwcca(a, b),
      "procrustes_angle": ref.ref_procrustes_angle(a, b),
      "rsa": ref.ref_rsa(a, b, idx),
  }
  for name, v in expect.items():
    np.testing.assert_allclose(out[name][0, 1], v, rtol=1e-6, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(out["pwcca"][1, 0], ref.ref_pwcca(b, a), rtol=1e-6, atol=1e-6)


def test_null_matches_float64_on_real_rows(rows):
  a, b = rows
  perms = np.asarray(null_lib.permutations(0, 3, len(a)))
  with jax.enable_x64(True):
    out = null_lib.null_all_pairs(rows, perms=perms, knn_k=10, control_dim=None, dtype=np.float64)
  for p, pi in enumerate(perms):
    lin, deb = _ref_cka(a - a.mean(0), b[pi] - b.mean(0))
    np.testing.assert_allclose(out["null"]["linear"][p, 0, 1], lin, rtol=1e-9)
    np.testing.assert_allclose(out["null"]["debiased"][p, 0, 1], deb, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(out["null"]["mutual_knn"][p, 0, 1], _ref_mknn(a, b[pi], 10))
  cal = null_lib.calibrate(out["observed"]["linear"], out["null"]["linear"])
  assert cal["p_value"][0, 1] == 1 / 4  # two real models: far outside their null
