"""Imports follow the data flow: no module imports a layer above its own.

    data → encoders → store → similarity → stitch → eval → report → pipeline → migrate

(migrate, moving real vector stores, is an application of the engine: it reuses the
embed stage's encoders and row builder, so it sits above pipeline, and nothing imports it.)

with the neutral modules (config, errors, files, numerics, distributed, layout) below them all.
Every `import lead_jax…` in the package, at module level or inside a function, counts.
"""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "lead_jax"
LAYERS = [
    {"config", "errors", "files", "logs", "numerics", "distributed", "layout"},
    {"data"},
    {"encoders"},
    {"store"},
    {"similarity"},
    {"stitch"},
    {"eval"},
    {"report"},
    {"pipeline"},
    {"migrate"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _top(module: str) -> str:
  return module.split(".")[1] if module.count(".") else "__init__"


def _imports(path: pathlib.Path):
  tree = ast.parse(path.read_text(), str(path))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      names = names if node.module != "lead_jax" else [f"lead_jax.{a.name}" for a in node.names]
    else:
      continue
    for n in names:
      if n.startswith("lead_jax.") and _top(n) in RANK:
        yield node.lineno, _top(n)


def _modules():
  return sorted(p for p in PKG.rglob("*.py"))


def test_every_package_module_has_a_layer():
  tops = {p.relative_to(PKG).parts[0].removesuffix(".py") for p in _modules()} - {"__init__"}
  assert tops <= set(RANK), f"modules without a layer: {sorted(tops - set(RANK))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_no_upward_import(path):
  own = path.relative_to(PKG).parts[0].removesuffix(".py")
  if own == "__init__":
    return
  bad = [
      f"{path.relative_to(PKG.parent)}:{line} imports lead_jax.{top} (layer {RANK[top]} > {RANK[own]})"
      for line, top in _imports(path)
      if RANK[top] > RANK[own]
  ]
  assert not bad, "\n".join(bad)


def test_the_check_can_fail(tmp_path):
  """The walker sees function-level imports, and a store module importing stitch is caught."""
  p = tmp_path / "x.py"
  p.write_text("def f():\n  from lead_jax.stitch import mlp\n  import lead_jax.eval.retrieval\n")
  assert [t for _, t in _imports(p)] == ["stitch", "stitch", "eval"]
  assert RANK["stitch"] > RANK["store"]


def test_no_flags_in_the_library():
  hits = [str(p) for p in _modules() if "flags.DEFINE" in p.read_text()]
  assert not hits, f"absl flags are defined in binaries only: {hits}"
