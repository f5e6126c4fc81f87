"""Gate: PASS / WARN / FAIL on calibrate's retention estimate; one-page HTML + JSON.

    from lead_jax.migrate import gate
    g = gate.run(cfg)          # g["verdict"], g["exit_code"] (0 / 1 / 2)

The gated figure is the chosen method's translate-direction estimate: nDCG@10 retention
(stitched / native, out of fold) when calibrate had queries, else the self-retrieval
top-10 rate. With `lo`–`hi` its bootstrap interval:

    PASS (exit 0)   lo ≥ migrate.pass_retention
    FAIL (exit 2)   estimate < migrate.fail_retention, or hi ≤ the floor (the mean
                    estimator: every document tied; a stitch no better than it)
    WARN (exit 1)   otherwise

The summary names the floor (mean estimator) and the ceiling (the new model's native
retrieval, retention 1), every method's estimates both ways, and the settings. Exit 2 is
also what a binary returns for bad input; the JSON's `verdict` tells them apart.
"""

from __future__ import annotations

import html

from lead_jax import files
from lead_jax.config import StudyConfig
from lead_jax.migrate import calibrate, serve, stores

EXIT = {"PASS": 0, "WARN": 1, "FAIL": 2}


def verdict(est: dict, floor: float, pass_at: float, fail_below: float) -> tuple[str, str]:
  """(verdict, reason) of one estimate `{"estimate", "lo", "hi"}`.

  Args:
    est: the estimate and its interval.
    floor: the mean estimator's value of the same figure.
    pass_at: PASS when the interval's lower bound reaches it.
    fail_below: FAIL when the estimate is below it.

  Returns:
    `("PASS" | "WARN" | "FAIL", why)`.
  """
  e, lo, hi = est["estimate"], est["lo"], est["hi"]
  if hi <= floor:
    return "FAIL", f"the interval's upper bound {hi:.3f} is at or below the floor {floor:.3f}"
  if e < fail_below:
    return "FAIL", f"estimate {e:.3f} < fail threshold {fail_below:.3f}"
  if lo >= pass_at:
    return "PASS", f"lower bound {lo:.3f} ≥ pass threshold {pass_at:.3f}"
  return "WARN", (
      f"lower bound {lo:.3f} < pass threshold {pass_at:.3f}; estimate {e:.3f} ≥ fail "
      f"threshold {fail_below:.3f}"
  )


def run(cfg: StudyConfig) -> dict:
  """Gates the calibration in the work directory; writes gate.json and gate.html there.

  Args:
    cfg: the study config (`migrate.pass_retention`, `fail_retention`, `work`).

  Returns:
    `{"verdict", "exit_code", "reason", "metric", "estimate", "lo", "hi", "floor",
    "ceiling", "method", …, "html", "json"}`.

  Raises:
    MigrateError: no calibration in the work directory.
  """
  m = cfg.migrate
  work = calibrate.work_dir(cfg)
  calib = files.read_json(work / serve.CALIBRATION_JSON, missing_ok=True)
  if calib is None:
    raise stores.MigrateError(f"{work}: no calibration.json; run calibrate first")
  method, metric = calib["method"], calib["primary"]
  est = calib["estimates"][method]["translate"][metric]
  refs = calib["references"]
  if metric == "ndcg@10_retention":
    floor, ceiling = refs["floor_ndcg@10_retention"], 1.0
  else:
    floor, ceiling = refs["floor_self_top10"], 1.0
  v, why = verdict(est, floor, m.pass_retention, m.fail_retention)
  out = {
      "verdict": v,
      "exit_code": EXIT[v],
      "reason": why,
      "metric": metric,
      "method": method,
      "estimate": est["estimate"],
      "lo": est["lo"],
      "hi": est["hi"],
      "ci": m.ci,
      "floor": floor,
      "ceiling": ceiling,
      "native_ndcg@10": refs.get("native_ndcg@10"),
      "floor_ndcg@10": refs.get("floor_ndcg@10"),
      "pass_retention": m.pass_retention,
      "fail_retention": m.fail_retention,
      "source": calib["source"],
      "source_model": calib["source_model"],
      "target_model": calib["target_model"],
      "k": calib["k"],
      "n_queries": calib["n_queries"],
      "corpus_size_trend": calib["estimates"][method]["translate"].get("corpus_size_trend"),
      "html": str(work / "gate.html"),
      "json": str(work / "gate.json"),
  }
  files.write_json(work / "gate.json", {**out, "estimates": calib["estimates"]})
  files.atomic_write(work / "gate.html", lambda p: p.write_text(_html(out, calib)))
  return out


