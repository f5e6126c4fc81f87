"""Parity of the Flax MPNet / T5-encoder ports against HF PyTorch.

    .venv/bin/python -m pytest -q tests/test_encoders_mpnet_t5.py

Tiny random HF models are built, saved with save_pretrained, reloaded through
safetensors + params_from_hf and compared on right-padded batches. The
all-mpnet-base-v2 case needs the model under $LEAD_JAX_MODELS (scripts/setup.sh).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from lead_jax.encoders import layers, mpnet, registry, t5
from tests._encoder_helpers import right_padded_batch, seeded_hf_model, torch_last_hidden

pytestmark = pytest.mark.parity

TOL = 1e-4


def _max_diff_on_tokens(a, b, mask) -> float:
  keep = mask.astype(bool)
  return float(np.max(np.abs(np.asarray(a)[keep] - np.asarray(b)[keep])))


def _save_and_reload(hf_model, tmp_path):
  hf_model.save_pretrained(tmp_path)
  cfg = json.loads((tmp_path / "config.json").read_text())
  return cfg, load_file(str(tmp_path / "model.safetensors"))


# ------------------------------------------------------------------ buckets


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 16), (32, 20), (16, 64)])
def test_relative_position_buckets_match_hf(num_buckets, max_distance):
  import torch
  from transformers.models.mpnet.modeling_mpnet import MPNetEncoder
  from transformers.models.t5.modeling_t5 import T5Attention

  n = 700
  rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
  want = T5Attention._relative_position_bucket(rel, True, num_buckets, max_distance).numpy()
  got = layers.relative_position_buckets(n, n, num_buckets, max_distance)
  np.testing.assert_array_equal(got, want)
  if num_buckets == 32:
    want_mp = MPNetEncoder.relative_position_bucket(rel, num_buckets, max_distance).numpy()
    np.testing.assert_array_equal(got, want_mp)


# ------------------------------------------------------------------ random-init parity

LENGTHS = [40, 1, 17, 33, 8]  # length 40 reaches the logarithmic buckets


def test_mpnet_random_parity(tmp_path):
  import torch
  import transformers

  hf_cfg = transformers.MPNetConfig(
      vocab_size=99,
      hidden_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      intermediate_size=96,
      max_position_embeddings=64,
      relative_attention_num_buckets=32,
  )
  hf = seeded_hf_model(transformers.MPNetModel, hf_cfg)
  with torch.no_grad():  # default init leaves the bias table tiny; make it matter
    hf.encoder.relative_attention_bias.weight.normal_(0.0, 1.0)
  cfg_dict, state = _save_and_reload(hf, tmp_path)
  assert any(k.startswith("pooler.") for k in state)  # dropped by the converter

  cfg = mpnet.MPNetConfig.from_hf_config(cfg_dict)
  variables = mpnet.params_from_hf(state, cfg)
  ids, mask = right_padded_batch(
      np.random.default_rng(0), LENGTHS, cfg.vocab_size, cfg.pad_token_id
  )
  got = jax.jit(mpnet.MPNetModel(cfg).apply)(variables, ids, mask)
  assert got.shape == (len(LENGTHS), max(LENGTHS), 64) and got.dtype == jnp.float32
  diff = _max_diff_on_tokens(got, torch_last_hidden(hf, ids, mask), mask)
  print(f"mpnet random max abs diff {diff:.2e}")
  assert diff <= TOL

  # with the "mpnet." prefix (as a MPNetFor* head model saves it) gives the same tree
  prefixed = mpnet.params_from_hf({"mpnet." + k: v for k, v in state.items()}, cfg)
  jax.tree.map(np.testing.assert_array_equal, prefixed, variables)

  # bf16 compute stays close
  got_bf16 = jax.jit(mpnet.MPNetModel(cfg, dtype=jnp.bfloat16).apply)(variables, ids, mask)
  assert got_bf16.dtype == jnp.float32
  assert _max_diff_on_tokens(got_bf16, got, mask) < 0.1


@pytest.mark.parametrize("ff_proj", ["relu", "gated-gelu"])
def test_t5_encoder_random_parity(tmp_path, ff_proj):
  import transformers

  hf_cfg = transformers.T5Config(
      vocab_size=99,
      d_model=64,
      d_kv=16,
      d_ff=96,
      num_layers=2,
      num_heads=4,
      relative_attention_num_buckets=8,
      relative_attention_max_distance=16,
      feed_forward_proj=ff_proj,
  )
  hf = seeded_hf_model(transformers.T5EncoderModel, hf_cfg)
  cfg_dict, state = _save_and_reload(hf, tmp_path)

  cfg = t5.T5Config.from_hf_config(cfg_dict)
  assert cfg.is_gated_act == (ff_proj == "gated-gelu")
  assert cfg.dense_act_fn == ("gelu_new" if ff_proj == "gated-gelu" else "relu")
  variables = t5.params_from_hf(state, cfg)
  ids, mask = right_padded_batch(
      np.random.default_rng(1), LENGTHS, cfg.vocab_size, cfg.pad_token_id
  )
  got = jax.jit(t5.T5EncoderModel(cfg).apply)(variables, ids, mask)
  assert got.shape == (len(LENGTHS), max(LENGTHS), 64)
  diff = _max_diff_on_tokens(got, torch_last_hidden(hf, ids, mask), mask)
  print(f"t5 {ff_proj} random max abs diff {diff:.2e}")
  assert diff <= TOL

  # key variants: only encoder.embed_tokens, or a bare T5Stack save without "encoder."
  alt = {k: v for k, v in state.items() if k != "shared.weight"}
  alt["encoder.embed_tokens.weight"] = state["shared.weight"]
  bare = {k.removeprefix("encoder."): v for k, v in alt.items()}
  for variant in (alt, bare):
    jax.tree.map(np.testing.assert_array_equal, t5.params_from_hf(variant, cfg), variables)


def test_params_from_hf_names_bad_keys(tmp_path):
  import transformers

  hf_cfg = transformers.T5Config(
      vocab_size=50, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_heads=4
  )
  _, state = _save_and_reload(transformers.T5EncoderModel(hf_cfg), tmp_path)
  cfg = t5.T5Config.from_hf_config(hf_cfg.to_dict())
  broken = dict(state)
  del broken["encoder.final_layer_norm.weight"]
  with pytest.raises(ValueError, match="missing .*final_layer_norm"):
    t5.params_from_hf(broken, cfg)
  bigger = dataclasses.replace(cfg, d_ff=64)
  with pytest.raises(ValueError, match="shape"):
    t5.params_from_hf(state, bigger)


# ------------------------------------------------------------------ real weights

TEXTS = [
    "Hello world",
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "I love this! 😀🎉",
    "東京は日本の首都です。",
    "北京是中华人民共和国的首都。",
    "서울은 대한민국의 수도이다.",
    "Ünïcödé façade naïve café résumé coöperate",
    "Москва — столица России.",
    "مرحبا بالعالم",
    "x",
    "",
    "   leading and trailing spaces   ",
    "Numbers: 3.14159, 2.71828, 1e-10, -42, 1,000,000",
    "E-mail me at someone@example.com or visit https://example.org/path?q=1",
    "def f(x):\n    return x ** 2  # code snippet",
    "The mitochondria is the powerhouse of the cell.",
    "Stocks fell sharply on Tuesday after the central bank raised interest rates.",
    "A woman is slicing an onion.",
    "Two dogs play in the snow.",
    "Climate change affects sea levels, weather patterns and biodiversity worldwide.",
    "🙂🙃😉😊😇🥰😍🤩😘😗",
    "Ελληνικά: Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
    "हिन्दी भारत की राजभाषा है।",
    "ALL CAPS SENTENCE WITH SHOUTING",
    "tabs\tand\nnewlines\r\nmixed",
    "word " * 500,  # truncated at 384 tokens
    " ".join(f"token{i}" for i in range(400)),  # truncated
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 40,  # truncated
    "How do I bake sourdough bread at home without a dutch oven?",
    "Machine learning models embed text into vectors.",
    "Embeddings from different models can be compared with CKA.",
]


def _mean_pool_normalize(hidden_bld, mask_bl):
  m = mask_bl[..., None].astype(np.float64)
  pooled = (np.asarray(hidden_bld, np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
  return pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def _tokenize(model_dir, texts, max_len: int):
  from tokenizers import Tokenizer

  tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
  tok.enable_truncation(max_len)
  tok.no_padding()
  encs = tok.encode_batch(list(texts))
  l = max(len(e.ids) for e in encs)
  pad_id = tok.token_to_id("<pad>")
  ids = np.full((len(encs), l), pad_id, np.int32)
  mask = np.zeros((len(encs), l), np.int32)
  for i, e in enumerate(encs):
    ids[i, : len(e.ids)] = e.ids
    mask[i, : len(e.ids)] = 1
  return ids, mask


@pytest.mark.slow
def test_all_mpnet_base_v2_matches_torch():
  import torch
  import transformers

  model_dir = registry.models_cache_dir() / "all-mpnet-base-v2"
  if not (model_dir / "model.safetensors").exists():
    pytest.skip(f"{model_dir} missing; run `bash scripts/setup.sh` to install the models")
  torch.set_num_threads(min(2, os.cpu_count() or 1))
  max_len = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
  assert max_len == 384
  cfg_dict = json.loads((model_dir / "config.json").read_text())
  cfg = mpnet.MPNetConfig.from_hf_config(cfg_dict)
  variables = mpnet.params_from_hf(load_file(str(model_dir / "model.safetensors")), cfg)
  hf = transformers.MPNetModel.from_pretrained(str(model_dir), add_pooling_layer=False).eval()

  ids, mask = _tokenize(model_dir, TEXTS, max_len)
  assert ids.shape[1] == max_len  # the long texts were truncated
  fwd = jax.jit(mpnet.MPNetModel(cfg).apply)
  # two batches (short / long) keep padding waste and memory small
  order = np.argsort(mask.sum(1))
  got, want = [], []
  for idx in np.array_split(order, 2):
    l = int(mask[idx].sum(1).max())
    b_ids, b_mask = ids[idx, :l], mask[idx, :l]
    got.append(_mean_pool_normalize(fwd(variables, b_ids, b_mask), b_mask))
    want.append(_mean_pool_normalize(torch_last_hidden(hf, b_ids, b_mask), b_mask))
  diff = float(np.max(np.abs(np.concatenate(got) - np.concatenate(want))))
  print(f"all-mpnet-base-v2 normalized embedding max abs diff {diff:.2e} over {len(TEXTS)} texts")
  assert diff <= TOL
