"""Encoding runner: packed rows and bucketed, length-sorted, padded batches give the PyTorch
reference embeddings and each text's own one-at-a-time embedding; the embed stage skips
complete arrays and resumes partial ones to identical bytes."""

import os
import pathlib

import numpy as np
import pytest

from lead_jax import config, data, pipeline, store
from lead_jax.encoders import registry, runner

MODELS = pathlib.Path(os.environ.get("LEAD_JAX_MODELS", "~/.cache/lead_jax/models")).expanduser()
needs_minilm = pytest.mark.skipif(
    not (MODELS / "all-MiniLM-L6-v2").is_dir(),
    reason="offline models not installed: run `bash scripts/setup.sh`",
)
needs_mpnet = pytest.mark.skipif(
    not (MODELS / "all-mpnet-base-v2").is_dir(),
    reason="offline models not installed: run `bash scripts/setup.sh`",
)
# lengths from 1 to 300 words (past the 256-token limit), with multi-byte characters
TEXTS = [
    ("word " * n).strip() + f" {n} ü 漢" for n in (0, 1, 3, 7, 15, 30, 60, 120, 300, 2, 5, 9, 40)
]


def test_bucket_lengths():
  assert runner.bucket_lengths(256) == (16, 32, 64, 128, 256)
  assert runner.bucket_lengths(384) == (16, 32, 64, 128, 256, 384)
  assert runner.bucket_lengths(16) == (16,)