def _fmt(e) -> str:
  if isinstance(e, dict):
    return f"{e['estimate']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}]"
  return "—" if e is None else f"{e:.3f}"


def _trend(g: dict) -> str:
  t = g.get("corpus_size_trend")
  if not t:
    return ""
  pts = ", ".join(f"{r:.3f} at {n:,}" for n, r in zip(t["sizes"], t["retention"]))
  return (
      f"<p><b>Corpus size.</b> The estimate is for a corpus of the K = {g['k']:,} calibration "
      f"documents; retention falls as the corpus grows: {pts} documents "
      f"({t['slope_per_doubling']:+.3f} per doubling). Extrapolated log-linearly to the "
      f"collection's {t['n_collection']:,} documents: about {t['at_collection_size']:.2f} "
      "(a rough guide, not gated).</p>"
  )


def _html(g: dict, calib: dict) -> str:
  colour = {"PASS": "#1a7f37", "WARN": "#9a6700", "FAIL": "#cf222e"}[g["verdict"]]
  keys = [
      ("translate", "ndcg@10_retention"),
      ("translate", "self_top1"),
      ("translate", "self_top10"),
      ("serve", "ndcg@10_retention"),
      ("serve", "self_top10"),
  ]
  head = "".join(f"<th>{html.escape(d)} {html.escape(k)}</th>" for d, k in keys)
  rows = []
  for mm in calib["methods"]:
    e = calib["estimates"][mm]
    cells = "".join(f"<td>{_fmt(e[d].get(k))}</td>" for d, k in keys)
    mark = " (chosen)" if mm == g["method"] else ""
    rows.append(f"<tr><td>{html.escape(mm)}{mark}</td>{cells}</tr>")
  refs = calib["references"]
  esc = lambda x: html.escape(str(x))
  return f"""<!doctype html><html><head><meta charset="utf-8"><title>migration gate</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:.3em .8em;
border-bottom:1px solid #ddd;text-align:left}}.v{{color:#fff;background:{colour};padding:.3em .8em}}
</style></head><body>
<h1>Migration gate: <span class="v">{g["verdict"]}</span></h1>
<p>{esc(g["source"])}: <b>{esc(g["source_model"])}</b> → <b>{esc(g["target_model"])}</b>,
method <b>{esc(g["method"])}</b>, K = {g["k"]} calibration texts, {g["n_queries"]} queries.</p>
<p>{esc(g["metric"])} = <b>{g["estimate"]:.3f}</b>, {100 * g["ci"]:.0f}% CI
[{g["lo"]:.3f}, {g["hi"]:.3f}] (out of fold, bootstrap). {esc(g["reason"])}.</p>
<table><tr><th></th><th>value</th></tr>
<tr><td>floor (mean estimator: every document tied)</td><td>{_fmt(g["floor"])}</td></tr>
<tr><td>estimate ({esc(g["method"])})</td><td>{_fmt(g["estimate"])}</td></tr>
<tr><td>ceiling (the new model's native retrieval)</td><td>{_fmt(g["ceiling"])}</td></tr>
<tr><td>native nDCG@10 of the new model on the calibration texts</td>
<td>{_fmt(refs.get("native_ndcg@10"))}</td></tr>
<tr><td>thresholds: PASS if lower bound ≥, FAIL if estimate &lt;</td>
<td>{g["pass_retention"]:.2f}, {g["fail_retention"]:.2f}</td></tr></table>
{_trend(g)}
<h2>Every method (estimate [CI])</h2><table><tr><th>method</th>{head}</tr>{"".join(rows)}</table>
<p>translate: the old vectors mapped into the new space, searched with new-model queries;
serve: new-model queries mapped into the old space, searched in the old vectors. Ridge λ by
{calib["folds"]}-fold CV: {esc(calib["lambda"])}.</p></body></html>
"""
