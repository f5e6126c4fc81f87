"""The report's "How alike, calibrated" section from synthetic stage outputs (no models)."""

import re

import numpy as np
import pandas as pd

from lead_jax import files, report
from lead_jax.layout import RunLayout
from lead_jax.similarity import io as similarity_io
from lead_jax.similarity import null as null_lib


def test_calibrated_section_has_heatmaps_tables_and_the_paragraph(tmp_path):
  names = ["a", "b", "c", "gaussian_control"]
  rng = np.random.default_rng(0)
  obs = {s: np.eye(4) + 0.5 * (1 - np.eye(4)) for s in null_lib.STATISTICS}
  for o in obs.values():
    o[:3, 3] = o[3, :3] = 0.01
  null = {s: np.abs(rng.normal(0, 0.02, (50, 4, 4))) for s in null_lib.STATISTICS}
  for v in null.values():
    v[:, range(4), range(4)] = np.nan
  measures = {
      k: rng.uniform(size=(4, 4)) for k in ("cknna", "svcca", "pwcca", "procrustes_angle", "rsa")
  }
  layout = RunLayout.of(tmp_path)
  similarity_io.save_calibrated(layout.similarity, names, {"observed": obs, "null": null}, measures)
  rows = [
      {
          "source": s,
          "target": t,
          "method": m,
          "top1": v,
          "mean_rank": 10 * (1 - v) + 1,
          "n_val": 100,
          "k": 8,
          "start": 0,
      }
      for s in names[:3]
      for t in names[:3]
      if s != t
      for m, v in (("unsupervised", 0.5), ("procrustes", 0.9), ("ridge", 0.8), ("random", 0.01))
  ]
  files.save_table(pd.DataFrame(rows), layout.similarity, "unsupervised")
  page = report.build(layout).read_text()
  assert "<h2>How alike, calibrated</h2>" in page and "calibrated.png" in page
  assert (tmp_path / "report" / "calibrated.png").exists()
  captions = re.findall(r"<caption>(.+?)</caption>", page, re.S)
  assert any(c.startswith("Every measure per pair") for c in captions)
  assert any(c.startswith("Alignment without paired texts") for c in captions)
  tab = pd.read_csv(tmp_path / "report" / "measures.csv")
  assert len(tab) == 6 and {"cka_cal", "cka_p", "mknn_p", "cknna", "pwcca_b", "rsa"} <= set(tab)
  np.testing.assert_allclose(tab.cka_p.iloc[0], 1 / 51)  # no null draw reaches 0.5
  summary = (tmp_path / "report" / "summary.txt").read_text()
  assert "survives calibration" in page  # the paragraph naming what survives
  assert "Calibrated linear CKA" in summary and "Without paired texts" in summary
  assert not any(line[:1].isdigit() for line in summary.splitlines())  # the Qs keep 1…5
