"""Migrating real vector stores end to end: LanceDB, Chroma and zarr, on real WordNet embeddings.

One calibration serves the module: 600 WordNet training glosses embedded with wordllama
(the "old" model, 256-d) in a real LanceDB table on disk, calibrated to
paraphrase-MiniLM-L3-v2 (384-d) with K = 300, WordNet's queries judging them. The
results are migrated into new LanceDB / Chroma / zarr collections and queried with each
engine's own search API; a translate is SIGKILLed mid-run and resumed; bad input is
refused with the collection and id named, and nothing written.
"""

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from lead_jax import config, store
from lead_jax.encoders import registry
from lead_jax.migrate import calibrate, demo, gate, plan, serve, stores, translate

ROOT = pathlib.Path(__file__).resolve().parents[1]
OLD, NEW = "wordllama", "paraphrase-MiniLM-L3-v2"
pytestmark = pytest.mark.skipif(
    not all((registry.models_cache_dir() / m).is_dir() for m in (OLD, NEW)),
    reason="offline models not installed: run `bash scripts/setup.sh`",
)


def _cfg(tmp, **migrate) -> config.StudyConfig:
  if "/bad#" in migrate.get("source", ""):
    migrate.setdefault("vector_field", "embedding")
  cfg = config.StudyConfig(out=str(tmp / "run"))
  cfg.data.max_docs, cfg.data.n_train, cfg.data.n_val = 900, 600, 300
  m = cfg.migrate
  m.source, m.source_model, m.target_model = f"lancedb:{tmp}/db#wn", OLD, NEW
  m.work, m.k, m.folds, m.queries = str(tmp / "mig"), 300, 3, "wordnet"
  m.methods, m.mlp_steps, m.bootstrap, m.probe = ("ridge", "procrustes", "mlp"), 50, 200, 16
  for k, v in migrate.items():
    setattr(m, k, v)
  return cfg


def _tree_digest(path) -> str:
  h = hashlib.sha256()
  for p in sorted(pathlib.Path(path).rglob("*")):
    if p.is_file():
      h.update(str(p.relative_to(path)).encode())
      h.update(p.read_bytes())
  return h.hexdigest()


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("migrate")
  cfg = _cfg(tmp)
  built = demo.build(cfg)
  rec = calibrate.run(cfg)
  return tmp, cfg, built, rec


def _lance_table(tmp, name):
  import lancedb

  return lancedb.connect(str(tmp / "db")).open_table(name)


def test_plan_reports_the_collection_and_the_cost(calibrated):
  tmp, cfg, built, _ = calibrated
  assert built["rows"] == 600 and built["dim"] == 256
  rep = plan.run(cfg)
  assert rep["ok"] and rep["problems"] == []
  assert (rep["rows"], rep["dim"], rep["model"]) == (600, 256, OLD)
  assert abs(rep["norms"]["mean"] - 1) < 1e-5 and rep["norms"]["unit_fraction"] == 1.0
  c = rep["calibration"]
  assert c["k"] == 300 and c["texts_to_embed"] == 300 + c["queries_to_embed"] > 300
  assert c["rate_texts_per_s"] > 0 and c["estimated_seconds"] > 0


def test_calibration_estimates_are_out_of_fold_with_intervals(calibrated):
  tmp, cfg, _, rec = calibrated
  assert rec["source_model"] == OLD and rec["target_model"] == NEW and rec["k"] == 300
  assert rec["primary"] == "ndcg@10_retention" and rec["n_queries"] > 50
  assert rec["method"] in ("ridge", "procrustes", "mlp")
  refs = rec["references"]
  for mm, e in rec["estimates"].items():
    for d in ("translate", "serve"):
      for key in ("self_top1", "self_top10", "ndcg@10_retention"):
        x = e[d][key]
        assert x["lo"] <= x["estimate"] <= x["hi"], (mm, d, key)
      # the stitch is far above the mean estimator on real embeddings
      assert e[d]["ndcg@10_retention"]["lo"] > refs["floor_ndcg@10_retention"], (mm, d)
      assert e[d]["self_top10"]["lo"] > refs["floor_self_top10"], (mm, d)
    t = e["translate"]["corpus_size_trend"]
    assert t["sizes"] == [75, 150, 300] and t["n_collection"] == 600
    assert t["retention"][-1] == pytest.approx(e["translate"]["ndcg@10_retention"]["estimate"])
    assert t["retention"][0] > t["retention"][-1]  # fewer distractors, more retained
  # every saved stitch loads in both directions with the recorded digests
  for mm in rec["methods"]:
    for direction in ("translate", "serve"):
      st = serve.Stitch.load(cfg.migrate.work, direction=direction, method=mm)
      assert st.digest in rec["stitch_digests"][mm].values()
      v = np.full(st.source_dim, 0.05, np.float32)
      np.testing.assert_allclose(st.apply(v), st.apply_jit(v[None])[0], atol=1e-5)
  sample = json.loads((tmp / "mig" / "sample.json").read_text())
  assert len(set(sample["ids"])) == 300 and sorted(set(sample["fold"])) == [0, 1, 2]


