"""Encoding runner: bucketed, length-sorted, padded batches give the PyTorch reference embeddings;
the embed stage skips complete arrays and resumes partial ones to identical bytes."""

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


def test_bucket_lengths():
  assert runner.bucket_lengths(256) == (16, 32, 64, 128, 256)
  assert runner.bucket_lengths(384) == (16, 32, 64, 128, 256, 384)
  assert runner.bucket_lengths(16) == (16,)


@needs_minilm
def test_runner_matches_torch_with_buckets_and_padding_rows():
  import torch
  import transformers

  texts = [
      ("word " * n).strip() + f" {n} ü 漢" for n in (0, 1, 3, 7, 15, 30, 60, 120, 300, 2, 5, 9, 40)
  ]
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


@needs_minilm
def test_embed_run_skips_complete_and_resumes_partial(tmp_path):
  def embed(out):  # the embed stage: wordllama's train corpus rows of 120 documents
    cfg = config.StudyConfig(models=("wordllama",), out=str(out), store=str(out))
    cfg.data.max_docs, cfg.data.n_train, cfg.data.n_val = 120, 20_000, 5_000
    cfg.embed.block_rows, cfg.embed.arrays = 16, ("train/corpus",)
    return pipeline.stage("embed")(cfg, pipeline.RunLayout.from_config(cfg))

  embed(tmp_path / "a")
  full = store.read_array(tmp_path / "a", "wordnet", "train", "corpus", "wordllama")
  assert embed(tmp_path / "a") == {"wordllama": "complete"}

  # a partial array (as a killed run leaves it) is resumed at its committed block
  ds = data.load("wordnet")
  rows = data.build_rows(ds, data.split_dataset(ds, max_docs=120)["train"], "corpus")
  prep = runner.load_encoder("wordllama")
  w = store.open_writer(
      tmp_path / "b",
      "wordnet",
      "train",
      "corpus",
      "wordllama",
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
  w.write(0, full[:16])
  w.write(16, full[16:32])
  embed(tmp_path / "b")
  again = store.read_array(tmp_path / "b", "wordnet", "train", "corpus", "wordllama")
  assert again.tobytes() == full.tobytes()
