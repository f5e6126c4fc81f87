"""The study's report: figures, tables and one answered paragraph per question.

Reads what the stages wrote under a run directory:
    similarity/cka.npz                 CKA matrices (Gaussian control last)
    similarity/calibrated.npz, unsupervised.parquet   nulls, measures, unpaired alignment
    closed_form/results.parquet        ridge λ-path / Procrustes / controls, val + k-fold
    closed_form/stitches, .json        the chosen W, b per pair (singular values)
    mlp_results.parquet, mlp/*/curves  MLP stitches and their loss curves
    retrieval/{native,stitched,overlap,curve}.parquet
and writes <run>/report/index.html, PNG figures, CSV tables and summary.txt.
Missing stages are skipped with a note, so a partial run still gets a report.
"""

from __future__ import annotations

import html
import json
import pathlib

import numpy as np
import pandas as pd

from lead_jax import files
from lead_jax.layout import RunLayout
from lead_jax.similarity.gram import CONTROL_NAME

R2 = "r2_vw"  # variance-weighted R²: the per-dimension average explodes on near-constant dims
_CKA = "How alike are the spaces? (CKA)"
_CALIBRATED = "How alike, calibrated"
_Q2 = "2. How much does depth or nonlinearity help?"
_RETRIEVAL = "Does retrieval survive the stitch?"
_CURVE = "How many texts must be re-embedded? (calibration-size curve)"


def _short(name: str) -> str:
  return (
      name.replace("paraphrase-", "p-")
      .replace("all-", "")
      .replace("-base-v2", "")
      .replace("-v2", "")
      .replace(CONTROL_NAME, "gauss")
  )


def _heatmap(ax, mat, rows, cols, title, fmt="{:.2f}", cmap="viridis", vmin=None, vmax=None):
  m = np.asarray(mat, float)
  im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=vmax)
  ax.set_xticks(range(len(cols)), [_short(c) for c in cols], rotation=45, ha="right", fontsize=8)
  ax.set_yticks(range(len(rows)), [_short(r) for r in rows], fontsize=8)
  ax.set_title(title, fontsize=10)
  for i in range(m.shape[0]):
    for j in range(m.shape[1]):
      if np.isfinite(m[i, j]):
        ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=7, color="w")
  ax.figure.colorbar(im, ax=ax, fraction=0.046)


def _pivot(df, rows, cols, value="value"):
  return df.pivot_table(index="source", columns="target", values=value, aggfunc="mean").reindex(
      index=rows, columns=cols
  )


