"""End to end: run_all on a tiny config, then the HTML report opened in headless Chromium."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = pathlib.Path(os.environ.get("LEAD_JAX_MODELS", "~/.cache/lead_jax/models")).expanduser()
ARTIFACTS = ROOT / "artifacts"

pytestmark = [
    pytest.mark.skipif(
        not (MODELS / "paraphrase-MiniLM-L3-v2").is_dir(),
        reason="offline models not installed: run `bash scripts/setup.sh`",
    ),
    pytest.mark.slow,  # the whole pipeline end to end
]


def run_all(out, *extra):
  cmd = [
      sys.executable,
      str(ROOT / "experiments" / "run_all.py"),
      "--config=configs/tiny.py",  # 2 models, 200 docs (150/50), depth 1, 40 steps, 2 folds
      f"--out={out}",
      *extra,
  ]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("run") / "tiny"
  res = run_all(out)
  assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
  return out, res


def test_smoke_run_all_produces_every_output_and_skips_on_rerun(tiny_run):
  out, res = tiny_run
  final = json.loads(res.stdout.strip().splitlines()[-1])
  assert set(final["stage_seconds"]) == {
      "embed",
      "similarity",
      "closed_form",
      "mlp",
      "retrieval",
      "report",
  }
  for rel in (
      "similarity/cka.npz",
      "closed_form/results.parquet",
      "closed_form/stitches.json",
      "mlp_results.parquet",
      "retrieval/native.parquet",
      "retrieval/stitched.parquet",
      "retrieval/curve.parquet",
      "report/index.html",
      "report/summary.txt",
  ):
    assert (out / rel).exists(), rel
  cfg = json.loads((out / "config.json").read_text())  # the resolved config of the run
  assert cfg["out"] == str(out) and cfg["models"] == ["paraphrase-MiniLM-L3-v2", "wordllama"]
  assert cfg["data"]["max_docs"] == 200 and cfg["mlp"]["depths"] == [1]
  marker = json.loads((out / ".stages" / "mlp.json").read_text())
  assert marker["config"]["mlp"] == cfg["mlp"] and "mesh" not in marker["config"]
  import pandas as pd

  curve = pd.read_parquet(out / "retrieval" / "curve.parquet")  # K = 50, 100 and all 150 rows
  assert sorted(curve.k.unique()) == [50, 100, 150] and len(curve) == 3 * 2, curve
  assert curve["retention_ndcg@10"].between(-0.5, 1.5).all() and curve.val_r2_vw.notna().all()
  summary = (out / "report" / "summary.txt").read_text()
  assert "train-mean estimator" in summary and "zero predictor" in summary
  # a rerun finds every stage complete and redoes nothing
  again = run_all(out)
  assert again.returncode == 0
  assert json.loads(again.stdout.strip().splitlines()[-1])["stage_seconds"] == {
      s: 0.0 for s in final["stage_seconds"]
  }


def test_report_reads_in_question_order_and_every_table_has_a_title(tiny_run):
  out, res = tiny_run
  page = (out / "report" / "index.html").read_text()
  headings = re.findall(r"<h2>(.*?)</h2>", page)
  numbers = [int(m.group(1)) for h in headings if (m := re.match(r"(\d+)\. ", h))]
  assert numbers == [1, 2, 3, 4, 5], headings  # every question, in order
  assert "CKA" in headings[0] and "retrieval" in headings[-2], headings
  assert "calibration-size curve" in headings[-1], headings
  tables = re.findall(r"<table.*?</table>", page, re.S)
  assert len(tables) >= 9, len(tables)
  captions = [re.search(r"<caption>(.+?)</caption>", t, re.S) for t in tables]
  assert all(captions), [t[:200] for t, c in zip(tables, captions) if not c]
  titles = [c.group(1) for c in captions]
  assert titles[0].startswith("Linear CKA") and titles[1].startswith("Debiased CKA"), titles
  assert len(set(titles)) == len(titles), titles
  # summary.txt (printed at the end of run_all) follows the same order
  summary = (out / "report" / "summary.txt").read_text().splitlines()
  assert [int(line[0]) for line in summary if line[:1].isdigit()] == [1, 2, 3, 4, 5], summary
  assert res.stdout.index("\n1. Are the spaces") < res.stdout.index("\n2. How much does depth")


def test_run_all_console_is_quiet(tiny_run):
  _, res = tiny_run
  log = res.stderr
  assert "orbax" not in log.lower() and "checkpoint_manager" not in log, log[-3000:]
  assert "=== stage 4/6: mlp" in log and "[report] done in" in log
  assert re.search(r"retrieval closed_form: \d+/\d+ stitches, [\d.]+ stitches/s, in ", log), log
  assert len(log.splitlines()) < 60, log


def _chromium():
  for name in ("chromium", "chromium-browser", "google-chrome"):
    if shutil.which(name):
      return shutil.which(name)
  pytest.skip("chromium not installed: run `bash scripts/setup.sh --test`")


def test_report_figures_load_in_headless_chromium(tiny_run, tmp_path):
  out, _ = tiny_run
  report = out / "report"
  page = (report / "index.html").read_text()
  srcs = re.findall(r'<img src="([^"]+)"', page)
  assert len(srcs) >= 5, srcs  # cka, stitch quality, spectra, mlp, retention
  probe = report / "_probe.html"
  probe.write_text(
      page.replace(
          "</body>",
          """<script>
      window.addEventListener('load', () => {
        const r = [...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);
        const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(r);
        document.body.appendChild(pre);
      });</script></body>""",
      )
  )
  flags = [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      f"--user-data-dir={tmp_path / 'profile'}",
      "--virtual-time-budget=5000",
  ]
  chrome = _chromium()
  dom = subprocess.run(
      [chrome, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
  ).stdout
  m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
  assert m, dom[-2000:]
  loaded = json.loads(m.group(1).replace("&quot;", '"'))
  assert [s for s, _, _ in loaded] == srcs
  assert all(complete and width > 0 for _, complete, width in loaded), loaded
  ARTIFACTS.mkdir(exist_ok=True)
  shot = ARTIFACTS / "report.png"
  subprocess.run(
      [
          chrome,
          *flags,
          "--window-size=1200,3000",
          f"--screenshot={shot}",
          (report / "index.html").as_uri(),
      ],
      capture_output=True,
      timeout=120,
  )
  assert shot.exists() and shot.stat().st_size > 10_000
