"""Static (token-table) encoder: wordllama's l2_supercat_256, in pure JAX.

    python -m lead_jax.encoders.install --models=wordllama   # puts the model dir in the cache

    enc = load_static_encoder(resolve_model_dir("wordllama"))
    ids, mask = enc.tokenize(["some text", "more"])
    x_bd = jax.jit(enc.embed_fn)(enc.params, ids, mask)

Mirrors `wordllama.inference.WordLlamaInference.embed`:
  * tokenize with the Llama-2 BPE tokenizer, `add_special_tokens=False`, pad with id 0
    (wordllama never truncates; we cut at `max_length` tokens to keep shapes fixed);
  * clip ids into [0, vocab - 1]; gather rows of the float32 table;
  * masked mean over tokens, dividing by max(#tokens, 1) (an empty text gives zeros);
  * L2-normalise only when asked (`embed(norm=False)` is wordllama's default; its
    similarity functions apply cosine afterwards). Zero vectors stay zero.

The model dir holds `model.safetensors` (key `embedding.weight`, [32000, 256]),
`tokenizer.json`, and `static_config.json` (written by the installer).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lead_jax.encoders.registry import STATIC_CONFIG
from lead_jax.files import read_json, sha256_file
from lead_jax.numerics import HIGHEST, l2_normalize


def static_embed(
    table_vd: jax.Array, input_ids: jax.Array, attention_mask: jax.Array, *, normalize: bool = False
) -> jax.Array:
  """Masked-mean token-table embeddings, as `WordLlamaInference.embed` computes them.

  Args:
    table_vd: [V, D] float32 token table.
    input_ids: [B, S] ids (clipped into the table).
    attention_mask: [B, S] 0/1.
    normalize: L2-normalise each row (zero rows stay zero).

  Returns:
    float32 [B, D].
  """
  ids_bs = jnp.clip(input_ids, 0, table_vd.shape[0] - 1)
  x_bsd = jnp.take(table_vd, ids_bs, axis=0)
  m_bs = attention_mask.astype(jnp.float32)
  sum_bd = jnp.einsum("bsd,bs->bd", x_bsd, m_bs, precision=HIGHEST)
  x_bd = sum_bd / jnp.maximum(m_bs.sum(axis=1, keepdims=True), 1.0)
  return l2_normalize(x_bd) if normalize else x_bd


@dataclasses.dataclass(frozen=True)
class StaticEncoder:
  """A loaded static encoder; `embed_fn(params, input_ids, attention_mask) -> [B, D]` is pure."""

  name: str
  params: dict[str, jax.Array]  # {"embedding": [V, D]}
  tokenizer: Any  # tokenizers.Tokenizer (padding/truncation set to max_length)
  max_length: int
  dim: int
  vocab_size: int
  normalize: bool
  weights_digest: str  # sha256 of model.safetensors
  embed_fn: Callable[[dict, jax.Array, jax.Array], jax.Array] = dataclasses.field(repr=False)
  model_dir: pathlib.Path | None = None

  def tokenize(
      self, texts: Sequence[str], pad_to: int | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """Tokenizes texts (no special tokens, truncated at `max_length`), padding with id 0.

    Args:
      texts: the texts.
      pad_to: S; default the longest row (at least 1).

    Returns:
      (ids, mask), int32 [B, S].
    """
    enc = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
    s = pad_to or max([len(e.ids) for e in enc] + [1])
    ids = np.zeros((len(enc), s), np.int32)
    mask = np.zeros((len(enc), s), np.int32)
    for i, e in enumerate(enc):
      n = min(sum(e.attention_mask), s)
      ids[i, :n] = e.ids[:n]
      mask[i, :n] = 1
    return ids, mask

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """Tokenizes and embeds texts with the jitted `embed_fn`.

    Args:
      texts: the texts.

    Returns:
      float32 numpy [B, D].
    """
    ids, mask = self.tokenize(texts)
    return np.asarray(_jitted(self.embed_fn)(self.params, jnp.asarray(ids), jnp.asarray(mask)))


@functools.cache
def _jitted(fn):
  return jax.jit(fn)


def _embed_params(
    params: dict, input_ids: jax.Array, attention_mask: jax.Array, *, normalize: bool
) -> jax.Array:
  return static_embed(params["embedding"], input_ids, attention_mask, normalize=normalize)


def load_static_encoder(
    model_dir: str | pathlib.Path, *, normalize: bool | None = None, max_length: int | None = None
) -> StaticEncoder:
  """Loads a static model dir (see the module docstring).

  Args:
    model_dir: the directory.
    normalize: overrides `static_config.json`'s `normalize`.
    max_length: overrides its `max_length` (tokens).

  Returns:
    The encoder.

  Raises:
    FileNotFoundError: not a static model dir (says how to install one).
    KeyError: the weights lack the configured tensor.
    ValueError: the table's shape disagrees with the config, or the config asks for
      special tokens.
  """
  from safetensors.numpy import load_file
  from tokenizers import Tokenizer

  d = pathlib.Path(model_dir).expanduser()
  cfg_path = d / STATIC_CONFIG
  if not cfg_path.is_file():
    raise FileNotFoundError(
        f"{cfg_path}: not a static model dir (no {STATIC_CONFIG}); "
        "install it with `python -m lead_jax.encoders.install --models=wordllama`"
    )
  cfg = read_json(cfg_path)
  weights = d / "model.safetensors"
  digest = sha256_file(weights)
  key = cfg.get("tensor_key", "embedding.weight")
  state = load_file(str(weights))
  if key not in state:
    raise KeyError(f"{weights}: no tensor {key!r} (has {sorted(state)})")
  table = np.ascontiguousarray(state[key].astype(np.float32))
  if table.ndim != 2 or table.shape[1] != cfg.get("dim", table.shape[1]):
    raise ValueError(
        f"{weights}: {key} has shape {table.shape}, {cfg_path} says dim={cfg.get('dim')}"
    )
  if cfg.get("add_special_tokens", False):
    raise ValueError(f"{cfg_path}: add_special_tokens=true is not supported by the static encoder")

  max_len = int(max_length or cfg.get("max_length", 512))
  tok = Tokenizer.from_file(str(d / "tokenizer.json"))
  tok.enable_truncation(max_len)
  tok.no_padding()
  norm = bool(cfg.get("normalize", False) if normalize is None else normalize)
  return StaticEncoder(
      name=d.name,
      params={"embedding": jnp.asarray(table)},
      tokenizer=tok,
      max_length=max_len,
      dim=int(table.shape[1]),
      vocab_size=int(table.shape[0]),
      normalize=norm,
      weights_digest=digest,
      embed_fn=functools.partial(_embed_params, normalize=norm),
      model_dir=d,
  )
