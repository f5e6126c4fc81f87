"""Model registry: specs, duplicate names, dir resolution, sentence-transformers overrides.

.venv/bin/python -m pytest -q tests/test_registry.py
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from lead_jax.encoders import install, pooling, registry
from tests._encoder_helpers import installed_model_dir


def test_registry_covers_lead_models_and_offline_defaults():
  for n in registry.LEAD_OPEN_MODELS + registry.OFFLINE_DEFAULTS:
    s = registry.get(n)
    assert s.name == n and s.pooling in ("cls", "mean")
    assert s.hf_id.split("/")[1] == n or n == "wordllama"
  assert set(registry.OFFLINE_DEFAULTS) == set(install.DEFAULT_MODELS)
  assert registry.names("openai") == ["text-embedding-3-small", "text-embedding-3-large"]
  assert registry.get("text-embedding-3-large").dim == 3072


@pytest.mark.parametrize(
    "name,hf_id,arch,pooling,qp,pp,dim",
    [
        ("bge-small-en-v1.5", "BAAI/bge-small-en-v1.5", "bert", "cls", registry.BGE_QUERY, "", 384),
        ("e5-large-v2", "intfloat/e5-large-v2", "bert", "mean", "query: ", "passage: ", 1024),
        ("gte-base", "thenlper/gte-base", "bert", "mean", "", "", 768),
        ("UAE-Large-V1", "WhereIsAI/UAE-Large-V1", "bert", "cls", registry.BGE_QUERY, "", 1024),
        (
            "mxbai-embed-large-v1",
            "mixedbread-ai/mxbai-embed-large-v1",
            "bert",
            "cls",
            registry.BGE_QUERY,
            "",
            1024,
        ),
        ("gtr-t5-large", "sentence-transformers/gtr-t5-large", "t5", "mean", "", "", 768),
        (
            "multilingual-e5-base",
            "intfloat/multilingual-e5-base",
            "xlm_roberta",
            "mean",
            "query: ",
            "passage: ",
            768,
        ),
        (
            "all-mpnet-base-v2",
            "sentence-transformers/all-mpnet-base-v2",
            "mpnet",
            "mean",
            "",
            "",
            768,
        ),
        ("wordllama", "dleemiller/word-llama-l2-supercat", "static", "mean", "", "", 256),
    ],
)
def test_card_settings(name, hf_id, arch, pooling, qp, pp, dim):
  s = registry.get(name)
  assert (s.hf_id, s.arch, s.pooling, s.query_prefix, s.passage_prefix, s.dim) == (
      hf_id,
      arch,
      pooling,
      qp,
      pp,
      dim,
  )


def test_duplicate_and_invalid_specs():
  with pytest.raises(ValueError, match="already registered"):
    registry.register(registry.get("gte-small"))
  with pytest.raises(ValueError, match="arch"):
    registry.ModelSpec("x", "o/x", "gpt", "mean", True, dim=4)
  with pytest.raises(ValueError, match="pooling"):
    registry.ModelSpec("x", "o/x", "bert", "max", True, dim=4)
  with pytest.raises(ValueError, match="pypi"):
    registry.ModelSpec("x", "o/x", "bert", "mean", True, dim=4, source="pypi")
  with pytest.raises(ValueError, match="max_length"):
    registry.ModelSpec("x", "o/x", "bert", "mean", True, max_length=0)
  # An unregistered local dir gets an ad-hoc spec with dim unknown (0), as the runner builds it.
  assert (
      registry.ModelSpec(name="d", hf_id="d", arch="bert", pooling="mean", normalize=True).dim == 0
  )
  with pytest.raises(KeyError, match="unknown model"):
    registry.get("no-such-model")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
  cache, hub = tmp_path / "models", tmp_path / "hub"
  monkeypatch.setenv("LEAD_JAX_MODELS", str(cache))
  monkeypatch.setenv("HF_HUB_CACHE", str(hub))
  return cache, hub


def test_resolve_order(isolated, tmp_path):
  cache, hub = isolated
  explicit = tmp_path / "somewhere"
  explicit.mkdir()
  assert registry.resolve_model_dir(str(explicit)) == explicit

  repo = hub / "models--BAAI--bge-small-en-v1.5"
  (repo / "snapshots" / "old").mkdir(parents=True)
  (repo / "snapshots" / "abc123").mkdir(parents=True)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text("abc123\n")
  assert registry.resolve_model_dir("bge-small-en-v1.5") == repo / "snapshots" / "abc123"
  (cache / "bge-small-en-v1.5").mkdir(parents=True)  # the lead_jax cache wins over the hub cache
  assert registry.resolve_model_dir("bge-small-en-v1.5") == cache / "bge-small-en-v1.5"
  # An unregistered org/name is looked up in the hub cache too.
  (hub / "models--acme--tiny" / "snapshots" / "r1").mkdir(parents=True)
  assert registry.resolve_model_dir("acme/tiny") == hub / "models--acme--tiny" / "snapshots" / "r1"


def test_resolve_errors_say_where_and_how(isolated):
  cache, hub = isolated
  with pytest.raises(FileNotFoundError) as e:
    registry.resolve_model_dir("wordllama")
  msg = str(e.value)
  assert (
      str(cache / "wordllama") in msg
      and "python -m lead_jax.encoders.install --models=wordllama" in msg
  )
  assert "models--dleemiller--word-llama-l2-supercat" in msg
  with pytest.raises(
      FileNotFoundError, match=r"(?s)models--intfloat--e5-base-v2.*nothing is downloaded"
  ):
    registry.resolve_model_dir("e5-base-v2")
  with pytest.raises(FileNotFoundError, match="not registered"):
    registry.resolve_model_dir("nonexistent-model")
  with pytest.raises(FileNotFoundError, match="OpenAI"):
    registry.resolve_model_dir("text-embedding-3-small")


def test_spec_for_dir_reads_sentence_transformers_files(tmp_path):
  spec = registry.get("gte-small")  # registry: mean, 512
  d = tmp_path / "m"
  (d / "1_Pooling").mkdir(parents=True)
  assert registry.spec_for_dir(spec, d) == spec  # no ST files: registry values stand
  (d / "1_Pooling" / "config.json").write_text(
      json.dumps(
          {
              "word_embedding_dimension": 384,
              "pooling_mode_cls_token": True,
              "pooling_mode_mean_tokens": False,
          }
      )
  )
  (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
  modules = pooling.st_modules_json(
      ("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")
  )
  (d / "modules.json").write_text(json.dumps(modules))
  got = registry.spec_for_dir(dataclasses.replace(spec, normalize=False), d)
  assert (got.pooling, got.max_length, got.normalize, got.query_prefix) == ("cls", 128, True, "")
  (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "max"}))
  with pytest.raises(ValueError, match="not 'cls' or 'mean'"):
    registry.spec_for_dir(spec, d)


@pytest.mark.parametrize("name", registry.OFFLINE_DEFAULTS)
def test_installed_dirs_agree_with_registry(name):
  d = installed_model_dir(name)
  assert registry.resolve_model_dir(name) == d
  spec = registry.get(name)
  assert registry.spec_for_dir(spec, d) == spec  # files and registry say the same thing