def test_pack_rows_first_fit_decreasing():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 65, 500)
  rows = runner.pack_rows(lengths, 64, 8)
  placed = sorted(i for row in rows for i in row)
  assert placed == list(range(500))  # every text exactly once
  assert all(sum(lengths[i] for i in row) <= 64 and len(row) <= 8 for row in rows)
  assert rows == runner.pack_rows(lengths, 64, 8)  # deterministic
  # longest first: each row's first text is no shorter than the next row's first
  firsts = [lengths[row[0]] for row in rows]
  assert firsts == sorted(firsts, reverse=True)
  short = rng.integers(1, 21, 500)  # short texts fill rows nearly full
  assert len(runner.pack_rows(short, 64, 16)) <= -(-short.sum() // 64) + 1
  assert runner.pack_rows([5, 3, 60, 2, 64], 64, 16) == [[4], [2, 1], [0, 3]]
  with pytest.raises(ValueError, match="lengths"):
    runner.pack_rows([65], 64, 8)


def test_compiler_options_on_cpu():
  import jax

  opts = runner.compiler_options(jax.devices("cpu"))
  assert opts is None or opts == runner.CPU_COMPILER_OPTIONS


def test_balanced_rows():
  assert runner.balanced_rows(373, 64, 8) == 64  # 6 batches of 64 (not 5 full + 53)
  assert runner.balanced_rows(75, 64, 8) == 40  # 2 batches of 40, not 64 + 11
  assert runner.balanced_rows(7, 64, 8) == 8
  assert runner.balanced_rows(13, 4, 4) == 4


@pytest.mark.parametrize(
    "modes", [("mean",), ("cls",), ("max", "lasttoken"), ("mean_sqrt_len_tokens", "weightedmean")]
)
def test_pool_segments_matches_pool_per_text(modes):
  import jax.numpy as jnp

  from lead_jax.encoders import pooling

  rng = np.random.default_rng(1)
  lens = [[3, 4, 1], [8], [2, 2, 2, 1]]  # three packed rows of 8 tokens (one padded)
  h = rng.standard_normal((3, 8, 4)).astype(np.float32)
  seg = np.zeros((3, 8), np.int32)
  for r, row in enumerate(lens):
    seg[r, : sum(row)] = np.repeat(np.arange(1, len(row) + 1), row)
  got = np.asarray(pooling.pool_segments(jnp.asarray(h), jnp.asarray(seg), 4, modes))
  assert got.shape == (12, 4 * len(modes))
  for r, row in enumerate(lens):
    off = 0
    for s, n in enumerate(row):
      alone = pooling.pool(jnp.asarray(h[r : r + 1, off : off + n]), jnp.ones((1, n)), modes)
      np.testing.assert_allclose(got[r * 4 + s], np.asarray(alone)[0], rtol=0, atol=1e-6)
      off += n
    assert not got[r * 4 + len(row) : r * 4 + 4].any()  # empty slots pool to zeros


@pytest.mark.parametrize("arch", ["bert", "xlm-roberta", "mpnet"])
def test_packed_row_matches_each_text_alone(arch):
  """Segments + their own positions: each text's hidden states are those it gets alone."""
  import jax
  import jax.numpy as jnp

  from lead_jax.encoders import bert, mpnet, xlm_roberta

  small = dict(
      vocab_size=100,
      hidden_size=32,
      num_hidden_layers=2,
      num_attention_heads=4,
      intermediate_size=64,
  )
  model = {
      "bert": lambda: bert.BertModel(bert.BertConfig(**small)),
      "xlm-roberta": lambda: xlm_roberta.XLMRobertaModel(xlm_roberta.XLMRobertaConfig(**small)),
      "mpnet": lambda: mpnet.MPNetModel(mpnet.MPNetConfig(**small)),
  }[arch]()
  assert model.SUPPORTS_PACKING
  pad = model.config.pad_token_id
  rng = np.random.default_rng(0)
  texts = [rng.integers(3, 100, n).astype(np.int32) for n in (5, 3, 7)]
  L = 16
  ids = np.full((1, L), pad, np.int32)
  seg = np.zeros((1, L), np.int32)
  pos = np.zeros((1, L), np.int32)
  pos_l = np.asarray(model.position_ids(jnp.full((1, L), pad + 1, jnp.int32)))[0]
  off = 0
  for s, t in enumerate(texts):
    ids[0, off : off + len(t)], seg[0, off : off + len(t)] = t, s + 1
    pos[0, off : off + len(t)] = pos_l[: len(t)]
    off += len(t)
  params = model.init(jax.random.key(0), jnp.asarray(ids), jnp.asarray((seg > 0).astype(np.int32)))
  packed = np.asarray(
      model.apply(params, ids, (seg > 0).astype(np.int32), segment_ids=seg, position_ids=pos)
  )
  off = 0
  for t in texts:
    alone = np.asarray(model.apply(params, t[None], np.ones((1, len(t)), np.int32)))[0]
    assert np.abs(packed[0, off : off + len(t)] - alone).max() <= 1e-5
    off += len(t)


def _one_at_a_time(enc, texts):
  import jax
  import jax.numpy as jnp

  from lead_jax.numerics import l2_normalize

  f = jax.jit(lambda p, i, m: l2_normalize(enc.embed_fn(p, i, m)))
  return np.stack(
      [
          np.asarray(f(enc.params, *map(jnp.asarray, enc.tokenize([t], pad_to_multiple_of=1))))[0]
          for t in texts
      ]
  )


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("all-MiniLM-L6-v2", marks=needs_minilm),
        pytest.param("all-mpnet-base-v2", marks=needs_mpnet),
    ],
)
def test_packed_and_padded_match_one_at_a_time(name):
  prep = runner.load_encoder(name)
  texts = TEXTS + [f"a short one {i}" for i in range(20)]  # many short texts share rows
  want = _one_at_a_time(prep.encoder, texts)
  packed = runner.Runner(prep.encoder, normalize=True, batch_size=4)
  assert packed._packed_fwd is not None
  got = packed.embed(texts)
  assert np.abs(got - want).max() <= 1e-6
  padded = runner.Runner(prep.encoder, normalize=True, batch_size=4, pack=False)
  assert np.abs(padded.embed(texts) - want).max() <= 1e-6
  # row order: any permutation of the inputs gives the same vectors, permuted
  perm = np.random.default_rng(0).permutation(len(texts))
  assert np.abs(packed.embed([texts[i] for i in perm]) - want[perm]).max() <= 1e-6


