"""Calibrating to an OpenAI model (a local fake server): it works, and the key is never written."""

import json
import pathlib

import numpy as np
import pyarrow as pa

from lead_jax import config
from lead_jax.migrate import calibrate, gate, translate
from tests.openai_fake_server import FakeOpenAI

KEY = "sk-test-migrate-0a1b2c3d-SECRET"


def _source(tmp, n=90, dim=32):
  import lancedb

  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  schema = pa.schema(
      [
          pa.field("id", pa.string()),
          pa.field("vector", pa.list_(pa.float32(), dim)),
          pa.field("text", pa.string()),
      ],
      metadata={"lead_jax": json.dumps({"model": "old-model"})},
  )
  vec = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim)
  tbl = pa.table(
      {"id": [f"d{i}" for i in range(n)], "vector": vec, "text": [f"t {i}" for i in range(n)]},
      schema=schema,
  )
  lancedb.connect(str(tmp / "db")).create_table("docs", tbl)


def test_openai_target_model_and_no_key_anywhere(tmp_path, monkeypatch, capfd):
  _source(tmp_path)
  with FakeOpenAI(key=KEY) as fake:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    cfg = config.StudyConfig(out=str(tmp_path / "run"))
    m = cfg.migrate
    m.source, m.target = f"lancedb:{tmp_path}/db#docs", f"lancedb:{tmp_path}/db#docs_oa"
    m.target_model, m.work, m.k, m.folds = (
        "openai/text-embedding-3-small",
        str(tmp_path / "w"),
        60,
        3,
    )
    m.methods, m.bootstrap = ("procrustes",), 50  # the engine's ridge compiles are tested elsewhere
    cfg.embed.openai_dimensions = 64  # the API's `dimensions`: a small fit
    rec = calibrate.run(cfg)
    assert rec["target_dim"] == 64 and len(fake.requested_texts()) >= 60
    gate.run(cfg)
    out = translate.run(cfg)
    assert out["complete"] and out["rows"] == 90
  blob = b"".join(p.read_bytes() for p in pathlib.Path(tmp_path).rglob("*") if p.is_file())
  assert KEY.encode() not in blob
  logs = capfd.readouterr()
  assert KEY not in logs.out and KEY not in logs.err
