"""OpenAI encoder against a local fake server, through the real openai client."""

import collections
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lead_jax import data, store
from lead_jax.encoders import openai_encoder as oe
from tests.openai_fake_server import FakeOpenAI, fake_embedding

ROOT = pathlib.Path(__file__).resolve().parents[1]
KEY = "sk-test-9f8e7d6c5b4a-SECRET"
TEXTS = [f"text number {i} " + "word " * (i % 7) for i in range(40)]


def embedder(fake, **cfg):
  cfg = {
      "model": "text-embedding-3-small",
      "batch_size": 8,
      "concurrency": 3,
      "timeout_s": 0.5,
      "backoff_s": 0.01,
      "max_backoff_s": 0.05,
      **cfg,
  }
  return oe.OpenAIEmbedder(oe.OpenAIConfig(**cfg), api_key=KEY, base_url=fake.base_url)


def expected(texts, model="text-embedding-3-small", dim=1536):
  return np.stack([fake_embedding(model, t, dim) for t in texts])


@pytest.mark.parametrize("fmt", ["float", "base64"])
def test_embeds_in_order_both_encodings(fmt):
  with FakeOpenAI(key=KEY) as fake:
    e = embedder(fake, encoding_format=fmt, dimensions=64)
    out = e.embed(TEXTS)
  np.testing.assert_allclose(out, expected(TEXTS, dim=64), atol=1e-6)
  assert len(fake.log) == 5  # 40 inputs / 8 per request
  assert collections.Counter(fake.requested_texts()) == collections.Counter(TEXTS)


def test_plan_respects_input_and_token_caps():
  with FakeOpenAI(key=KEY) as fake:
    e = embedder(fake, batch_size=4, max_request_tokens=10)
  spans = e.plan([3, 3, 3, 3, 3, 9, 1, 1, 1, 1, 1, 12])
  assert spans == [(0, 3), (3, 5), (5, 7), (7, 11), (11, 12)]
  # every input in exactly one request, in order; an input over the token cap goes alone
  assert [i for s, t in spans for i in range(s, t)] == list(range(12))


def test_every_fault_is_retried_and_rows_come_once_in_order():
  faults = ["429", "500", "hang", "truncated", "wrong_rows"]
  with FakeOpenAI(key=KEY, faults=faults, hang_s=1.5) as fake:
    e = embedder(fake, concurrency=1)
    out = e.embed(TEXTS)
  np.testing.assert_allclose(out, expected(TEXTS), atol=1e-6)
  assert [r["fault"] for r in fake.log[:5]] == faults
  assert e.retries == 5
  ok = fake.requested_texts()
  assert ok == TEXTS  # exactly once each, in order (concurrency 1)


def test_retry_after_is_honoured_and_retries_are_bounded():
  slept = []
  with FakeOpenAI(key=KEY, faults=["429"], retry_after="7") as fake:
    e = oe.OpenAIEmbedder(
        oe.OpenAIConfig("text-embedding-3-small", backoff_s=0.01, max_backoff_s=60),
        api_key=KEY,
        base_url=fake.base_url,
        sleep=slept.append,
    )
    e.embed(TEXTS[:3])
  assert slept and slept[0] >= 7.0
  with FakeOpenAI(key=KEY, faults=["500"] * 10) as fake:
    e = embedder(fake, max_retries=3)
    with pytest.raises(oe.OpenAIEmbeddingError, match="giving up after 4 attempts"):
      e.embed(TEXTS[:3])
    assert len(fake.log) == 4


def test_auth_and_unknown_model_fail_at_once_without_leaking_key():
  with FakeOpenAI(key="sk-the-right-one") as fake:
    e = embedder(fake)
    with pytest.raises(oe.OpenAIEmbeddingError, match="credentials") as err:
      e.embed(TEXTS[:2])
    assert KEY not in str(err.value) and len(fake.log) == 0
  with FakeOpenAI(key=KEY) as fake:
    e = embedder(fake, model="text-embedding-9-huge")
    with pytest.raises(oe.OpenAIEmbeddingError, match="unknown model 'text-embedding-9-huge'"):
      e.embed(TEXTS[:2])
  assert oe.redact(f"bad key {KEY}!", KEY) == "bad key [REDACTED]!"
  assert oe.safe_base_url("https://user:pw@host:8443/v1?token=x") == "https://host:8443/v1"


