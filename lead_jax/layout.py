"""`RunLayout`: the name of every file of a run directory, in one place.

<out>/
  config.json                 the resolved StudyConfig of the last run (lead_jax.config)
  .stages/<stage>.json        stage markers: the config sections the stage ran with
  store/                      embeddings, unless config.store names another root
  similarity/cka.npz|parquet|csv
  closed_form/results.parquet|csv, stitches/ (Orbax), stitches.json, run.json
  mlp/d{depth}_{objective}/   Orbax CheckpointManager directory + curves.parquet|csv
  mlp_results.parquet|csv
  retrieval/native|overlap|stitched|translated.parquet|csv, run.json
  report/index.html, summary.txt, *.png, *.csv
"""

from __future__ import annotations

import dataclasses
import pathlib


@dataclasses.dataclass(frozen=True)
class RunLayout:
  """Paths of one run directory; every stage and the report name files through it."""

  root: pathlib.Path
  store_root: str  # a path or a TensorStore URL (gs://, file://, memory://)

  @classmethod
  def from_config(cls, cfg) -> RunLayout:
    """The layout of `cfg.out`, with the store at `cfg.store` or `<out>/store`."""
    root = pathlib.Path(cfg.out)
    return cls(root, cfg.store or str(root / "store"))

  @classmethod
  def of(cls, root, store_root: str = "") -> RunLayout:
    root = pathlib.Path(root)
    return cls(root, store_root or str(root / "store"))

  @property
  def config_json(self) -> pathlib.Path:
    return self.root / "config.json"

  def marker(self, stage: str) -> pathlib.Path:
    return self.root / ".stages" / f"{stage}.json"

  @property
  def similarity(self) -> pathlib.Path:
    return self.root / "similarity"

  @property
  def closed_form(self) -> pathlib.Path:
    return self.root / "closed_form"

  @property
  def closed_form_results(self) -> pathlib.Path:
    return self.closed_form / "results.parquet"

  @property
  def mlp(self) -> pathlib.Path:
    return self.root / "mlp"

  def mlp_run(self, depth: int, objective: str) -> pathlib.Path:
    return self.mlp / f"d{depth}_{objective}"

  @property
  def mlp_results(self) -> pathlib.Path:
    return self.root / "mlp_results.parquet"

  @property
  def retrieval(self) -> pathlib.Path:
    return self.root / "retrieval"

  @property
  def report(self) -> pathlib.Path:
    return self.root / "report"

  def stitch_dirs(self) -> list[pathlib.Path]:
    """The run's stitch checkpoint directories: `closed_form/` and every `mlp/*/` run."""
    out = [self.closed_form] if (self.closed_form / "stitches.json").exists() else []
    if self.mlp.is_dir():
      out += sorted(
          p for p in self.mlp.iterdir() if p.is_dir() and any(c.name.isdigit() for c in p.iterdir())
      )
    return out
