"""Parity of the Flax BERT / XLM-R ports, pooling heads and loader against PyTorch.

  cd /work/main && .venv/bin/python -m pytest -q tests/test_encoders_bert.py

Tiny random HF models are built and saved to tmp dirs (no network). The
real-weights test needs all-MiniLM-L6-v2 under $LEAD_JAX_MODELS (bash scripts/setup.sh).
torch / transformers / sentence_transformers are imported inside tests only.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lead_jax.encoders import loader, pooling, registry, xlm_roberta
from lead_jax.encoders.loader import load_hf_encoder
from lead_jax.numerics import l2_normalize
from tests._encoder_helpers import right_padded_batch, seeded_hf_model, torch_last_hidden

ATOL = 1e-4
VOCAB = 1000


def _write_tokenizer(d: pathlib.Path, specials: list[str]) -> None:
  """A WordLevel tokenizer.json over specials + w0..wN, with [CLS]/[SEP]-style template."""
  import tokenizers
  from tokenizers import models, pre_tokenizers, processors

  vocab = {t: i for i, t in enumerate(specials)}
  vocab.update({f"w{i}": len(vocab) + i for i in range(VOCAB - len(specials))})
  bos, pad, eos, unk = specials
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=unk))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(
      single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
  )
  tok.save(str(d / "tokenizer.json"))


def _tiny_hf_model(d: pathlib.Path, kind: str, hidden_act: str = "gelu"):
  """Save a tiny random HF model (+ tokenizer.json) to d; return the torch model."""
  import transformers

  common = dict(
      vocab_size=VOCAB,
      hidden_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      intermediate_size=128,
      hidden_act=hidden_act,
  )
  if kind == "bert":
    m = seeded_hf_model(
        transformers.BertModel, transformers.BertConfig(max_position_embeddings=64, **common)
    )
    specials = ["[CLS]", "[PAD]", "[SEP]", "[UNK]"]
    m.config.pad_token_id = 1  # make pad != 0 so a wrong pad id would show
  else:
    m = seeded_hf_model(
        transformers.XLMRobertaModel,
        transformers.XLMRobertaConfig(max_position_embeddings=66, pad_token_id=1, **common),
    )
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
  d.mkdir(parents=True, exist_ok=True)
  m.save_pretrained(str(d))
  _write_tokenizer(d, specials)
  return m


def _batch(pad_id: int):
  """Random ids (above the 4 specials) right-padded to 20: one full row, one length-1 row."""
  return right_padded_batch(np.random.default_rng(0), [20, 13, 7, 2, 1], VOCAB, pad_id, low=4)


@pytest.mark.parity
@pytest.mark.parametrize(
    "kind,hidden_act", [("bert", "gelu"), ("bert", "gelu_new"), ("xlm-roberta", "gelu")]
)
def test_random_init_parity(tmp_path, kind, hidden_act):
  m = _tiny_hf_model(tmp_path / "m", kind, hidden_act)
  enc = load_hf_encoder(tmp_path / "m")
  assert enc.model_type == kind and enc.config.hidden_act == hidden_act
  assert enc.pad_token_id == 1
  ids, mask = _batch(enc.pad_token_id)
  ours = np.asarray(jax.jit(enc.module.apply)(enc.params["model"], ids, mask))
  ref = torch_last_hidden(m, ids, mask)
  diff = np.abs(ours - ref)
  print(
      f"{kind}/{hidden_act}: max abs diff all={diff.max():.3g} unpadded={diff[mask == 1].max():.3g}"
  )
  assert diff[mask == 1].max() <= ATOL
  assert diff.max() <= ATOL  # pad positions too: same additive mask semantics as HF


@pytest.mark.parity
def test_xlm_roberta_position_ids_match_hf():
  import torch
  from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaEmbeddings

  ids, _ = _batch(pad_id=1)
  ours = np.asarray(xlm_roberta.position_ids(jnp.asarray(ids), 1))
  ref = XLMRobertaEmbeddings.create_position_ids_from_input_ids(torch.tensor(ids), 1).numpy()
  np.testing.assert_array_equal(ours, ref)
  assert ours[0, 0] == 2 and ours[-1, -1] == 1  # offset pad+1; pads sit at pad_idx


@pytest.mark.parity
def test_bf16_compute_close_to_fp32(tmp_path):
  _tiny_hf_model(tmp_path / "m", "bert")
  f32 = load_hf_encoder(tmp_path / "m")
  b16 = load_hf_encoder(tmp_path / "m", dtype=jnp.bfloat16)
  ids, mask = _batch(1)
  a = jax.jit(f32.embed_fn)(f32.params, ids, mask)
  b = jax.jit(b16.embed_fn)(b16.params, ids, mask)
  assert b.dtype == jnp.float32 and jax.tree.leaves(b16.params)[0].dtype == jnp.float32
  assert float(jnp.abs(a - b).max()) < 0.05 * float(jnp.abs(a).max())


@pytest.mark.parity
@pytest.mark.parametrize("torch_dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoint_loads_as_fp32(tmp_path, torch_dtype):
  import torch

  m = _tiny_hf_model(tmp_path / "m", "bert")
  m.to(getattr(torch, torch_dtype)).save_pretrained(str(tmp_path / "m"))
  enc = load_hf_encoder(tmp_path / "m")
  assert {x.dtype for x in jax.tree.leaves(enc.params)} == {jnp.dtype(jnp.float32)}
  ids, mask = _batch(enc.pad_token_id)
  ours = np.asarray(jax.jit(enc.module.apply)(enc.params["model"], ids, mask))
  assert (
      np.abs(ours - torch_last_hidden(m.float(), ids, mask)).max() <= ATOL
  )  # same (rounded) weights


# --------------------------------------------------------------------------- pooling / Dense


@pytest.mark.parity
@pytest.mark.parametrize(
    "cfg",
    [
        {"pooling_mode_cls_token": True},
        {"pooling_mode_mean_tokens": True},
        {"pooling_mode_max_tokens": True},
        {"pooling_mode_mean_sqrt_len_tokens": True},
        {"pooling_mode_weightedmean_tokens": True},
        {"pooling_mode_lasttoken": True},
        {
            "pooling_mode_cls_token": True,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": True,
        },
        {"pooling_mode": ["mean", "cls"]},
    ],
)
def test_pooling_matches_sentence_transformers(cfg):
  import torch

  st = pytest.importorskip("sentence_transformers.sentence_transformer.modules")

  spec = pooling.PoolingSpec.from_st_config({"word_embedding_dimension": 16, **cfg})
  rng = np.random.default_rng(1)
  h = rng.standard_normal((4, 9, 16)).astype(np.float32)
  mask = np.array(
      [[1] * 9, [1] * 4 + [0] * 5, [1] + [0] * 8, [0] * 3 + [1] * 6], np.int32
  )  # last row left-padded
  ref_mod = st.Pooling(16, pooling_mode=tuple(spec.modes))
  ref = ref_mod({"token_embeddings": torch.tensor(h), "attention_mask": torch.tensor(mask)})[
      "sentence_embedding"
  ]
  ours = jax.jit(pooling.pool, static_argnums=2)(h, mask, spec.modes)
  assert ours.shape == tuple(ref.shape)
  np.testing.assert_allclose(np.asarray(ours), ref.numpy(), atol=1e-5, rtol=1e-5)


def _write_st_layout(d: pathlib.Path, pooling_cfg: dict, dense_mods) -> None:
  """modules.json + 1_Pooling (+ Dense dirs saved by sentence-transformers) + 2_Normalize."""
  steps = [("", "Transformer"), ("1_Pooling", "Pooling")]
  (d / "1_Pooling").mkdir()
  (d / "1_Pooling" / "config.json").write_text(json.dumps(pooling_cfg))
  for i, dm in enumerate(dense_mods, start=2):
    (d / f"{i}_Dense").mkdir()
    dm.save(str(d / f"{i}_Dense"))
    steps.append((f"{i}_Dense", "Dense"))
  steps.append((f"{len(steps)}_Normalize", "Normalize"))
  (d / "modules.json").write_text(json.dumps(pooling.st_modules_json(*steps)))
  (d / "sentence_bert_config.json").write_text(
      json.dumps({"max_seq_length": 24, "do_lower_case": False})
  )


@pytest.mark.parity
def test_dense_pipeline_matches_sentence_transformers(tmp_path):
  """Random BERT -> ST Pooling(cls) -> Dense 64->32 Tanh (bias) -> Dense 32->16 Identity (no bias) -> Normalize."""
  import torch

  stm = pytest.importorskip("sentence_transformers.sentence_transformer.modules")
  from sentence_transformers.base.modules.dense import Dense
  from sentence_transformers.base.modules.normalize import Normalize

  d = tmp_path / "m"
  m = _tiny_hf_model(d, "bert")
  torch.manual_seed(1)
  dense = [
      Dense(64, 32, bias=True, activation_function=torch.nn.Tanh()),
      Dense(32, 16, bias=False, activation_function=torch.nn.Identity()),
  ]
  _write_st_layout(d, {"word_embedding_dimension": 64, "pooling_mode_cls_token": True}, dense)
  assert (
      json.loads((d / "2_Dense" / "config.json").read_text())["activation_function"]
      == "torch.nn.modules.activation.Tanh"
  )

  enc = load_hf_encoder(d)
  assert enc.pooling.modes == ("cls",) and enc.normalize and enc.max_length == 24
  assert [s.out_features for s in enc.dense] == [32, 16] and enc.dim == 16
  ids, mask = _batch(enc.pad_token_id)
  ours = np.asarray(l2_normalize(jax.jit(enc.embed_fn)(enc.params, ids, mask)))

  feats = {
      "token_embeddings": torch.tensor(torch_last_hidden(m, ids, mask)),
      "attention_mask": torch.tensor(mask),
  }
  with torch.no_grad():
    for mod in [stm.Pooling(64, pooling_mode="cls"), *dense, Normalize()]:
      feats = mod(feats)
  ref = feats["sentence_embedding"].numpy()
  print(f"Dense pipeline max abs diff {np.abs(ours - ref).max():.3g}")
  np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- real weights

_TEXTS = [
    "hello world",
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog.",
    "",
    "   leading and trailing spaces   ",
    "UPPER CASE and MiXeD cAsE",
    "Ünïcödé àccents: naïve café, résumé, Straße, ÅÄÖ",
    "“Smart quotes” — em dashes – and … ellipses",
    "😀 emoji 🎉 in text 👩‍👩‍👧‍👦 with ZWJ 🏳️‍🌈",
    "日本語のテキストです。",
    "中文文本，包含标点符号。",
    "한국어 문장입니다.",
    "Русский текст с кириллицей.",
    "نص عربي من اليمين إلى اليسار",
    "Ελληνικά κείμενα",
    "हिन्दी पाठ",
    "math: ∑_{i=1}^n x_i² ≥ 0, ∀x ∈ ℝ",
    "code: def f(x): return x**2  # comment",
    "url https://example.com/path?q=1&r=2 and mail a@b.co",
    "numbers 3.14159 2,718 1e-9 -42 0x1F",
    "tabs\tand\nnewlines\r\nin text",
    "a",
    "?!?!",
    "word " * 300,  # truncated at 256 tokens
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 40,
    "汉字" * 400,
    "🙂" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Mixed 日本 English 中文 and emoji 🚀 together.",
    "The cat sat on the mat. The dog sat on the log.",
    "Paris is the capital of France.",
    "What is the capital of France?",
    "zero\u200bwidth space and soft\u00adhyphen",
    "Multiple     spaces    between      words",
]


def _minilm_dir() -> pathlib.Path:
  d = registry.models_cache_dir() / "all-MiniLM-L6-v2"
  if not (d / "config.json").exists():
    pytest.skip(f"{d} missing: run `bash scripts/setup.sh` to install all-MiniLM-L6-v2")
  return d


@pytest.mark.parity
def test_minilm_real_weights_match_torch():
  import torch
  import transformers

  d = _minilm_dir()
  assert len(_TEXTS) >= 32
  enc = load_hf_encoder(d)
  assert (
      enc.max_length == 256 and enc.pooling.modes == ("mean",) and enc.normalize and enc.dense == ()
  )
  ids, mask = enc.tokenize(_TEXTS)
  assert mask.sum(1).max() == 256  # the long rows were truncated at max_length

  tok = transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True)
  b = tok(
      _TEXTS, padding="max_length", truncation=True, max_length=ids.shape[1], return_tensors="pt"
  )
  np.testing.assert_array_equal(b["input_ids"].numpy(), ids)
  np.testing.assert_array_equal(b["attention_mask"].numpy(), mask)

  ours = np.asarray(l2_normalize(jax.jit(enc.embed_fn)(enc.params, ids, mask)))
  m = transformers.BertModel.from_pretrained(str(d)).eval()
  with torch.no_grad():
    h = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
    w = b["attention_mask"][..., None].float()
    ref = torch.nn.functional.normalize((h * w).sum(1) / w.sum(1).clamp(min=1e-9), dim=-1).numpy()
  diff = np.abs(ours - ref).max()
  print(f"all-MiniLM-L6-v2 vs torch: max abs diff {diff:.3g} over {len(_TEXTS)} texts")
  assert diff <= ATOL


@pytest.mark.parity
def test_minilm_matches_sentence_transformer(monkeypatch):
  d = _minilm_dir()
  st = pytest.importorskip("sentence_transformers")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  ref = st.SentenceTransformer(str(d), device="cpu").encode(
      _TEXTS[:12] + _TEXTS[23:25], batch_size=16
  )
  enc = load_hf_encoder(d)
  ids, mask = enc.tokenize(_TEXTS[:12] + _TEXTS[23:25])
  ours = np.asarray(l2_normalize(jax.jit(enc.embed_fn)(enc.params, ids, mask)))
  print(f"all-MiniLM-L6-v2 vs SentenceTransformer: max abs diff {np.abs(ours - ref).max():.3g}")
  np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- loader errors


@pytest.mark.parity
def test_pickle_only_dir_refused_then_loaded_with_flag(tmp_path):
  import torch

  d = tmp_path / "m"
  m = _tiny_hf_model(d, "bert")
  (d / "model.safetensors").unlink()
  torch.save(m.state_dict(), d / "pytorch_model.bin")
  with pytest.raises(PermissionError) as e:
    load_hf_encoder(d)
  msg = str(e.value)
  assert "pytorch_model.bin" in msg and "allow_pickle=True" in msg and "--allow_pickle" in msg
  enc = load_hf_encoder(d, allow_pickle=True)
  ids, mask = _batch(enc.pad_token_id)
  diff = np.abs(
      np.asarray(jax.jit(enc.module.apply)(enc.params["model"], ids, mask))
      - torch_last_hidden(m, ids, mask)
  )
  assert diff.max() <= ATOL


@pytest.mark.parity
def test_loader_errors_name_the_file(tmp_path):
  d = tmp_path / "m"
  _tiny_hf_model(d, "bert")
  enc = load_hf_encoder(d)
  assert enc.weights_digest == hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()

  with pytest.raises(ValueError, match=r"config\.json.*max_length=65"):
    load_hf_encoder(d, max_length=65)  # tiny BERT has 64 positions
  cfg = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
  with pytest.raises(ValueError, match=r"config\.json.*gpt2"):
    load_hf_encoder(d)
  (d / "config.json").write_text(json.dumps({**cfg, "hidden_size": 32}))
  with pytest.raises(ValueError, match=r"model\.safetensors.*shape"):
    load_hf_encoder(d)
  (d / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match=str(d / "config.json")):
    load_hf_encoder(d)
  with pytest.raises(FileNotFoundError, match="model directory not found"):
    load_hf_encoder(tmp_path / "nope")


def test_registry_duplicate_raises():
  with pytest.raises(ValueError, match="already registered"):
    loader.register_architecture("bert", "lead_jax.encoders.bert")
  with pytest.raises(ValueError, match="not supported"):
    loader.architecture_module("gpt2")
  mod, cfg_cls, model_cls = loader.architecture_module("xlm-roberta")
  assert cfg_cls is xlm_roberta.XLMRobertaConfig and model_cls is xlm_roberta.XLMRobertaModel
