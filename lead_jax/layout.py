"""`RunLayout`: the name of every file of a run directory, in one place.

<out>/
  config.json                 the resolved StudyConfig of the last run (lead_jax.config)
  .stages/<stage>.json        stage markers: the config sections the stage ran with
  store/                      embeddings, unless config.store names another root
  similarity/cka.npz|parquet|csv
  closed_form/results.parquet|csv, stitches/ (Orbax), stitches.json, run.json
  mlp/d{depth}_{objective}/   Orbax CheckpointManager directory + curves.parquet|csv
  mlp_results.parquet|csv
  retrieval/native|overlap|stitched|translated|curve.parquet|csv, run.json
  report/index.html, summary.txt, *.png, *.csv
"""

from __future__ import annotations

import dataclasses
import pathlib


@dataclasses.dataclass(frozen=True)
class RunLayout:
  """Paths of one run directory; every stage and the report name files through it.

  Attributes:
    root: the run directory (`<out>`).
    store_root: the embedding store, a path or a TensorStore URL (gs://, file://, memory://).
  """

  root: pathlib.Path
  store_root: str  # a path or a TensorStore URL (gs://, file://, memory://)

  @classmethod
  def from_config(cls, cfg) -> RunLayout:
    """The layout of `cfg.out`, with the store at `cfg.store` or `<out>/store`.

    Args:
      cfg: a config with `out` (the run directory) and `store` (empty for the default).

    Returns:
      The run's `RunLayout`.
    """
    root = pathlib.Path(cfg.out)
    return cls(root, cfg.store or str(root / "store"))

  @classmethod
  def of(cls, root, store_root: str = "") -> RunLayout:
    """The layout of the run directory `root`.

    Args:
      root: the run directory.
      store_root: the embedding store; empty for `<root>/store`.

    Returns:
      The run's `RunLayout`.
    """
    root = pathlib.Path(root)
    return cls(root, store_root or str(root / "store"))

  @property
  def config_json(self) -> pathlib.Path:
    """`config.json`: the resolved `StudyConfig` of the last run."""
    return self.root / "config.json"

  def marker(self, stage: str) -> pathlib.Path:
    """The marker file of one stage, holding the config sections it ran with.

    Args:
      stage: the stage name.

    Returns:
      `.stages/<stage>.json`.
    """
    return self.root / ".stages" / f"{stage}.json"

  @property
  def similarity(self) -> pathlib.Path:
    """`similarity/`: the CKA tables."""
    return self.root / "similarity"

  @property
  def closed_form(self) -> pathlib.Path:
    """`closed_form/`: results, stitches (Orbax), stitches.json and run.json."""
    return self.root / "closed_form"

  @property
  def closed_form_results(self) -> pathlib.Path:
    """`closed_form/results.parquet`."""
    return self.closed_form / "results.parquet"

  @property
  def mlp(self) -> pathlib.Path:
    """`mlp/`: one directory per MLP stitch run."""
    return self.root / "mlp"

  def mlp_run(self, depth: int, objective: str) -> pathlib.Path:
    """The directory of one MLP stitch run (Orbax checkpoints and curves).

    Args:
      depth: the MLP depth.
      objective: the training objective's name.

    Returns:
      `mlp/d{depth}_{objective}`.
    """
    return self.mlp / f"d{depth}_{objective}"

  @property
  def mlp_results(self) -> pathlib.Path:
    """`mlp_results.parquet`."""
    return self.root / "mlp_results.parquet"

  @property
  def retrieval(self) -> pathlib.Path:
    """`retrieval/`: the native, overlap, stitched and translated tables."""
    return self.root / "retrieval"

  @property
  def report(self) -> pathlib.Path:
    """`report/`: index.html, summary.txt, figures and CSVs."""
    return self.root / "report"

  def stitch_dirs(self) -> list[pathlib.Path]:
    """The run's stitch checkpoint directories: `closed_form/` and every `mlp/*/` run.

    Returns:
      `closed_form/` when it holds `stitches.json`, then each `mlp/*/` directory holding a
      numbered checkpoint, sorted.
    """
    out = [self.closed_form] if (self.closed_form / "stitches.json").exists() else []
    if self.mlp.is_dir():
      out += sorted(
          p for p in self.mlp.iterdir() if p.is_dir() and any(c.name.isdigit() for c in p.iterdir())
      )
    return out
