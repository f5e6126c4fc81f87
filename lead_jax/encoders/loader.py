"""Load a local HF / sentence-transformers encoder directory into Flax.

  enc = load_hf_encoder("~/.cache/lead_jax/models/all-MiniLM-L6-v2")
  ids, mask = enc.tokenize(["a text", "another"])
  emb = jax.jit(enc.embed_fn)(enc.params, ids, mask)      # [B, D], not normalized
  if enc.normalize: emb = l2_normalize(emb)

Nothing is fetched from a hub. Weights come from model.safetensors (or a
sharded model.safetensors.index.json); a pickle-only directory
(pytorch_model.bin) is refused unless allow_pickle=True, and even then it is
read with torch.load(weights_only=True).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import pathlib
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lead_jax.encoders import pooling as pooling_lib
from lead_jax.encoders.pooling import DenseSpec, PoolingSpec
from lead_jax.files import read_json, sha256_files
from lead_jax.numerics import l2_normalize  # re-exported: callers normalise `embed_fn` outputs

__all__ = [
    "LoadedEncoder",
    "load_hf_encoder",
    "l2_normalize",
    "register_architecture",
    "architecture_module",
    "load_state_dict",
]

# --------------------------------------------------------------------------- registry

# HF config model_type -> module path. Modules are imported lazily, on first use.
_ARCHITECTURES: dict[str, str] = {}


def register_architecture(model_type: str, module_path: str) -> None:
  """Maps an HF `model_type` to a module that follows the architecture contract.

  The module defines a frozen config dataclass with `from_hf_config`, a flax
  Module `(input_ids, attention_mask) -> [B, L, H]`, `params_from_hf(state,
  config)` and `MODEL_TYPES`. It is imported on first use.

  Args:
    model_type: the `model_type` of HF `config.json` files.
    module_path: the dotted module name.

  Raises:
    ValueError: `model_type` is already registered.
  """
  if model_type in _ARCHITECTURES:
    raise ValueError(
        f"model_type {model_type!r} already registered to {_ARCHITECTURES[model_type]}"
    )
  _ARCHITECTURES[model_type] = module_path


register_architecture("bert", "lead_jax.encoders.bert")
register_architecture("xlm-roberta", "lead_jax.encoders.xlm_roberta")
register_architecture("roberta", "lead_jax.encoders.xlm_roberta")
register_architecture("mpnet", "lead_jax.encoders.mpnet")
register_architecture("t5", "lead_jax.encoders.t5")


def _public_classes(mod: ModuleType) -> list[type]:
  return [
      v
      for k, v in vars(mod).items()
      if isinstance(v, type) and not k.startswith("_") and v.__module__ == mod.__name__
  ]


def architecture_module(model_type: str) -> tuple[ModuleType, type, type[nn.Module]]:
  """Imports the module registered for `model_type` and finds its classes.

  The classes are `CONFIG_CLASS` / `MODEL_CLASS` when the module defines them;
  otherwise the one public class there with `from_hf_config`, and the one
  public flax Module whose name ends in "Model".

  Args:
    model_type: an HF `model_type`.

  Returns:
    (module, config class, flax model class).

  Raises:
    ValueError: the type is not registered, or the module breaks the contract.
  """
  if model_type not in _ARCHITECTURES:
    raise ValueError(f"model_type {model_type!r} not supported; known: {sorted(_ARCHITECTURES)}")
  mod = importlib.import_module(_ARCHITECTURES[model_type])
  if model_type not in getattr(mod, "MODEL_TYPES", ()):
    raise ValueError(
        f"{mod.__name__}.MODEL_TYPES={getattr(mod, 'MODEL_TYPES', None)} lacks {model_type!r}"
    )
  classes = _public_classes(mod)
  cfg_cls = getattr(mod, "CONFIG_CLASS", None)
  if cfg_cls is None:
    found = [c for c in classes if hasattr(c, "from_hf_config")]
    if len(found) != 1:
      raise ValueError(
          f"{mod.__name__}: expected one config class with from_hf_config, found {found}"
      )
    cfg_cls = found[0]
  model_cls = getattr(mod, "MODEL_CLASS", None)
  if model_cls is None:
    found = [c for c in classes if issubclass(c, nn.Module) and c.__name__.endswith("Model")]
    if len(found) != 1:
      raise ValueError(f"{mod.__name__}: expected one flax Module named *Model, found {found}")
    model_cls = found[0]
  return mod, cfg_cls, model_cls


# --------------------------------------------------------------------------- files

_PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def _shards(index_path: pathlib.Path) -> list[pathlib.Path]:
  weight_map = read_json(index_path).get("weight_map")
  if not isinstance(weight_map, dict) or not weight_map:
    raise ValueError(f"{index_path}: no weight_map")
  return [index_path.parent / f for f in sorted(set(weight_map.values()))]


def weight_files(
    model_dir: str | pathlib.Path, *, allow_pickle: bool = False
) -> list[pathlib.Path]:
  """The weight file(s) of a directory: safetensors preferred, pickle only when allowed.

  Args:
    model_dir: the directory.
    allow_pickle: accept `pytorch_model.bin` (or its shard index) when no safetensors exist.

  Returns:
    The files, shards in name order.

  Raises:
    PermissionError: only a pickle is present and `allow_pickle` is False.
    FileNotFoundError: no weights at all.
    ValueError: a shard index without a `weight_map`.
  """
  d = pathlib.Path(model_dir)
  if (d / "model.safetensors").exists():
    return [d / "model.safetensors"]
  if (d / "model.safetensors.index.json").exists():
    return _shards(d / "model.safetensors.index.json")
  pickled = [d / n for n in _PICKLE_NAMES if (d / n).exists()]
  if pickled:
    if not allow_pickle:
      raise PermissionError(
          f"{pickled[0]}: only a pickled PyTorch checkpoint is present (no model.safetensors). "
          "Loading pickles can run code; pass allow_pickle=True (CLI: --allow_pickle) to read it "
          "with torch.load(weights_only=True), or convert it to model.safetensors."
      )
    return [pickled[0]] if pickled[0].name == "pytorch_model.bin" else _shards(pickled[0])
  raise FileNotFoundError(
      f"{d}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
  )


def _load_one(path: pathlib.Path) -> dict[str, np.ndarray]:
  if path.suffix == ".safetensors":
    from safetensors import safe_open

    try:
      from safetensors.numpy import load_file

      return load_file(str(path))
    except TypeError:  # bfloat16 has no numpy dtype: read through jax, then to fp32 numpy
      with safe_open(str(path), framework="flax") as f:
        return {k: np.asarray(f.get_tensor(k).astype(jnp.float32)) for k in f.keys()}
  import torch  # only for allow_pickle=True

  sd = torch.load(str(path), map_location="cpu", weights_only=True)
  return {
      k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
      for k, v in sd.items()
      if isinstance(v, torch.Tensor)
  }


def load_state_dict(files: Sequence[pathlib.Path]) -> dict[str, np.ndarray]:
  """Reads weight files into one numpy state dict (bf16, which numpy lacks, as fp32).

  Args:
    files: safetensors files, or pickles (read with `torch.load(weights_only=True)`).

  Returns:
    Tensor name -> array, later files overriding earlier ones.

  Raises:
    ValueError: a file could not be read (named).
  """
  state: dict[str, np.ndarray] = {}
  for f in files:
    try:
      state.update(_load_one(f))
    except Exception as e:  # noqa: BLE001 - safetensors/torch raise assorted types; keep the path
      raise ValueError(f"{f}: could not read weights: {e}") from e
  return state


def _load_tokenizer(model_dir: pathlib.Path):
  import tokenizers

  path = model_dir / "tokenizer.json"
  if path.exists():
    return tokenizers.Tokenizer.from_file(str(path))
  try:  # vocab.txt / sentencepiece only: let transformers build the fast tokenizer, offline
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    return tok.backend_tokenizer
  except Exception as e:  # noqa: BLE001 - re-raised with the path
    raise FileNotFoundError(
        f"{path}: not found, and AutoTokenizer could not load {model_dir}: {e}"
    ) from e


def _resolve_max_length(tdir: pathlib.Path, config: Any) -> int:
  cap = getattr(config, "max_positions", None)
  sbert = tdir / "sentence_bert_config.json"
  n = read_json(sbert).get("max_seq_length") if sbert.exists() else None
  if n is None and (tdir / "tokenizer_config.json").exists():
    m = read_json(tdir / "tokenizer_config.json").get("model_max_length")
    n = m if isinstance(m, int) and m < 100_000 else None
  n = n if n is not None else cap
  if n is None:
    raise ValueError(
        f"{tdir}: cannot tell max_length (no sentence_bert_config.json max_seq_length, "
        "tokenizer_config.json model_max_length or position limit); pass max_length="
    )
  return int(min(n, cap) if cap is not None else n)


# --------------------------------------------------------------------------- result


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedEncoder:
  """A local encoder ready to run.

  `embed_fn(params, input_ids, attention_mask) -> [B, D]` is pure (forward -> pool ->
  Dense...); normalization is left to the caller.
  """

  model_dir: pathlib.Path
  model_type: str
  hf_config: Mapping[str, Any]
  config: Any  # the architecture's frozen config dataclass
  module: nn.Module
  params: dict  # fp32 jax arrays: {"model": {"params": ...}, "dense": ({"kernel", "bias"?}, ...)}
  pooling: PoolingSpec
  dense: tuple[DenseSpec, ...]
  normalize: bool  # sentence-transformers' modules.json has a Normalize step
  max_length: int  # tokens, specials included
  # sha256 over the weight files: transformer shards in name order, then Dense heads
  weights_digest: str
  tokenizer: Any  # tokenizers.Tokenizer, truncating at max_length, not padding
  pad_token_id: int
  embed_fn: Callable[[Any, jax.Array, jax.Array], jax.Array]
  # Packed rows (several texts per row), or None when the architecture cannot take them:
  # packed_embed_fn(params, input_ids, segment_ids, position_ids, n_segments) -> [B * S, D].
  packed_embed_fn: Callable[..., jax.Array] | None = None

  @property
  def dim(self) -> int:
    """Width of `embed_fn`'s output (from the configs; traced only when they do not tell)."""
    if self.dense:
      return int(self.dense[-1].out_features)
    width = getattr(self.config, "hidden_size", None) or getattr(self.config, "d_model", None)
    if isinstance(width, int):
      return len(self.pooling.modes) * width
    return jax.eval_shape(
        self.embed_fn,
        self.params,
        jax.ShapeDtypeStruct((1, 2), jnp.int32),
        jax.ShapeDtypeStruct((1, 2), jnp.int32),
    ).shape[-1]

  def tokenize(
      self, texts: Sequence[str], *, pad_to: int | None = None, pad_to_multiple_of: int = 8
  ) -> tuple[np.ndarray, np.ndarray]:
    """Tokenizes texts into right-padded int32 [B, L] arrays.

    Args:
      texts: the texts (truncated at `max_length` tokens).
      pad_to: L; default the longest row rounded up to a multiple of
        `pad_to_multiple_of`, never above `max_length`.
      pad_to_multiple_of: see `pad_to`.

    Returns:
      (input_ids, attention_mask).

    Raises:
      ValueError: a text has more tokens than `pad_to`.
    """
    encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
    longest = max((len(e.ids) for e in encs), default=1)
    if pad_to is None:
      pad_to = min(
          -(-longest // pad_to_multiple_of) * pad_to_multiple_of, max(self.max_length, longest)
      )
    if longest > pad_to:
      raise ValueError(f"a text has {longest} tokens > pad_to={pad_to}")
    ids = np.full((len(encs), pad_to), self.pad_token_id, np.int32)
    mask = np.zeros((len(encs), pad_to), np.int32)
    for i, e in enumerate(encs):
      ids[i, : len(e.ids)] = e.ids
      mask[i, : len(e.ids)] = 1
    return ids, mask


def make_embed_fn(
    module: nn.Module, pooling: PoolingSpec, dense: Sequence[DenseSpec]
) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
  """Builds the pure `embed_fn(params, input_ids, attention_mask) -> [B, D]` of an encoder.

  Args:
    module: the Flax backbone (`params["model"]` are its variables).
    pooling: how token states are pooled.
    dense: the Dense heads after pooling (`params["dense"]` holds theirs, in order).

  Returns:
    The function: backbone -> pooling -> each Dense head.
  """
  dense = tuple(dense)

  def embed_fn(params, input_ids, attention_mask):
    h_bld = module.apply(params["model"], input_ids, attention_mask)
    x_bd = pooling_lib.pool(h_bld, attention_mask, pooling.modes)
    for spec, p in zip(dense, params["dense"]):
      x_bd = pooling_lib.dense(p, x_bd, spec)
    return x_bd

  return embed_fn


def make_packed_embed_fn(
    module: nn.Module, pooling: PoolingSpec, dense: Sequence[DenseSpec]
) -> Callable[..., jax.Array] | None:
  """The packed-rows twin of `make_embed_fn`, or None when `module` cannot take packed rows.

  A packed row holds several texts one after another. `segment_ids` numbers them 1, 2,
  ... (0: padding), `position_ids` gives each text the positions it has alone; attention
  stays inside each text, so every text gets the embedding it gets alone (up to float
  rounding). The function is `(params, input_ids, segment_ids, position_ids, n_segments)
  -> [B * n_segments, D]`, row `b * n_segments + s - 1` embedding segment s of row b
  (`n_segments` is static).

  Args:
    module: the Flax backbone; it must set `SUPPORTS_PACKING` (its `__call__` takes
      `segment_ids` and `position_ids`).
    pooling: how token states are pooled.
    dense: the Dense heads after pooling.

  Returns:
    The function, or None.
  """
  if not getattr(module, "SUPPORTS_PACKING", False) or any(
      m not in pooling_lib.PACKED_POOLING_MODES for m in pooling.modes
  ):
    return None
  dense = tuple(dense)

  def packed_embed_fn(params, input_ids, segment_ids, position_ids, n_segments: int):
    mask = (segment_ids > 0).astype(jnp.int32)
    h_bld = module.apply(
        params["model"], input_ids, mask, segment_ids=segment_ids, position_ids=position_ids
    )
    x_nd = pooling_lib.pool_segments(h_bld, segment_ids, n_segments, pooling.modes)
    for spec, p in zip(dense, params["dense"]):
      x_nd = pooling_lib.dense(p, x_nd, spec)
    return x_nd

  return packed_embed_fn


def load_hf_encoder(
    model_dir: str | pathlib.Path,
    *,
    allow_pickle: bool = False,
    dtype: Any = jnp.float32,
    pooling: PoolingSpec | None = None,
    max_length: int | None = None,
) -> LoadedEncoder:
  """Reads a local HF / sentence-transformers directory into a `LoadedEncoder`.

  Args:
    model_dir: the directory (a sentence-transformers layout or a bare HF model).
    allow_pickle: accept a `pytorch_model.bin`-only directory.
    dtype: the matmul compute dtype (params, norms and softmax stay fp32).
    pooling: overrides the directory's `1_Pooling` (default without one: mean).
    max_length: overrides the directory's token limit.

  Returns:
    The encoder, its params on the default device.

  Raises:
    FileNotFoundError: the directory or a needed file is missing.
    PermissionError: only pickled weights and not `allow_pickle`.
    ValueError: an unsupported or inconsistent config or checkpoint (the file is named).
  """
  root = pathlib.Path(model_dir).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f"{root}: model directory not found")
  st = pooling_lib.read_st_modules(root)
  tdir = root / st.transformer_path if st is not None else root

  cfg_path = tdir / "config.json"
  hf_config = read_json(cfg_path)
  model_type = hf_config.get("model_type")
  try:
    arch, cfg_cls, model_cls = architecture_module(model_type)
    config = cfg_cls.from_hf_config(hf_config)
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{cfg_path}: {e}") from e

  files = weight_files(tdir, allow_pickle=allow_pickle)
  dense_files = [
      (sub, spec, weight_files(root / sub, allow_pickle=allow_pickle))
      for sub, spec in (st.dense if st is not None else ())
  ]
  # The digest reads every weight byte again; hashlib drops the GIL, so it runs beside the load.
  hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lead_jax-digest")
  digest = hasher.submit(sha256_files, files + [f for _, _, fs in dense_files for f in fs])
  hasher.shutdown(wait=False)
  state = load_state_dict(files)
  try:
    model_params = arch.params_from_hf(state, config)
  except (KeyError, ValueError) as e:
    raise ValueError(f"{files[0]}: {e}") from e

  dense_specs, dense_params = [], []
  for _, spec, dfiles in dense_files:
    dense_specs.append(spec)
    dense_params.append(
        pooling_lib.dense_params_from_state(load_state_dict(dfiles), spec, str(dfiles[0]))
    )

  if pooling is None:
    pooling = st.pooling if st is not None and st.pooling is not None else PoolingSpec()
  if max_length is None:
    max_length = _resolve_max_length(tdir, config)
  cap = getattr(config, "max_positions", None)
  if cap is not None and max_length > cap:
    raise ValueError(f"{cfg_path}: max_length={max_length} exceeds the model's {cap} positions")

  tokenizer = _load_tokenizer(tdir)
  pad_id = hf_config.get("pad_token_id")
  if pad_id is None and tokenizer.padding is not None:
    pad_id = tokenizer.padding.get("pad_id")
  pad_id = int(pad_id) if pad_id is not None else 0
  tokenizer.no_padding()
  tokenizer.enable_truncation(max_length=max_length)

  module = model_cls(config, dtype=dtype)
  return LoadedEncoder(
      model_dir=root,
      model_type=model_type,
      hf_config=hf_config,
      config=config,
      module=module,
      params=jax.device_put({"model": model_params, "dense": tuple(dense_params)}),
      pooling=pooling,
      dense=tuple(dense_specs),
      normalize=bool(st is not None and st.normalize),
      max_length=int(max_length),
      weights_digest=digest.result(),
      tokenizer=tokenizer,
      pad_token_id=pad_id,
      embed_fn=make_embed_fn(module, pooling, dense_specs),
      packed_embed_fn=make_packed_embed_fn(module, pooling, dense_specs),
  )