def test_sample_is_seeded_and_spread():
  a = calibrate.sample(10_000, 100, 0)
  assert np.array_equal(a, calibrate.sample(10_000, 100, 0))
  assert not np.array_equal(a, calibrate.sample(10_000, 100, 1))
  assert len(set(a.tolist())) == 100 and np.all(np.diff(a) > 0)
  assert np.all(a // 100 == np.arange(100))  # one per stratum
  assert np.array_equal(calibrate.sample(50, 100, 0), np.arange(50))


def _check_translated(col_ids, col_vecs, ids, vecs, st):
  """Every source id exactly once, with the stitch's (normalised) vector."""
  assert len(ids) == len(set(ids)) == len(col_ids)
  assert set(ids) == set(col_ids)
  want = st.apply_jit(col_vecs)
  want /= np.linalg.norm(want, axis=1, keepdims=True)
  pos = {i: k for k, i in enumerate(col_ids)}
  got = np.asarray(vecs, np.float32)
  order = np.asarray([pos[i] for i in ids])
  np.testing.assert_allclose(got, want[order], atol=2e-6)


def test_translate_lancedb_and_query_with_lancedb(calibrated):
  tmp, cfg, _, rec = calibrated
  before = _tree_digest(tmp / "db" / "wn.lance")
  cfg = _cfg(tmp, target=f"lancedb:{tmp}/db#wn_new")
  out = translate.run(cfg)
  assert out["complete"] and out["rows"] == out["written"] == 600
  assert _tree_digest(tmp / "db" / "wn.lance") == before  # the source is never touched
  src = stores.read(cfg.migrate.source, cfg)
  tbl = _lance_table(tmp, "wn_new")
  arrow = tbl.to_arrow()
  st = serve.Stitch.load(cfg.migrate.work, direction="translate")
  vecs = np.asarray(arrow.column("vector").to_pylist(), np.float32)
  _check_translated(src.ids, src.vectors, arrow.column("id").to_pylist(), vecs, st)
  assert arrow.column("text").to_pylist()[:3] == src.texts[:3]
  meta = json.loads(tbl.schema.metadata[b"lead_jax"])
  assert meta["source"] == str(src.address) and meta["source_model"] == OLD
  assert meta["target_model"] == NEW and meta["model"] == NEW
  assert meta["stitch_digest"] == st.digest and meta["k"] == 300
  est = rec["estimates"][rec["method"]]["translate"]["ndcg@10_retention"]
  assert meta["retention_estimate"] == pytest.approx(est["estimate"])
  assert stores.backend(stores.parse(cfg.migrate.target)).read_meta(
      stores.parse(cfg.migrate.target)
  )[stores.COMPLETE_KEY]
  assert not any(k in json.dumps(meta).lower() for k in ("api_key", "sk-"))
  # LanceDB's own search over the translated table, with new-model query vectors
  qids, qtexts, _ = calibrate._queries(cfg, src.ids)
  embed, _, _, (qp, _) = calibrate.encoder(cfg, NEW)
  q = embed([qp + t for t in qtexts[:5]])
  sims = vecs @ (q / np.linalg.norm(q, axis=1, keepdims=True)).T
  ids = arrow.column("id").to_pylist()
  for j in range(5):
    res = tbl.search(q[j]).metric("cosine").limit(10).to_arrow()
    want = [ids[i] for i in np.argsort(-sims[:, j], kind="stable")[:10]]
    assert res.column("id").to_pylist()[:5] == want[:5]
  # a translated document finds itself
  res = tbl.search(vecs[7]).metric("cosine").limit(1).to_arrow()
  assert res.column("id").to_pylist() == [ids[7]]


def _chroma_source(tmp, cfg):
  src = stores.read(cfg.migrate.source, cfg)
  addr = stores.parse(f"chroma:{tmp}/chroma#wordnet")
  b = stores.backend(addr)
  if not b.exists(addr):
    b.create(addr, src.dim, {"model": OLD})
    for s in range(0, src.n, 256):
      b.write(addr, s, src.ids[s : s + 256], src.vectors[s : s + 256], src.texts[s : s + 256])
    b.finish(addr, {"model": OLD})
  return src, addr


def test_translate_chroma_and_query_with_chroma(calibrated):
  import chromadb
  from chromadb.config import Settings

  tmp, cfg, _, _ = calibrated
  src, addr = _chroma_source(tmp, cfg)
  client = chromadb.PersistentClient(str(tmp / "chroma"), Settings(anonymized_telemetry=False))
  before = client.get_collection("wordnet", embedding_function=None).get(include=["embeddings"])
  cfg = _cfg(tmp, source=str(addr), target=f"chroma:{tmp}/chroma#wordnet_new", source_model="")
  out = translate.run(cfg)
  assert out["complete"] and out["written"] == 600
  after = client.get_collection("wordnet", embedding_function=None).get(include=["embeddings"])
  assert after["ids"] == before["ids"]  # the source is never touched
  np.testing.assert_array_equal(after["embeddings"], before["embeddings"])
  col = client.get_collection("wordnet_new", embedding_function=None)
  got = col.get(include=["embeddings", "documents"])
  st = serve.Stitch.load(cfg.migrate.work, direction="translate")
  _check_translated(src.ids, src.vectors, got["ids"], got["embeddings"], st)
  meta = json.loads(col.metadata["lead_jax"])
  assert col.metadata["lead_jax_complete"] is True
  assert meta["source"] == str(addr) and meta["stitch_digest"] == st.digest
  # Chroma's own (HNSW) search: a translated document finds itself
  v = np.asarray(got["embeddings"], np.float32)
  for j in (0, 123, 599):
    res = col.query(query_embeddings=v[j : j + 1], n_results=3)
    assert res["ids"][0][0] == got["ids"][j]


def test_translate_into_lead_jax_store_and_read_it_back(calibrated):
  tmp, cfg, _, _ = calibrated
  cfg = _cfg(tmp, target=f"zarr:{tmp}/store#wordnet/train/corpus/wn_new", batch_rows=128)
  out = translate.run(cfg)
  assert out["complete"]
  src = stores.read(cfg.migrate.source, cfg)
  _, meta, arr = store.open_complete(str(tmp / "store"), "wordnet", "train", "corpus", "wn_new")
  st = serve.Stitch.load(cfg.migrate.work, direction="translate")
  _check_translated(src.ids, src.vectors, src.ids, np.asarray(arr[:].read().result()), st)
  assert meta["stitch_digest"] == st.digest and meta["source_model"] == OLD
  back = stores.read(cfg.migrate.target, cfg)  # zarr as a source: ids and texts from ids.json
  assert back.ids == src.ids and back.texts == src.texts and back.meta["model"] == NEW


def _writes_seen(tmp, backend) -> int:
  """A count that grows with every batch the child commits (read without opening the store)."""
  if backend == "lancedb":
    d = tmp / "db" / "wn_killed.lance" / "_versions"
    return len(os.listdir(d)) if d.is_dir() else 0
  f = tmp / "chroma_kill" / "chroma.sqlite3"
  if not f.exists():
    return 0
  # pages past those of a database holding one empty collection (≈ 2 per 4-row batch)
  empty = tmp / "chroma_empty"
  if not empty.exists():
    stores.backend(stores.parse(f"chroma:{empty}#probe")).create(
        stores.parse(f"chroma:{empty}#probe"), 384, {"model": "x"}
    )
  return max(0, f.stat().st_size - (empty / "chroma.sqlite3").stat().st_size) // 4096


def _target_rows(tmp, backend):
  """(ids, vectors, complete) of the killed run's target, read with the engine's own API."""
  if backend == "chroma":  # embedded Chroma caches a store per process: drop what the
    from chromadb.api.client import SharedSystemClient  # child's writes made stale

    SharedSystemClient.clear_system_cache()
  addr = stores.parse(_killed_target(tmp, backend))
  complete = stores.backend(addr).read_meta(addr)[stores.COMPLETE_KEY]
  if backend == "lancedb":
    arrow = _lance_table(tmp, "wn_killed").to_arrow()
    vecs = np.asarray(arrow.column("vector").to_pylist(), np.float32)
    return arrow.column("id").to_pylist(), vecs, complete
  got = stores._chroma(addr).get_collection("wn_killed", embedding_function=None)
  got = got.get(include=["embeddings"])
  return (
      got["ids"],
      np.asarray(got["embeddings"], np.float32).reshape(len(got["ids"]), -1),
      complete,
  )


def _killed_target(tmp, backend):
  return (
      f"lancedb:{tmp}/db#wn_killed"
      if backend == "lancedb"
      else f"chroma:{tmp}/chroma_kill#wn_killed"
  )


@pytest.mark.parametrize("backend", ["lancedb", "chroma"])
def test_sigkill_mid_translate_then_resume_writes_every_id_once(calibrated, backend):
  tmp, cfg, _, _ = calibrated
  target = _killed_target(tmp, backend)
  cfg = _cfg(tmp, target=target, batch_rows=4)
  args = [
      sys.executable,
      str(ROOT / "experiments" / "migrate.py"),
      "translate",
      f"--out={cfg.out}",
      f"--config.migrate.source={cfg.migrate.source}",
      f"--config.migrate.target={target}",
      f"--config.migrate.work={cfg.migrate.work}",
      "--config.migrate.batch_rows=4",
  ]
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  for attempt, extra in enumerate(([], ["--config.migrate.resume=True"])):
    proc = subprocess.Popen(args + extra, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    start = _writes_seen(tmp, backend)
    t0 = time.time()
    want = (6 + 5 * attempt) * (1 if backend == "lancedb" else 3)
    while _writes_seen(tmp, backend) < start + want and proc.poll() is None:
      assert time.time() - t0 < 120, "translate never started writing"
      time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    ids, _, complete = _target_rows(tmp, backend)
    assert 0 < len(ids) < 600, len(ids)  # killed mid-way: partial, and not marked complete
    assert len(ids) == len(set(ids)) and not complete
  with pytest.raises(stores.MigrateError, match="already exists.*resume"):
    translate.run(cfg)
  cfg.migrate.resume = True
  _target_rows(tmp, backend)  # (drops Chroma's stale per-process cache, as a new process would)
  out = translate.run(cfg)
  assert out["complete"] and out["resumed"] and 0 < out["written"] < 600
  src = stores.read(cfg.migrate.source, cfg)
  st = serve.Stitch.load(cfg.migrate.work, direction="translate")
  ids, vecs, complete = _target_rows(tmp, backend)
  assert complete
  _check_translated(src.ids, src.vectors, ids, vecs, st)
  again = translate.run(cfg)  # resuming a complete target writes nothing
  assert again["written"] == 0 and len(_target_rows(tmp, backend)[0]) == 600


# ----------------------------------------------------------------------------- bad input


def _bad_table(tmp, name, n=40, dim=256, model=OLD, mutate=None):
  import lancedb

  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  ids = [f"doc{i}" for i in range(n)]
  texts = [f"text {i}" for i in range(n)]
  vecs = [list(v) for v in x]
  if mutate:
    mutate(ids, vecs, texts)
  schema = pa.schema(
      [
          pa.field("id", pa.string()),
          pa.field("embedding", pa.list_(pa.float32())),  # LanceDB checks "vector" columns
          pa.field("text", pa.string()),
      ],
      metadata={"lead_jax": json.dumps({"model": model})},
  )
  tbl = pa.table({"id": ids, "embedding": vecs, "text": texts}, schema=schema)
  lancedb.connect(str(tmp / "bad")).create_table(name, tbl)
  return f"lancedb:{tmp}/bad#{name}"


def _set(seq, i, v):
  seq[i] = v


BAD = {
    "null_vector": (lambda ids, v, t: _set(v, 5, None), r"id 'doc5' has no vector"),
    "duplicate_id": (
        lambda ids, v, t: _set(ids, 9, "doc3"),
        r"duplicate id 'doc3' \(rows 3 and 9\)",
    ),
    "missing_id": (lambda ids, v, t: _set(ids, 4, None), r"row 4 has no id"),
    "nan_vector": (lambda ids, v, t: _set(v[11], 0, float("nan")), r"id 'doc11' has a NaN"),
    "missing_text": (lambda ids, v, t: _set(t, 17, None), r"sampled id 'doc17' has no text"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_collections_are_refused_naming_collection_and_id(calibrated, case):
  tmp, _, _, _ = calibrated
  mutate, pattern = BAD[case]
  source = _bad_table(tmp, case, mutate=mutate)
  before = _tree_digest(tmp / "bad" / f"{case}.lance")
  cfg = _cfg(tmp, source=source, k=40, work=str(tmp / f"mig_{case}"))
  with pytest.raises(stores.MigrateError, match=pattern) as e:
    calibrate.run(cfg)
  assert str(stores.parse(source)) in str(e.value)
  cfg.migrate.work = str(tmp / "mig")  # a real calibration: translate refuses it too
  cfg.migrate.target = f"lancedb:{tmp}/bad#{case}_new"
  if case != "missing_text":  # translate copies texts as they are
    with pytest.raises(stores.MigrateError, match=pattern):
      translate.run(cfg)
  assert _tree_digest(tmp / "bad" / f"{case}.lance") == before
  assert not (tmp / "bad" / f"{case}_new.lance").exists()  # nothing half-written
  rep = plan.run(cfg)  # plan reports instead of raising
  assert not rep["ok"] and rep["problems"]


def test_rows_of_other_dims_are_refused_naming_both_ids():
  """LanceDB and Chroma refuse ragged vectors themselves; the reader's own check is here."""
  vecs = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0, 0.0]]
  with pytest.raises(
      stores.MigrateError, match=r"X: dim mismatch: id 'a' has dim 2, id 'c' has dim 3"
  ):
    stores.check_rows("X", ["a", "b", "c"], vecs)
  report = []
  x = stores.check_rows("X", ["a", "b", "c"], vecs, report)
  assert x.shape == (3, 2) and np.isnan(x[2]).all() and len(report) == 2


def test_a_stitch_for_other_models_or_dims_is_refused(calibrated):
  tmp, _, _, _ = calibrated
  other = _bad_table(tmp, "other_model", model="all-MiniLM-L6-v2")
  cfg = _cfg(tmp, source=other, source_model="", target=f"lancedb:{tmp}/bad#om_new")
  with pytest.raises(stores.MigrateError, match=r"maps 'wordllama' .*holds 'all-MiniLM-L6-v2'"):
    translate.run(cfg)
  narrow = _bad_table(tmp, "narrow", dim=128)
  cfg = _cfg(tmp, source=narrow, target=f"lancedb:{tmp}/bad#narrow_new")
  with pytest.raises(stores.MigrateError, match=r"narrow: dim mismatch.*dim 128.*dim 256"):
    translate.run(cfg)
  cfg = _cfg(tmp, target=f"lancedb:{tmp}/bad#x", target_model="all-mpnet-base-v2")
  with pytest.raises(stores.MigrateError, match="new model is 'all-mpnet-base-v2'"):
    translate.run(cfg)
  assert not any((tmp / "bad" / f"{n}.lance").exists() for n in ("om_new", "narrow_new", "x"))
  with pytest.raises(Exception, match="calibrated for 'wordllama' → "):
    serve.Stitch.load(tmp / "mig", source="all-MiniLM-L6-v2")


def test_an_existing_target_or_the_source_itself_is_refused(calibrated):
  tmp, cfg, _, _ = calibrated
  taken = _bad_table(tmp, "taken")
  before = _tree_digest(tmp / "bad" / "taken.lance")
  with pytest.raises(stores.MigrateError, match=r"bad#taken: the target collection already exists"):
    translate.run(_cfg(tmp, target=taken))
  with pytest.raises(stores.MigrateError, match="cannot resume: it was written with source"):
    translate.run(_cfg(tmp, target=taken, resume=True))
  assert _tree_digest(tmp / "bad" / "taken.lance") == before
  with pytest.raises(stores.MigrateError, match="the target is the source"):
    translate.run(_cfg(tmp, target=cfg.migrate.source))
  with pytest.raises(stores.MigrateError, match="expected <backend>:<location>#<name>"):
    translate.run(_cfg(tmp, target="/tmp/nowhere"))


# ----------------------------------------------------------------------------- gate


def test_gate_verdicts_and_summary(calibrated):
  tmp, cfg, _, rec = calibrated
  est = {"estimate": 0.8, "lo": 0.75, "hi": 0.85}
  assert gate.verdict(est, 0.02, 0.7, 0.5)[0] == "PASS"
  assert gate.verdict(est, 0.02, 0.9, 0.5)[0] == "WARN"
  assert gate.verdict(est, 0.02, 0.95, 0.9)[0] == "FAIL"
  assert gate.verdict(est, 0.9, 0.5, 0.1)[0] == "FAIL"  # no better than the mean estimator
  e = rec["estimates"][rec["method"]]["translate"]["ndcg@10_retention"]
  for pass_at, fail_below, want in (
      (e["lo"] - 0.01, 0.0, "PASS"),
      (e["lo"] + 0.01, e["estimate"] - 0.01, "WARN"),
      (1.0, e["estimate"] + 0.01, "FAIL"),
  ):
    g = gate.run(_cfg(tmp, pass_retention=pass_at, fail_retention=fail_below))
    assert g["verdict"] == want and g["exit_code"] == gate.EXIT[want]
    assert g["floor"] == pytest.approx(rec["references"]["floor_ndcg@10_retention"])
    page = (tmp / "mig" / "gate.html").read_text()
    assert want in page and "floor" in page and "ceiling" in page and "Corpus size" in page
    assert json.loads((tmp / "mig" / "gate.json").read_text())["verdict"] == want


def test_binary_gate_exit_code_and_bad_input_line(calibrated):
  tmp, cfg, _, rec = calibrated
  e = rec["estimates"][rec["method"]]["translate"]["ndcg@10_retention"]
  base = [sys.executable, str(ROOT / "experiments" / "migrate.py")]
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  run = lambda *a: subprocess.run(
      base + list(a), env=env, capture_output=True, text=True, timeout=120
  )
  r = run(
      "gate",
      f"--config.migrate.work={tmp / 'mig'}",
      "--config.migrate.pass_retention=1.0",
      f"--config.migrate.fail_retention={e['estimate'] - 0.01}",
  )
  assert r.returncode == 1 and r.stdout.startswith("WARN"), r.stderr[-2000:]
  bad = _bad_table(tmp, "cli_dup", mutate=BAD["duplicate_id"][0])
  r = run(
      "translate",
      f"--config.migrate.source={bad}",
      f"--config.migrate.work={tmp / 'mig'}",
      f"--config.migrate.target=lancedb:{tmp}/bad#cli_new",
  )
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith(f"error: lancedb:{tmp}/bad#cli_dup")


def test_a_study_store_array_is_a_source_with_the_dataset_texts(calibrated):
  """zarr:… of the embed stage's own array: ids and texts rebuilt from the data settings."""
  from lead_jax import pipeline

  tmp, cfg, _, _ = calibrated
  study = _cfg(tmp)
  study.out, study.models, study.embed.arrays = str(tmp / "study"), (OLD,), ("train/corpus",)
  pipeline.stage("embed")(study, pipeline.RunLayout.from_config(study))
  addr = f"zarr:{tmp}/study/store#wordnet/train/corpus/{OLD}"
  col = stores.read(addr, study)
  lance = stores.read(cfg.migrate.source, cfg)  # build_demo: the same rows, the same model
  assert col.ids == lance.ids and col.texts == lance.texts and col.meta["model"] == OLD
  np.testing.assert_allclose(col.vectors, lance.vectors, atol=1e-5)
  study.data.max_docs = 800  # other rows: refused, naming the array and the settings
  with pytest.raises(stores.MigrateError, match=r"are not this array's"):
    stores.read(addr, study)