class Report:
  """One run's report, built section by section into `<run>/report/`.

  Args:
    run_dir: a `RunLayout`, or a run directory.

  Attributes:
    layout: the run layout.
    run: the run directory.
    out: the report directory (created).
    sections: the HTML of each section written so far.
    summary: the lines of summary.txt.
    figures: the file names of the figures written.
  """

  def __init__(self, run_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    self.plt = plt
    self.layout = run_dir if isinstance(run_dir, RunLayout) else RunLayout.of(run_dir)
    self.run = self.layout.root
    self.out = self.layout.report
    self.out.mkdir(parents=True, exist_ok=True)
    self.sections: list[str] = []
    self.summary: list[str] = []
    self.figures: list[str] = []

  # ------------------------------------------------------------------ helpers
  def fig(self, name, fig):
    """Saves and closes a figure as `<out>/<name>`.

    Args:
      name: the PNG file name.
      fig: the matplotlib figure.

    Returns:
      The `<img>` tag showing it.
    """
    fig.tight_layout()
    fig.savefig(self.out / name, dpi=110)
    self.plt.close(fig)
    self.figures.append(name)
    return f'<img src="{name}" alt="{name}">'

  def table(self, name, title, df: pd.DataFrame, show=True) -> str:
    """Writes a table as `<out>/<name>.csv`.

    Args:
      name: the CSV file stem.
      title: the table's caption (escaped).
      df: the table.
      show: also return it as HTML.

    Returns:
      The table's HTML, its title as `<caption>`, or "" when not `show`.
    """
    df.to_csv(self.out / f"{name}.csv", index=False)
    if not show:
      return ""
    tab = df.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="t")
    head, rest = tab.split(">", 1)  # after the opening <table …>
    return f"{head}>\n<caption>{html.escape(title)}</caption>{rest}"

  def section(self, title, *parts):
    """Appends a section to the page.

    Args:
      title: the heading (escaped).
      *parts: HTML fragments; empty ones are left out.
    """
    self.sections.append(f"<h2>{html.escape(title)}</h2>\n" + "\n".join(p for p in parts if p))

  @staticmethod
  def p(text):
    """A paragraph of plain text.

    Args:
      text: the text (escaped).

    Returns:
      The `<p>` element.
    """
    return f"<p>{html.escape(text)}</p>"

  # ------------------------------------------------------------------ data
  def load(self):
    """Reads every stage output there is (missing ones stay None).

    Returns:
      self.
    """
    lay = self.layout
    cka = lay.similarity / "cka.npz"
    self.cka = dict(np.load(cka, allow_pickle=False)) if cka.exists() else None
    cal = lay.similarity / "calibrated.npz"
    self.calibrated = dict(np.load(cal, allow_pickle=False)) if cal.exists() else None
    self.unsupervised = files.read_table(lay.similarity / "unsupervised.parquet")
    self.cf = files.read_table(lay.closed_form_results)
    self.mlp = files.read_table(lay.mlp_results)
    self.native = files.read_table(lay.retrieval / "native.parquet")
    self.stitched = files.read_table(lay.retrieval / "stitched.parquet")
    self.overlap = files.read_table(lay.retrieval / "overlap.parquet")
    self.curve = files.read_table(lay.retrieval / "curve.parquet")
    self.curves = {
        p.parent.name: pd.read_parquet(p) for p in sorted(lay.mlp.glob("*/curves.parquet"))
    }
    if self.cf is not None:
      val = self.cf[self.cf.fold == "val"]
      self.val = val
      run_json = lay.closed_form / "run.json"
      order = (
          json.loads(run_json.read_text())["models"]
          if run_json.exists()
          else list(val.target.unique())
      )
      self.models = [
          m for m in order if m in set(val[val.method == "ridge"].target) - {CONTROL_NAME}
      ]
      ridge = val[(val.method == "ridge") & val.chosen.astype(bool)]
      self.ridge = ridge
      self.ctrl = val[val.method.isin(["train_mean", "zero"]) & val.target.isin(self.models)]
      self.pair = self.between_models(ridge[ridge.metric == R2])
    return self

  def between_models(self, df: pd.DataFrame) -> pd.DataFrame:
    """The rows of `df` whose source and target are both models (no control).

    Args:
      df: a results table.

    Returns:
      Its rows between two of `self.models`.
    """
    return df[df.source.isin(self.models) & df.target.isin(self.models)]

  def control_mean(self, method: str, metric: str) -> float:
    """A control's val `metric`, averaged over the targets.

    Args:
      method: `train_mean` or `zero`.
      metric: the metric.

    Returns:
      The mean.
    """
    c = self.ctrl
    return c[(c.method == method) & (c.metric == metric)].value.mean()

  # ------------------------------------------------------------------ sections
  def cka_section(self):
    """The CKA heatmaps, the control comparison and the debiased CKA table."""
    if self.cka is None:
      return self.section(_CKA, self.p("No similarity stage output."))
    names = [str(n) for n in self.cka["names"]]
    f, axs = self.plt.subplots(1, 2, figsize=(11, 4.6))
    _heatmap(axs[0], self.cka["linear"], names, names, "linear CKA", vmin=0, vmax=1)
    _heatmap(axs[1], self.cka["debiased"], names, names, "debiased CKA", vmin=0, vmax=1)
    img = self.fig("cka.png", f)
    lin, deb = np.asarray(self.cka["linear"]), np.asarray(self.cka["debiased"])
    m = len(names) - (1 if names[-1] == CONTROL_NAME else 0)
    off = ~np.eye(m, dtype=bool)
    text = (
        f"Across {m} models, linear CKA averages {lin[:m, :m][off].mean():.3f} "
        f"(debiased {deb[:m, :m][off].mean():.3f}). Against the Gaussian control, linear CKA is "
        f"{lin[:m, -1].mean():.3f} — the finite-sample bias of the linear estimator — while debiased CKA "
        f"is {deb[:m, -1].mean():.4f}, i.e. chance is zero only for the debiased estimator."
    )
    self.summary.append(
        f"CKA: mean linear {lin[:m, :m][off].mean():.3f}, debiased {deb[:m, :m][off].mean():.3f}; "
        f"Gaussian control {lin[:m, -1].mean():.3f} / {deb[:m, -1].mean():.4f}"
    )
    tabs = {
        kind: pd.DataFrame(mat, columns=names).assign(model=names)[["model"] + names]
        for kind, mat in (("linear", lin), ("debiased", deb))
    }
    self.section(
        _CKA,
        img,
        self.p(text),
        self.table("cka_linear", "Linear CKA between every pair of spaces", tabs["linear"]),
        self.table(
            "cka_debiased",
            "Debiased CKA between every pair of spaces (chance is 0)",
            tabs["debiased"],
        ),
    )

  def calibrated_section(self):
    """Issue 17: permutation-calibrated CKA / mutual-kNN, the other measures, unsupervised
    alignment against supervised maps, and which conclusions survive calibration."""
    cal, uns = self.calibrated, self.unsupervised
    if cal is None and uns is None:
      return self.section(_CALIBRATED, self.p("No calibrated similarity output (null off)."))
    parts, summary = [], []
    if cal is not None and "linear/p_value" in cal:
      names = [str(n) for n in cal["names"]]
      stats = [("linear", "linear CKA"), ("debiased", "debiased CKA"), ("mutual_knn", "mKNN@k")]
      f, axs = self.plt.subplots(3, 3, figsize=(14, 13))
      for r, (key, label) in enumerate(stats):
        _heatmap(axs[r, 0], cal[f"{key}/observed"], names, names, f"{label} (raw)", vmin=0, vmax=1)
        _heatmap(
            axs[r, 1], cal[f"{key}/calibrated"], names, names, f"{label} calibrated", vmin=0, vmax=1
        )
        _heatmap(
            axs[r, 2],
            cal[f"{key}/p_value"],
            names,
            names,
            f"{label} permutation p-value",
            fmt="{:.3f}",
            cmap="magma",
            vmin=0,
            vmax=0.1,
        )
      parts.append(self.fig("calibrated.png", f))
      text, lines = self._calibration_text(cal, names, stats)
      parts.append(self.p(text))
      summary += lines
      parts.append(
          self.table(
              "measures",
              "Every measure per pair of spaces: raw, calibrated ((s − μ₀)/(1 − μ₀)) and "
              "permutation p for CKA and mKNN; CKNNA, SVCCA, PWCCA (weights in A's space, "
              "then B's), Procrustes angle (degrees) and RSA",
              self._measures_table(cal, names),
          )
      )
    if uns is not None and len(uns):
      text, tab = self._unsupervised_text(uns)
      parts += [
          self.p(text),
          self.table(
              "unsupervised",
              "Alignment without paired texts (mini-vec2vec style) against supervised "
              "Procrustes and ridge (ceiling) and a random rotation (floor): top-1 accuracy and "
              "mean rank of each val row's counterpart among all val rows of the target",
              tab,
          ),
      ]
      summary.append(text)
    self.summary += summary
    self.section(_CALIBRATED, *parts)

  @staticmethod
  def _calibration_text(cal, names, stats):
    m = len(names) - (1 if names[-1] == CONTROL_NAME else 0)
    iu = np.triu_indices(m, 1)
    first = next(iter(k for k in cal if k.endswith("/p_value")))
    p_min = np.nanmin(cal[first][iu]) if len(iu[0]) else np.nan
    sent, lines = [], []
    for key, label in stats:
      raw, c, p = (np.asarray(cal[f"{key}/{x}"])[iu] for x in ("observed", "calibrated", "p_value"))
      mu = np.asarray(cal[f"{key}/null_mean"])[iu]
      s = (
          f"{label}: model pairs average {raw.mean():.3f} raw, null mean {mu.mean():.4f}, "
          f"calibrated {c.mean():.3f}; {int((p <= 0.05).sum())}/{len(p)} pairs have p ≤ 0.05 "
          f"(smallest possible p {p_min:.4f})"
      )
      if m < len(names):
        cr, cc, cp = (
            np.asarray(cal[f"{key}/{x}"])[:m, -1] for x in ("observed", "calibrated", "p_value")
        )
        s += f"; against the Gaussian control {cr.mean():.4f} raw → {cc.mean():.4f} calibrated (mean p {cp.mean():.2f})"
      order_raw, order_cal = np.argsort(-raw), np.argsort(-c)
      if len(raw) > 1:
        rho = np.corrcoef(np.argsort(order_raw), np.argsort(order_cal))[0, 1]
        s += f"; rank correlation of pairs raw vs calibrated {rho:.2f}"
      sent.append(s + ".")
      lines.append(f"Calibrated {s}.")
    lin_c = np.asarray(cal["linear/calibrated"])[iu]
    lin_p = np.asarray(cal["linear/p_value"])[iu]
    mk_c = np.asarray(cal["mutual_knn/calibrated"])[iu]
    survive = (
        "Every between-model CKA and mKNN score is far outside its permutation null, so "
        "'these spaces share structure' survives calibration; "
        if (lin_p <= 0.05).all() and (np.asarray(cal["mutual_knn/p_value"])[iu] <= 0.05).all()
        else "Some between-model scores are inside their permutation null; "
    )
    survive += (
        f"what calibration removes is the floor: linear CKA's chance level (the null mean, "
        f"here {np.asarray(cal['linear/null_mean'])[iu].mean():.3f}) is subtracted, leaving "
        f"{lin_c.mean():.3f} of the way from chance to identity on average, against "
        f"{mk_c.mean():.3f} for mutual-kNN (whose chance level is ≈ k/N)."
    )
    ms = {k.split("/", 1)[1]: np.asarray(v) for k, v in cal.items() if k.startswith("measure/")}
    if ms and m < len(names) and len(iu[0]):
      deg = lambda k, v: np.degrees(v) if k == "procrustes_angle" else v
      floor = ", ".join(
          f"{k} {deg(k, v[:m, -1]).mean():.3f} (between models {deg(k, v[iu]).mean():.3f})"
          for k, v in ms.items()
      )
      survive += (
          " The other measures have no permutation null here; their chance floor, read off "
          f"the Gaussian control, is: {floor} (Procrustes angle in degrees, 90 = unrelated)."
      )
    return " ".join(sent) + " " + survive, lines

  @staticmethod
  def _measures_table(cal, names):
    rows = []
    for i in range(len(names)):
      for j in range(i + 1, len(names)):
        r = {"model_a": names[i], "model_b": names[j]}
        for key, short in (("linear", "cka"), ("debiased", "dcka"), ("mutual_knn", "mknn")):
          for part, suffix in (("observed", ""), ("calibrated", "_cal"), ("p_value", "_p")):
            if f"{key}/{part}" in cal:
              r[short + suffix] = float(cal[f"{key}/{part}"][i, j])
        ms = {k.split("/", 1)[1]: v for k, v in cal.items() if k.startswith("measure/")}
        if ms:
          r["cknna"] = float(ms["cknna"][i, j])
          r["svcca"] = float(ms["svcca"][i, j])
          r["pwcca_a"] = float(ms["pwcca"][i, j])
          r["pwcca_b"] = float(ms["pwcca"][j, i])
          r["procrustes_deg"] = float(np.degrees(ms["procrustes_angle"][i, j]))
          r["rsa"] = float(ms["rsa"][i, j])
        rows.append(r)
    return pd.DataFrame(rows)

  def _unsupervised_text(self, uns):
    models = [m for m in dict.fromkeys(list(uns.source) + list(uns.target)) if m != CONTROL_NAME]
    u = uns[uns.source.isin(models) & uns.target.isin(models)]
    tab = u.pivot_table(index=["source", "target"], columns="method", values=["top1", "mean_rank"])
    tab.columns = [f"{a}_{b}" for a, b in tab.columns]
    tab = tab.reset_index()
    mean = u.groupby("method")[["top1", "mean_rank"]].mean()
    n_val = int(u.n_val.iloc[0])
    get = lambda meth, col: float(mean.loc[meth, col]) if meth in mean.index else float("nan")
    best = u[u.method == "unsupervised"].sort_values("top1", ascending=False).head(1)
    text = (
        f"Without paired texts (mini-vec2vec style, PCA to k = {int(u.k.iloc[0])}), the "
        f"unsupervised maps reach a mean top-1 of {get('unsupervised', 'top1'):.3f} and mean "
        f"rank {get('unsupervised', 'mean_rank'):.0f} of {n_val} val rows over {len(tab)} "
        f"ordered pairs, against {get('procrustes', 'top1'):.3f} / "
        f"{get('procrustes', 'mean_rank'):.0f} for supervised Procrustes and "
        f"{get('ridge', 'top1'):.3f} / {get('ridge', 'mean_rank'):.0f} for ridge on the same "
        f"reduced rows, and {get('random', 'top1'):.4f} / {get('random', 'mean_rank'):.0f} for "
        f"a random rotation (chance: {1 / n_val:.4f} / {(n_val + 1) / 2:.0f})."
    )
    if len(best):
      text += (
          f" The best unsupervised pair is {best.source.iloc[0]}→{best.target.iloc[0]} "
          f"(top-1 {best.top1.iloc[0]:.3f})."
      )
    return text, tab

  def mappable_section(self):
    """Question 1: are the spaces linearly mappable (ridge against the controls)?"""
    title = "1. Are the spaces linearly mappable?"
    if self.cf is None:
      return self.section(title, self.p("No closed-form stage output."))
    ridge, models, ctrl, pair = self.ridge, self.models, self.ctrl, self.pair
    srcs = models + [CONTROL_NAME]
    rows = srcs + ["train_mean", "zero"]

    def grid(metric):
      g = _pivot(ridge[ridge.metric == metric], srcs, models)
      c = ctrl[ctrl.metric == metric].pivot_table(index="method", columns="target", values="value")
      return pd.concat([g, c.reindex(index=["train_mean", "zero"], columns=models)])

    lmse, r2 = grid("log10_mse"), grid(R2)
    f, axs = self.plt.subplots(1, 2, figsize=(11, 5))
    _heatmap(
        axs[0],
        lmse.values,
        rows,
        models,
        "log10 val MSE (ridge, chosen λ) + controls",
        cmap="magma_r",
    )
    _heatmap(
        axs[1], r2.values, rows, models, "val R² (variance-weighted) + controls", vmin=-0.2, vmax=1
    )
    img = self.fig("stitch_quality.png", f)
    mean_r2 = pair.value.mean()
    tm, zr = self.control_mean("train_mean", R2), self.control_mean("zero", R2)
    gs = ridge[(ridge.metric == R2) & (ridge.source == CONTROL_NAME)].value.mean()
    ret_txt = ""
    if self.stitched is not None:
      st = self.between_models(self.stitched[self.stitched.method == "ridge"])
      if len(st):
        ret_txt = (
            f" In retrieval, ridge-stitched corpora keep {st['retention_ndcg@10'].mean():.1%} of the "
            f"target's native nDCG@10 on average (range {st['retention_ndcg@10'].min():.1%}–"
            f"{st['retention_ndcg@10'].max():.1%})."
        )
    verdict = "Yes" if mean_r2 - tm > 0.5 else "Partly" if mean_r2 - tm > 0.05 else "Barely"
    q1 = (
        f"1. Are the spaces linearly mappable? {verdict}: ridge stitches reach a mean val R² of "
        f"{mean_r2:.3f} (range {pair.value.min():.3f}–{pair.value.max():.3f}) over {len(pair)} ordered pairs, "
        f"against {tm:.3f} for the true train-mean estimator, {zr:.3f} for the zero predictor and {gs:.3f} "
        f"for a Gaussian source stitched the same way." + ret_txt
    )
    self.summary.append(q1)
    mse_mean = self.between_models(ridge[ridge.metric == "mse"]).value.mean()
    zero_mse, tm_mse = self.control_mean("zero", "mse"), self.control_mean("train_mean", "mse")
    blog = (
        f'Where we differ from the blog: its "mean estimator" row had MSE 1/d for unit vectors, which is '
        f"the zero predictor (here mean MSE {zero_mse:.2e}). The true mean estimator predicts the train mean "
        f"(MSE {tm_mse:.2e}, R² ≈ 0 by construction), a much harder baseline; ridge stitches reach MSE "
        f"{mse_mean:.2e}. Beating the zero predictor says little; the margin over the mean estimator is the "
        f"real signal."
    )
    tab = (
        pair.pivot_table(index="source", columns="target", values="value")
        .reindex(index=models, columns=models)
        .rename_axis(columns=None)
        .reset_index()
    )
    self.section(
        title,
        img,
        self.p(q1),
        self.p(blog),
        self.table(
            "ridge_r2",
            "Val R² (variance-weighted) of the ridge stitches at the chosen λ: source (rows) → "
            "target (columns)",
            tab,
        ),
    )

  def asymmetry_section(self):
    """Question 3: is mapping from the larger space easier than into it?"""
    if self.cf is None:
      return
    ridge, models = self.ridge, self.models
    dims = dict(zip(ridge.source, ridge.source_dim)) | dict(zip(ridge.target, ridge.target_dim))
    r2m = self.pair.set_index(["source", "target"]).value
    asym = []
    for i, a in enumerate(models):
      for b in models[i + 1 :]:
        big, small = (a, b) if dims[a] >= dims[b] else (b, a)
        if (big, small) in r2m and (small, big) in r2m:
          asym.append(
              {
                  "large": big,
                  "small": small,
                  "d_large": dims[big],
                  "d_small": dims[small],
                  "r2_large_to_small": r2m[(big, small)],
                  "r2_small_to_large": r2m[(small, big)],
                  "diff": r2m[(big, small)] - r2m[(small, big)],
              }
          )
    asym = pd.DataFrame(asym)
    if not len(asym):
      return
    strict = asym[asym.d_large > asym.d_small]
    wins = int((strict["diff"] > 0).sum())
    q3 = (
        f"3. Is large→small easier than small→large? Over {len(strict)} pairs of unequal width, "
        f"large→small has the higher R² in {wins} (mean difference {strict['diff'].mean():+.3f}): "
        + (
            "mapping from the larger space is easier here."
            if 2 * wins > len(strict)
            else "here the larger space is not the easier source."
        )
        if len(strict)
        else "3. All models have equal width; see the table for direction effects."
    )
    self.summary.append(q3)
    self.section(
        "3. Is large→small easier than small→large?",
        self.p(q3),
        self.table(
            "asymmetry",
            "Val R² of the ridge stitches in each direction, per pair of models (larger first)",
            asym,
        ),
    )

  def rotation_section(self):
    """Question 4: are the stitches rotations (Procrustes, distance from orthogonal, spectra)?"""
    if self.cf is None:
      return
    val, ridge, pair = self.val, self.ridge, self.pair
    pro = self.between_models(val[(val.method == "procrustes") & (val.metric == R2)])
    orth = self.between_models(ridge[ridge.metric == "orth_dev"])
    spectra_img = self.spectra_figure()
    if not len(pro):
      return
    mean_r2 = pair.value.mean()
    rot = pro.value.mean() >= mean_r2 - 0.02 and orth.value.mean() < 0.1
    q4 = (
        f"4. Are the stitches rotations? {'Nearly' if rot else 'No'}: orthogonal Procrustes reaches a "
        f"mean val R² of {pro.value.mean():.3f} against {mean_r2:.3f} for ridge, and the ridge maps' "
        f"distance from orthogonal is ‖WᵀW − I‖_F/‖I‖_F = {orth.value.mean():.3f} on average "
        f"(range {orth.value.min():.3f}–{orth.value.max():.3f}; 0 for a rotation). The spectra "
        f"figure shows their singular values against 1."
    )
    self.summary.append(q4)
    self.section(
        "4. Are the stitches rotations?",
        spectra_img,
        self.p(q4),
        self.table(
            "procrustes_vs_ridge",
            "Val R² (variance-weighted) of orthogonal Procrustes and of ridge, per ordered pair",
            pd.DataFrame(
                {
                    "source": pro.source.values,
                    "target": pro.target.values,
                    "procrustes_r2": pro.value.values,
                }
            ).merge(pair[["source", "target", "value"]].rename(columns={"value": "ridge_r2"})),
        ),
    )

  def mean_estimator_section(self):
    """Question 5: are the stitches secretly mean estimators (bias against the target mean)?"""
    if self.cf is None:
      return
    br = self.between_models(self.ridge[self.ridge.metric == "bias_ratio"])
    if not len(br):
      return
    tm = self.control_mean("train_mean", R2)
    gain = self.pair.value.mean() - tm
    q5 = (
        f"5. Are the stitches secretly mean estimators? {'No' if gain > 0.05 else 'Largely'}: "
        f"‖b‖/‖μ_B‖ averages {br.value.mean():.3f} (range {br.value.min():.3f}–{br.value.max():.3f}), so "
        f"the bias carries most of the target mean, and the stitches beat the train-mean estimator's R² "
        f"of {tm:.3f} by {gain:+.3f} on average; that margin is what W adds beyond the mean."
    )
    self.summary.append(q5)
    self.section(
        "5. Are the stitches secretly mean estimators?",
        self.p(q5),
        self.table(
            "bias_ratio",
            "‖b‖ / ‖μ_B‖: the norm of each ridge stitch's bias over its target's train-mean norm",
            br[["source", "target", "value"]].rename(
                columns={"value": "bias_norm_over_target_mean_norm"}
            ),
        ),
    )

  def spectra_figure(self):
    """The singular-value spectra of the saved ridge stitches (control pairs left out).

    Returns:
      The figure's `<img>` tag, or "" without saved stitches.
    """
    sj = self.layout.closed_form / "stitches.json"
    if not sj.exists():
      return ""
    from lead_jax.stitch import io

    tree, info = io.load_stitches(self.layout.closed_form)
    f, ax = self.plt.subplots(figsize=(7, 4))
    for it in info:
      if it["source"] == CONTROL_NAME or it["target"] == CONTROL_NAME:
        continue
      s = np.linalg.svd(np.asarray(tree[it["key"]]["W"], np.float64), compute_uv=False)
      ax.semilogy(s, lw=1, label=f"{_short(it['source'])}→{_short(it['target'])}")
    ax.axhline(1.0, color="k", ls=":", lw=1)
    ax.set_xlabel("index")
    ax.set_ylabel("singular value of W")
    ax.set_title("singular-value spectra of the ridge stitches (1 = rotation)")
    ax.legend(fontsize=6, ncol=2)
    return self.fig("spectra.png", f)

  def retrieval_section(self):
    """The nDCG@10 retention heatmap, native retrieval and overlap tables."""
    if self.stitched is None or self.native is None:
      return self.section(_RETRIEVAL, self.p("No retrieval stage output."))
    st = self.stitched[self.stitched.method == "ridge"]
    models = self.models if self.cf is not None else sorted(set(st.target))
    srcs = models + [CONTROL_NAME]
    g = st.pivot_table(index="source", columns="target", values="retention_ndcg@10").reindex(
        index=srcs, columns=models
    )
    f, ax = self.plt.subplots(figsize=(6, 5))
    _heatmap(
        ax, g.values, srcs, models, "nDCG@10 retention (ridge stitch / native)", vmin=0, vmax=1
    )
    img = self.fig("retention.png", f)
    nat = self.native[["model", "dim", "ndcg@10", "recall@10", "mrr@10"]]
    best = (
        st[st.source.isin(models) & st.target.isin(models)]
        .sort_values("retention_ndcg@10", ascending=False)
        .head(1)
    )
    text = f"Native nDCG@10 ranges {nat['ndcg@10'].min():.3f}–{nat['ndcg@10'].max():.3f}. " + (
        f"The best-kept pair is {best.source.iloc[0]}→{best.target.iloc[0]} at "
        f"{best['retention_ndcg@10'].iloc[0]:.1%}."
        if len(best)
        else ""
    )
    parts = [
        img,
        self.p(text),
        self.table("native_retrieval", "Native retrieval of each model on its own corpus", nat),
        self.table(
            "retention",
            "nDCG@10 retention of ridge-stitched corpora (stitched / native): source (rows) → "
            "target (columns)",
            g.reset_index(),
        ),
    ]
    if self.overlap is not None:
      parts.append(
          self.table(
              "overlap",
              "Overlap of the models' native rankings (Jaccard@k, RankSim@k) and mutual-kNN@k of "
              "their corpus rows",
              self.overlap,
              show=True,
          )
      )
    self.section(_RETRIEVAL, *parts)

  def curve_section(self):
    """The calibration-size curve: retention and R² of ridge fitted on K train texts."""
    if self.curve is None or not len(self.curve):
      return self.section(_CURVE, self.p("No calibration-size curve (retrieval.curve_sizes)."))
    c = self.curve.assign(pair=lambda d: d.source.map(_short) + "→" + d.target.map(_short))
    ks = sorted(c.k.unique())
    mean = c.groupby("k")[["retention_ndcg@10", "val_r2_vw"]].mean()
    f, axs = self.plt.subplots(1, 2, figsize=(11, 4))
    for ax, col, label in (
        (axs[0], "retention_ndcg@10", "nDCG@10 retention (stitched / native)"),
        (axs[1], "val_r2_vw", "val R² (variance-weighted)"),
    ):
      for pair, g in c.groupby("pair"):
        ax.plot(g.k, g[col], lw=0.8, alpha=0.5, label=pair)
      ax.plot(mean.index, mean[col], "ko-", lw=2, label="mean over pairs")
      ax.set_xscale("log")
      ax.set_xticks(ks, [f"{k:,}" for k in ks])
      ax.minorticks_off()
      ax.set_xlabel("K: train texts the ridge stitch is fitted on")
      ax.set_ylabel(label)
      ax.set_title(label + " vs K")
    axs[1].legend(fontsize=6, ncol=2)
    img = self.fig("curve.png", f)
    tabs = {
        col: c.pivot_table(index="pair", columns="k", values=col)
        .reindex(columns=ks)
        .rename(columns=lambda k: f"K={k}")
        .reset_index()
        for col in ("retention_ndcg@10", "val_r2_vw")
    }
    lo, hi = mean.iloc[0], mean.iloc[-1]
    text = (
        f"Mean over {c.pair.nunique()} ordered pairs, ridge with λ chosen on val at each K: "
        f"nDCG@10 retention {lo['retention_ndcg@10']:.3f} at K={ks[0]} → "
        f"{hi['retention_ndcg@10']:.3f} at K={ks[-1]}; val R² {lo['val_r2_vw']:.3f} → "
        f"{hi['val_r2_vw']:.3f}."
    )
    if len(ks) > 1:
      prev = mean.iloc[-2]
      gain = hi["val_r2_vw"] - prev["val_r2_vw"]
      text += (
          f" The last step (K={ks[-2]} → {ks[-1]}) adds {gain:+.3f} R² and "
          f"{hi['retention_ndcg@10'] - prev['retention_ndcg@10']:+.3f} retention: "
          + (
              "the linear stitches are close to what more paired texts can give them here."
              if gain < 0.01
              else "still rising, so more paired texts would make linear stitches better."
          )
      )
    self.summary.append("Calibration curve: " + text)
    self.section(
        _CURVE,
        img,
        self.p(text),
        self.table(
            "curve_retention",
            "nDCG@10 retention of the ridge stitch fitted on K train texts: pair (rows) × K "
            "(columns)",
            tabs["retention_ndcg@10"],
        ),
        self.table(
            "curve_r2",
            "Val R² (variance-weighted) of the ridge stitch fitted on K train texts: pair (rows) "
            "× K (columns)",
            tabs["val_r2_vw"],
        ),
    )

  def mlp_section(self):
    """Question 2: the depth curve and the MLP loss curves."""
    if self.mlp is None:
      return self.section(_Q2, self.p("No MLP stage output."))
    val = self.mlp[self.mlp.fold == "val"] if "fold" in self.mlp else self.mlp
    mlp_rows = val[val.method.str.startswith("mlp_")]
    models = self.models if self.cf is not None else sorted(set(mlp_rows.target))
    by_depth = (
        mlp_rows[
            (mlp_rows.metric == R2) & mlp_rows.source.isin(models) & mlp_rows.target.isin(models)
        ]
        .assign(depth=lambda d: d.method.str.extract(r"mlp_d(\d+)_")[0].astype(int))
        .groupby("depth")
        .value.agg(["mean", "min", "max"])
        .reset_index()
    )
    f, axs = self.plt.subplots(1, 2, figsize=(11, 4))
    axs[0].plot(by_depth.depth, by_depth["mean"], "o-", label="MLP (mean over pairs)")
    if self.cf is not None:
      r = self.ridge[
          (self.ridge.metric == R2)
          & self.ridge.source.isin(models)
          & self.ridge.target.isin(models)
      ].value.mean()
      axs[0].axhline(r, color="C1", ls="--", label=f"closed-form ridge {r:.3f}")
    axs[0].axhline(0, color="k", ls=":", lw=1, label="train-mean estimator (0)")
    axs[0].set_xlabel("depth (nonlinearities)")
    axs[0].set_ylabel("val R² (variance-weighted)")
    axs[0].set_title("depth curve")
    axs[0].legend(fontsize=8)
    for name, c in self.curves.items():
      v = c[c.split == "val"].groupby("step").loss.mean()
      axs[1].plot(v.index, v.values, label=f"{name} val")
      t = c[c.split == "train"].groupby("step").loss.mean()
      axs[1].plot(t.index, t.values, ls=":", label=f"{name} train")
    axs[1].set_yscale("log")
    axs[1].set_xlabel("step")
    axs[1].set_title("MLP loss curves (mean over pairs)")
    axs[1].legend(fontsize=7)
    img = self.fig("mlp.png", f)
    q2 = "2. How much does depth help? "
    if len(by_depth):
      d0 = by_depth[by_depth.depth == by_depth.depth.min()]["mean"].iloc[0]
      best = by_depth.loc[by_depth["mean"].idxmax()]
      q2 += "Mean val R² by depth: " + ", ".join(
          f"d{int(row['depth'])} {row['mean']:.3f}" for row in by_depth.to_dict("records")
      )
      q2 += f". The best depth is {int(best.depth)}"
      if int(by_depth.depth.min()) == 0:
        q2 += f", {best['mean'] - d0:+.3f} over the affine GD map (depth 0)"
      if self.cf is not None:
        q2 += f", {best['mean'] - r:+.3f} over closed-form ridge ({r:.3f})"
      gain = best["mean"] - (r if self.cf is not None else d0)
      q2 += (
          ": on this data nonlinearity buys little over a linear map."
          if gain < 0.02
          else ": depth helps on this data."
      )
    self.summary.append(q2)
    self.section(
        _Q2,
        img,
        self.p(q2),
        self.table(
            "depth",
            "Val R² (variance-weighted) of the MLP stitches by depth: mean, min and max over "
            "ordered pairs",
            by_depth,
        ),
    )

  # ------------------------------------------------------------------ output
  def write(self):
    """Loads the run, builds every section and writes index.html and summary.txt.

    Returns:
      The index.html path.
    """
    self.load()
    for s in (  # the study's questions in order, between CKA and retrieval
        self.cka_section,
        self.calibrated_section,
        self.mappable_section,  # 1
        self.mlp_section,  # 2
        self.asymmetry_section,  # 3
        self.rotation_section,  # 4
        self.mean_estimator_section,  # 5
        self.retrieval_section,
        self.curve_section,
    ):
      s()
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}"
        "img{max-width:100%;border:1px solid #ddd;margin:.5em 0}"
        "table.t{border-collapse:collapse;font-size:12px;margin:.5em 0}"
        "table.t td,table.t th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        "table.t caption{text-align:left;font-weight:bold;padding:4px 0}"
    )
    info = {}
    rj = self.layout.closed_form / "run.json"
    if rj.exists():
      info = json.loads(rj.read_text())
    head = (
        f"<h1>lead_jax report: {html.escape(str(info.get('dataset', self.run.name)))}</h1>"
        f"<p>Models: {html.escape(', '.join(info.get('models', [])))}. All numbers are on the held-out "
        f"val split unless marked; R² is variance-weighted (per-dimension average R² is in the CSVs).</p>"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>lead_jax report</title>"
        f"<style>{style}</style></head><body>{head}{''.join(self.sections)}</body></html>"
    )
    (self.out / "index.html").write_text(page, encoding="utf-8")
    (self.out / "summary.txt").write_text("\n".join(self.summary) + "\n", encoding="utf-8")
    return self.out / "index.html"


def build(run_dir) -> pathlib.Path:
  """Writes the report of a run and returns its index.html path.

  Args:
    run_dir: a `RunLayout`, or a run directory.

  Returns:
    `<run>/report/index.html`.
  """
  return Report(run_dir).write()
