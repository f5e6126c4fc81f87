"""The study's stages as library functions over one config and one run layout.

    from lead_jax import config, pipeline
    cfg = config.StudyConfig(out="/tmp/run")
    pipeline.run_stages(cfg)                      # what experiments/run_all.py does

Each stage is `run(cfg, layout)` in its own module (embed, similarity, closed_form, mlp,
retrieval, translate) or `report`; `STAGES` names them in the order of the data flow.
`run_stages` writes the resolved config to `<out>/config.json` and, after each stage
returns, a marker `<out>/.stages/<stage>.json` holding the config sections that stage
depends on (`DEPENDS`). A stage whose marker matches the config is skipped; anything it
depends on changing reruns it (and, through their own dependencies, the stages after
it). A stage killed midway has no marker and resumes from what it left (embedding at
its last committed block, MLP training at its last Orbax checkpoint).
"""

from __future__ import annotations

import json
import os
import socket
import time

from absl import logging

from lead_jax import config as config_lib
from lead_jax import distributed, files
from lead_jax.config import StudyConfig
from lead_jax.layout import RunLayout
from lead_jax.pipeline import _common

__all__ = ["DEPENDS", "RunLayout", "run_stage", "run_stages", "stage"]

# The embedded arrays depend on these; every stage's outputs depend on the arrays. (The
# embed section is in for its store dtype and weights options: a change reruns everything
# downstream rather than leaving results of other arrays.)
_DATA = ("dataset", "models", "store", "data", "embed")
# The config sections each stage's outputs depend on (mesh and stages never change results).
DEPENDS = {
    "embed": _DATA,
    "similarity": _DATA + ("control", "cka", "null", "measures", "unsupervised"),
    "closed_form": _DATA + ("control", "closed_form"),
    "mlp": _DATA + ("control", "mlp"),
    "retrieval": _DATA + ("control", "closed_form", "mlp", "retrieval"),
    "translate": _DATA + ("control", "closed_form", "mlp", "translate"),
    "report": _DATA
    + ("control", "cka", "null", "measures", "unsupervised")
    + ("closed_form", "mlp", "retrieval"),
}


def _report(cfg: StudyConfig, layout: RunLayout):
  from lead_jax import report

  return str(report.build(layout))


def stage(name: str):
  """The stage function `name(cfg, layout) -> summary`.

  Args:
    name: a stage of `DEPENDS` (or `report`).

  Returns:
    The stage's `run(cfg, layout, **kw)`, imported on demand.

  Raises:
    ValueError: `name` is not a stage.
  """
  if name == "report":
    return _report
  if name not in DEPENDS:
    raise ValueError(f"unknown stage {name!r}; known: {list(DEPENDS)}")
  import importlib

  return importlib.import_module(f"lead_jax.pipeline.{name}").run


def stage_config(cfg: StudyConfig, name: str) -> dict:
  """The part of the config that stage `name`'s outputs depend on, as JSON data.

  Args:
    cfg: the study config.
    name: the stage.

  Returns:
    `{section: dict}` for each section of `DEPENDS[name]`.
  """
  d = config_lib.to_dict(cfg)
  return {k: d[k] for k in DEPENDS[name]}


def is_done(cfg: StudyConfig, layout: RunLayout, name: str) -> bool:
  """Whether stage `name` has a marker recorded with this config's sections.

  Args:
    cfg: the study config.
    layout: the run layout holding the markers.
    name: the stage.

  Returns:
    True when the marker exists and its config equals `stage_config(cfg, name)`.
  """
  marker = files.read_json(layout.marker(name), missing_ok=True)
  return bool(marker) and marker.get("config") == stage_config(cfg, name)


def mark_done(cfg: StudyConfig, layout: RunLayout, name: str, seconds: float) -> None:
  """Writes stage `name`'s marker (process 0): its config sections and run time.

  Args:
    cfg: the study config.
    layout: the run layout holding the markers.
    name: the stage.
    seconds: how long the stage ran.
  """
  if distributed.is_writer():
    # hosts may share <out>: a per-host temporary name, then an atomic rename
    path = layout.marker(name)
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps({"config": stage_config(cfg, name), "seconds": round(seconds, 1)}))
    os.replace(tmp, path)


def write_config(cfg: StudyConfig, layout: RunLayout) -> None:
  """Writes the resolved config to `<out>/config.json` (process 0).

  Args:
    cfg: the study config.
    layout: the run layout.
  """
  if distributed.is_writer():
    files.write_json(layout.config_json, config_lib.to_dict(cfg))


def run_stage(cfg: StudyConfig, name: str, layout: RunLayout | None = None, **kw):
  """Runs one stage (no marker check); what each binary in experiments/ calls.

  Starts jax.distributed as `cfg.mesh` says, writes `config.json`, runs the stage and
  marks it done, so that a later `run_all` with the same config skips it.

  Args:
    cfg: the study config.
    name: the stage (see `stage`); `translate` is run but not marked.
    layout: the run layout; default `RunLayout.from_config(cfg)`.
    **kw: passed to the stage function.

  Returns:
    The stage's summary.
  """
  config_lib.validate(cfg)
  _common.initialize(cfg)
  layout = layout or RunLayout.from_config(cfg)
  write_config(cfg, layout)
  t0 = time.time()
  out = stage(name)(cfg, layout, **kw)
  if name != "translate":
    mark_done(cfg, layout, name, time.time() - t0)
  return out


def run_stages(cfg: StudyConfig, force: bool = False) -> dict:
  """Runs `cfg.stages` in order, skipping those already done with this config.

  Args:
    cfg: the study config.
    force: rerun every stage even when its marker matches.

  Returns:
    `{"out", "report", "stage_seconds", "total_seconds"}`.
  """
  config_lib.validate(cfg)
  _common.initialize(cfg)
  layout = RunLayout.from_config(cfg)
  write_config(cfg, layout)
  t0, timings = time.time(), {}
  names = [s for s in config_lib.STAGES if s in cfg.stages]
  for i, name in enumerate(names):
    if not force and is_done(cfg, layout, name):
      logging.info("[%s] complete, skipping (delete %s to rerun)", name, layout.marker(name))
      timings[name] = 0.0
      continue
    logging.info(
        "=== stage %d/%d: %s (%.0fs elapsed) ===", i + 1, len(names), name, time.time() - t0
    )
    t1 = time.time()
    stage(name)(cfg, layout)
    distributed.barrier(f"stage:{name}")
    mark_done(cfg, layout, name, time.time() - t1)
    timings[name] = round(time.time() - t1, 1)
    logging.info("[%s] done in %.1fs", name, timings[name])
  return {
      "out": str(layout.root),
      "report": str(layout.report / "index.html"),
      "stage_seconds": timings,
      "total_seconds": round(time.time() - t0, 1),
  }