def test_long_input_truncated_to_8191_tokens():
  long = "hello world " * 6000  # ~12k cl100k tokens
  with FakeOpenAI(key=KEY) as fake:
    e = embedder(fake)
    e.embed(["short", long])
  sent = fake.requested_texts()[1]
  assert len(data.chunking.encoding().encode_ordinary(sent)) == 8191
  assert e.truncated == 1 and long.startswith(sent)


def _run_embed(fake, out, *extra, timeout=300):
  env = {
      **os.environ,
      "OPENAI_API_KEY": KEY,
      "OPENAI_BASE_URL": fake.base_url,
      "PYTHONPATH": str(ROOT),
  }
  cmd = [
      sys.executable,
      str(ROOT / "experiments" / "embed.py"),
      "--dataset=wordnet",
      "--models=openai/text-embedding-3-small",
      f"--out={out.parent / 'run'}",
      f"--config.store={out}",
      *extra,
  ]
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _all_files_bytes(root: pathlib.Path) -> bytes:
  return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_embed_binary_flaky_server_resumes_after_kill_and_never_writes_key(tmp_path):
  out = tmp_path / "store"
  args = [
      "--config.embed.arrays=('train/corpus',)",
      "--config.data.max_docs=300",
      "--config.data.n_train=20000",  # split_dataset's default ratio, as the rows below
      "--config.data.n_val=5000",
      "--config.embed.openai_batch_size=16",
      "--config.embed.block_rows=32",
      "--config.embed.openai_concurrency=2",
      "--config.embed.openai_timeout_s=1",
      "--config.embed.openai_dimensions=32",
  ]
  ds = data.load("wordnet")
  rows = data.build_rows(ds, data.split_dataset(ds, max_docs=300)["train"], "corpus")
  assert len(set(rows.texts)) == len(rows.texts)  # so texts identify rows below
  progress = (
      store.array_dir(out, "wordnet", "train", "corpus", "openai/text-embedding-3-small")
      / "progress.json"
  )

  with FakeOpenAI(key=KEY, delay_s=0.15, faults=["500", "429"]) as fake:
    proc = _run_embed(fake, out, *args)
    deadline = time.time() + 120
    while time.time() < deadline:
      try:
        if json.loads(progress.read_text())["committed_rows"] >= 96:
          break
      except (FileNotFoundError, ValueError):
        pass
      time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    log1, _ = proc.communicate()
    committed = json.loads(progress.read_text())["committed_rows"]
    assert 96 <= committed < len(rows), committed
    first = list(fake.requested_texts())

    fake.flaky, fake.delay_s = 0.3, 0.0  # the rerun meets a flaky server
    proc = _run_embed(fake, out, *args)
    log2, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log2[-3000:]
    second = fake.requested_texts()[len(first) :]

  done = set(rows.texts[:committed])
  assert not done & set(second), "rows of committed blocks were requested again"
  assert set(rows.texts[committed:]) <= set(second)
  x = store.read_array(out, "wordnet", "train", "corpus", "openai/text-embedding-3-small")
  np.testing.assert_allclose(x, expected(rows.texts, dim=32), atol=1e-6)  # every row, in order
  meta = store.read_meta(out, "wordnet", "train", "corpus", "openai/text-embedding-3-small")
  assert meta["source"] == "openai" and meta["retries"] >= 0 and "truncated_inputs" in meta
  for blob, where in (
      (_all_files_bytes(out), "store files"),
      (log1.encode(), "log 1"),
      (log2.encode(), "log 2"),
  ):
    assert KEY.encode() not in blob, f"key leaked into {where}"
