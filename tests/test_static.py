"""Static (wordllama) encoder: pure-JAX gather + masked mean vs references.

    .venv/bin/python -m pytest -q tests/test_static.py

The parity test uses the installed cache (skips when absent). Its reference is
wordllama's own package when importable (loaded from its bundled files,
downloads disabled), else a float64 NumPy mirror of WordLlamaInference.embed.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lead_jax.encoders import install as inst
from lead_jax.encoders import static
from tests._encoder_helpers import installed_model_dir

TEXTS = [
    "The quick brown fox jumps over the lazy dog",
    "And all that jazz",
    "Représentations: ñandú, 東京, emoji 🙂 and numbers 12345.",
    "",
    "a " * 300,  # long: over the 512-token cap only if the tokenizer splits it finely
]


def _ref_embed_np(table, tokenizer_json, texts, norm):
  """float64 mirror of wordllama.inference.WordLlamaInference.embed (no truncation)."""
  from tokenizers import Tokenizer

  tok = Tokenizer.from_file(str(tokenizer_json))
  tok.enable_padding()
  tok.no_truncation()
  enc = tok.encode_batch(texts, add_special_tokens=False)
  ids = np.clip(np.array([e.ids for e in enc]), 0, table.shape[0] - 1)
  mask = np.array([e.attention_mask for e in enc], np.float64)
  x = (table.astype(np.float64)[ids] * mask[..., None]).sum(1) / np.maximum(
      mask.sum(1, keepdims=True), 1.0
  )
  if norm:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(n > 0, n, 1.0)
  return x


def _tiny_static_dir(
    tmp_path: pathlib.Path, normalize=False, max_length=6
) -> tuple[pathlib.Path, np.ndarray]:
  from safetensors.numpy import save_file
  from tokenizers import Tokenizer, models, pre_tokenizers

  words = ["<unk>", "a", "b", "c", "dog", "cat", "the"]
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(tmp_path / "tokenizer.json"))
  table = np.random.default_rng(0).normal(size=(len(words), 8)).astype(np.float32)
  save_file({"embedding.weight": table}, str(tmp_path / "model.safetensors"))
  (tmp_path / static.STATIC_CONFIG).write_text(
      json.dumps(
          {
              "tensor_key": "embedding.weight",
              "dim": 8,
              "max_length": max_length,
              "add_special_tokens": False,
              "pooling": "mean",
              "normalize": normalize,
          }
      )
  )
  return tmp_path, table


@pytest.mark.parametrize("normalize", [False, True])
def test_tiny_static_matches_numpy(tmp_path, normalize):
  d, table = _tiny_static_dir(tmp_path, normalize)
  enc = static.load_static_encoder(d)
  assert (enc.dim, enc.vocab_size, enc.normalize, enc.max_length) == (8, 7, normalize, 6)
  texts = ["the cat", "a b c dog zzz", "", "a a a a a a a a a"]
  ids, mask = enc.tokenize(texts)
  assert ids.shape == (4, 6) and mask.sum(1).tolist() == [2, 5, 0, 6]  # truncated at max_length
  f = jax.jit(enc.embed_fn)
  got = np.asarray(f(enc.params, jnp.asarray(ids), jnp.asarray(mask)))
  cut = [" ".join(t.split()[:6]) for t in texts]
  want = _ref_embed_np(table, d / "tokenizer.json", cut, normalize)
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert np.all(got[2] == 0)  # empty text: zeros, not NaN
  # Padding to a fixed length changes nothing, and does not retrace per call.
  got2 = np.asarray(f(enc.params, *map(jnp.asarray, enc.tokenize(texts, pad_to=6))))
  np.testing.assert_array_equal(got, got2)
  np.testing.assert_allclose(enc.embed(texts), got, atol=0)


def test_out_of_range_ids_are_clipped(tmp_path):
  d, table = _tiny_static_dir(tmp_path)
  enc = static.load_static_encoder(d)
  out = enc.embed_fn(enc.params, jnp.array([[100, -3]]), jnp.array([[1, 1]]))
  np.testing.assert_allclose(np.asarray(out)[0], (table[-1] + table[0]) / 2, atol=1e-6)


def test_not_a_static_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="lead_jax.encoders.install"):
    static.load_static_encoder(tmp_path)


@pytest.mark.parametrize("norm", [False, True])
def test_wordllama_parity(norm):
  d = installed_model_dir("wordllama")
  enc = static.load_static_encoder(d, normalize=norm)
  assert enc.dim == 256 and enc.vocab_size == 32000
  assert enc.weights_digest == inst.read_marker(d)["weights"]["model.safetensors"]["sha256"]
  ids, mask = enc.tokenize(TEXTS)
  assert (
      mask.sum(1).max() < enc.max_length
  )  # no truncation, so wordllama's no-truncation output applies
  got = np.asarray(jax.jit(enc.embed_fn)(enc.params, jnp.asarray(ids), jnp.asarray(mask)))
  try:
    import wordllama
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    # WordLlama.load(disable_download=True) looks for the bundled tokenizer in
    # wordllama/tokenizer/ but the wheel ships wordllama/tokenizers/, so it would try
    # the hub: build its inference object from the package's own files instead.
    pkg = pathlib.Path(wordllama.__file__).parent
    table = load_file(str(pkg / "weights" / "l2_supercat_256.safetensors"))["embedding.weight"]
    tok = Tokenizer.from_file(str(pkg / "tokenizers" / "l2_supercat_tokenizer_config.json"))
    wl = wordllama.WordLlamaInference(table, tok)
    with np.errstate(invalid="ignore"):
      want = wl.embed(TEXTS, norm=norm).astype(np.float64)
    if norm:  # wordllama divides 0/0 for the empty text; we return zeros
      want = np.nan_to_num(want)
  except ImportError:
    table = np.asarray(enc.params["embedding"])
    want = _ref_embed_np(table, d / "tokenizer.json", TEXTS, norm)
  assert np.abs(got - want).max() <= 1e-5