@needs_minilm
def test_runner_matches_torch_with_buckets_and_padding_rows():
  import torch
  import transformers

  texts = TEXTS
  prep = runner.load_encoder("all-MiniLM-L6-v2")
  r = runner.Runner(
      prep.encoder, normalize=prep.spec.normalize, batch_size=4
  )  # 13 rows: a padded last batch
  got = r.embed(texts)

  d = registry.resolve_model_dir("all-MiniLM-L6-v2")
  tok = transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True)
  model = transformers.AutoModel.from_pretrained(str(d), local_files_only=True).eval()
  with torch.inference_mode():
    b = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    h = model(**b)[0]
    m = b["attention_mask"][..., None].float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
  assert np.abs(got - ref).max() <= 1e-4


def _embed_stage(out, model, max_docs):
  """The embed stage: `model`'s train corpus rows of the first `max_docs` documents, blocks of 16."""
  cfg = config.StudyConfig(models=(model,), out=str(out), store=str(out))
  cfg.data.max_docs, cfg.data.n_train, cfg.data.n_val = max_docs, 20_000, 5_000
  cfg.embed.block_rows, cfg.embed.arrays = 16, ("train/corpus",)
  return pipeline.stage("embed")(cfg, pipeline.RunLayout.from_config(cfg))


def _partial_array(root, model, prep, rows, full, n_blocks):
  """The train corpus array a killed embed run leaves: `n_blocks` blocks of 16 rows committed."""
  w = store.open_writer(
      root,
      "wordnet",
      "train",
      "corpus",
      model,
      n_rows=len(rows),
      dim=full.shape[1],
      block_rows=16,
      meta={
          **prep.meta,
          "chunker": data.ChunkConfig().to_json(),
          "dataset_seed": 0,
          "qrels_split": "test",
          "rows_digest": rows.digest,
          "prefix": "",
      },
  )
  for b in range(n_blocks):
    w.write(16 * b, full[16 * b : 16 * (b + 1)])


@needs_minilm
def test_embed_run_skips_complete_and_resumes_partial(tmp_path):
  embed = lambda out: _embed_stage(out, "wordllama", 120)  # train corpus, 120 documents

  embed(tmp_path / "a")
  full = store.read_array(tmp_path / "a", "wordnet", "train", "corpus", "wordllama")
  assert embed(tmp_path / "a") == {"wordllama": "complete"}

  # a partial array (as a killed run leaves it) is resumed at its committed block
  ds = data.load("wordnet")
  rows = data.build_rows(ds, data.split_dataset(ds, max_docs=120)["train"], "corpus")
  prep = runner.load_encoder("wordllama")
  _partial_array(tmp_path / "b", "wordllama", prep, rows, full, n_blocks=2)
  embed(tmp_path / "b")
  again = store.read_array(tmp_path / "b", "wordnet", "train", "corpus", "wordllama")
  assert again.tobytes() == full.tobytes()


@needs_minilm
def test_packed_embed_run_resumes_to_identical_bytes(tmp_path):
  embed = lambda out: _embed_stage(out, "all-MiniLM-L6-v2", 60)  # packed rows, 60 documents

  embed(tmp_path / "a")
  full = store.read_array(tmp_path / "a", "wordnet", "train", "corpus", "all-MiniLM-L6-v2")
  ds = data.load("wordnet")
  rows = data.build_rows(ds, data.split_dataset(ds, max_docs=60)["train"], "corpus")
  assert full.shape[0] == len(rows) > 32
  # each block is what the runner gives that block's texts, in row order
  prep = runner.load_encoder("all-MiniLM-L6-v2")
  r = runner.Runner(prep.encoder, normalize=prep.spec.normalize)
  block = r.embed(list(rows.texts[16:32]))
  assert np.abs(full[16:32] - block).max() <= 1e-6
  assert np.abs(full[16:32] - _one_at_a_time(prep.encoder, rows.texts[16:32])).max() <= 1e-6

  _partial_array(tmp_path / "b", "all-MiniLM-L6-v2", prep, rows, full, n_blocks=1)
  embed(tmp_path / "b")
  again = store.read_array(tmp_path / "b", "wordnet", "train", "corpus", "all-MiniLM-L6-v2")
  assert again.tobytes() == full.tobytes()
