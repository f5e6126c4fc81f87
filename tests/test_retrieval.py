"""Retrieval metrics, exact top-k, overlap, translation, mutual-kNN, and translate_store."""

import itertools
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lead_jax import store
from lead_jax.eval import retrieval as R
from lead_jax.stitch import io as stitch_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _chunked(rng, n_docs, dim, max_chunks=3):
  """Docs with 1..max_chunks chunk rows each: (rows [N, d], doc_of_row [N], doc centres)."""
  centres = rng.normal(size=(n_docs, dim))
  counts = rng.integers(1, max_chunks + 1, size=n_docs)
  doc_of_row = np.repeat(np.arange(n_docs), counts).astype(np.int32)
  rows = centres[doc_of_row] + 0.5 * rng.normal(size=(len(doc_of_row), dim))
  return rows.astype(np.float32), doc_of_row, centres


# ----------------------------------------------------------------------------- top-k


@pytest.mark.parametrize("block", [7, 16, 4096])
def test_topk_equals_numpy_argsort(block):
  rng = np.random.default_rng(0)
  rows, doc_of_row, _ = _chunked(rng, 61, 12)
  q = rng.normal(size=(23, 12)).astype(np.float32)
  vals, ids = R.topk_search(q, rows, 10, doc_of_row, block=block, query_block=8)
  ref = R.doc_scores_reference(q, rows, doc_of_row)
  want = np.argsort(-ref, axis=1, kind="stable")[:, :10]
  np.testing.assert_array_equal(ids, want)
  np.testing.assert_allclose(vals, np.take_along_axis(ref, want, 1), rtol=1e-5, atol=1e-5)
  # chunk level (every row its own document) and k larger than the corpus
  vals, ids = R.topk_search(q, rows[:9], 12, None, block=4)
  ref = R.doc_scores_reference(q, rows[:9])
  np.testing.assert_array_equal(ids[:, :9], np.argsort(-ref, axis=1, kind="stable"))
  assert (ids[:, 9:] == -1).all() and np.isneginf(vals[:, 9:]).all()


def test_topk_ties_lower_index_first():
  # one-hot rows: scores are exact, and rows 0, 2, 5 tie (same direction)
  eye = np.eye(4, dtype=np.float32)
  corpus = eye[[0, 1, 0, 2, 3, 0]]
  q = np.asarray([[1.0, 0.5, 0.5, 0.0]], np.float32)
  _, ids = R.topk_search(q, corpus, 6, None, block=2)
  s = corpus @ q[0]
  np.testing.assert_array_equal(ids[0], np.argsort(-s, kind="stable"))
  assert ids[0, :3].tolist() == [0, 2, 5]
  # document level (max chunk): docs 0, 1, 3 score 1 (tied), doc 2 scores 0.5
  _, ids = R.topk_search(q, corpus, 4, np.asarray([0, 0, 1, 2, 2, 3]), block=2)
  assert ids[0].tolist() == [0, 1, 3, 2]


def test_doc_index_and_contiguity():
  d, ids = R.doc_index(["a", "a", "b", "c", "c"])
  assert d.tolist() == [0, 0, 1, 2, 2] and ids == ("a", "b", "c")
  with pytest.raises(ValueError, match="contiguous"):
    R.doc_index(["a", "b", "a"])


def test_sharded_search_matches_single_device():
  code = textwrap.dedent("""
      import numpy as np, jax
      from lead_jax.eval import retrieval as R
      assert len(jax.devices()) == 4
      rng = np.random.default_rng(1)
      counts = rng.integers(1, 4, size=50)
      dor = np.repeat(np.arange(50), counts).astype(np.int32)
      x = rng.normal(size=(len(dor), 8)).astype(np.float32)
      q = rng.normal(size=(13, 8)).astype(np.float32)
      mesh = jax.make_mesh((4,), ("data",))
      a = R.search(q, R.prepare_corpus(x, dor, block=8, mesh=mesh), 7)
      b = R.search(q, R.prepare_corpus(x, dor, block=8), 7)
      np.testing.assert_array_equal(a[1], b[1]); np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
      k1 = R.knn(x, 5, block=8, mesh=mesh); k2 = R.knn(x, 5, block=8)
      np.testing.assert_array_equal(k1, k2)
      print("OK")
  """)
  env = {
      **os.environ,
      "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
      "JAX_PLATFORMS": "cpu",
  }
  out = subprocess.run(
      [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


# ----------------------------------------------------------------------------- IR metrics


def test_hand_computed_metrics():
  qrels = R.qrels_from_dict(
      {"q0": {"d1": 2, "d3": 1}, "q1": {"d2": 1, "d0": 0}, "q2": {"d0": 0}},
      ["q0", "q1", "q2"],
      ["d0", "d1", "d2", "d3"],
  )
  ranked = np.asarray([[0, 1, 2, 3], [2, 0, 1, 3], [0, 1, 2, 3]])
  per = R.ir_metrics_per_query(ranked, qrels)
  # q0: d1 (gain 2) at rank 2, d3 (gain 1) at rank 4; ideal: 2 at rank 1, 1 at rank 2
  dcg = 2 / math.log2(3) + 1 / math.log2(5)
  idcg = 2 / math.log2(2) + 1 / math.log2(3)
  assert per["ndcg@10"][0] == pytest.approx(dcg / idcg, abs=1e-12)
  assert per["recall@1"][0] == 0 and per["recall@10"][0] == 1 and per["mrr@10"][0] == 0.5
  # q1: its one relevant doc first
  assert per["ndcg@10"][1] == 1 and per["recall@1"][1] == 1 and per["mrr@10"][1] == 1
  mean = R.mean_metrics(per, qrels)  # q2 has no relevant doc: not scored
  assert R.scored_queries(qrels).tolist() == [True, True, False]
  assert mean["ndcg@10"] == pytest.approx((dcg / idcg + 1) / 2)
  assert mean["mrr@10"] == pytest.approx(0.75) and mean["recall@1"] == pytest.approx(0.5)
  # MRR is cut at 10: a first relevant doc at rank 11 scores 0
  q = R.qrels_from_dict({"q": {"d10": 1}}, ["q"], [f"d{i}" for i in range(12)])
  assert R.ir_metrics_per_query(np.arange(12)[None], q)["mrr@10"][0] == 0
  with pytest.raises(KeyError, match="no corpus rows"):
    R.qrels_from_dict({"q0": {"dx": 1}}, ["q0"], ["d0"])


def test_against_pytrec_eval():
  pytrec_eval = pytest.importorskip("pytrec_eval")
  rng = np.random.default_rng(3)
  rows, dor, centres = _chunked(rng, 120, 16)
  n_q = 40
  q = centres[rng.integers(0, 120, n_q)] + rng.normal(size=(n_q, 16))
  qids, dids = [f"q{i}" for i in range(n_q)], [f"d{i:03d}" for i in range(120)]
  qrels_d = {}
  for i in range(n_q):
    judged = rng.choice(120, size=rng.integers(1, 6), replace=False)
    qrels_d[qids[i]] = {dids[d]: int(rng.integers(0, 3)) for d in judged}
    qrels_d[qids[i]][dids[judged[0]]] = int(rng.integers(1, 3))  # ≥ 1 relevant
  qrels = R.qrels_from_dict(qrels_d, qids, dids)
  mean, ids = R.evaluate(q, R.prepare_corpus(rows, dor, block=32), qrels)
  scores = R.doc_scores_reference(q, rows, dor)
  run_full = {qids[i]: {dids[d]: float(scores[i, d]) for d in range(120)} for i in range(n_q)}
  top10 = np.argsort(-scores, axis=1)[:, :10]
  run_10 = {qids[i]: {dids[d]: float(scores[i, d]) for d in top10[i]} for i in range(n_q)}
  ev = pytrec_eval.RelevanceEvaluator(qrels_d, {"ndcg_cut.10", "recall.1,10,100"})
  res = ev.evaluate(run_full)
  rr = pytrec_eval.RelevanceEvaluator(qrels_d, {"recip_rank"}).evaluate(run_10)
  ref = {
      "ndcg@10": np.mean([r["ndcg_cut_10"] for r in res.values()]),
      "recall@1": np.mean([r["recall_1"] for r in res.values()]),
      "recall@10": np.mean([r["recall_10"] for r in res.values()]),
      "recall@100": np.mean([r["recall_100"] for r in res.values()]),
      "mrr@10": np.mean([r["recip_rank"] for r in rr.values()]),
  }
  for k, v in ref.items():
    assert mean[k] == pytest.approx(v, abs=1e-6), k


def test_random_ranking_is_the_mean_over_all_orders():
  qrels = R.qrels_from_dict(
      {"a": {"d1": 2, "d4": 1, "d0": 0}, "b": {"d5": 1}}, ["a", "b"], [f"d{i}" for i in range(6)]
  )
  perms = np.asarray(list(itertools.permutations(range(6))))
  closed = R.random_ranking_metrics(qrels)
  for qi, qid in enumerate(["a", "b"]):
    rep = R.qrels_from_dict(
        {
            f"{qid}{j}": {
                f"d{d}": g for d, g in zip(qrels.d[qrels.q == qi], qrels.grade[qrels.q == qi])
            }
            for j in range(len(perms))
        },
        [f"{qid}{j}" for j in range(len(perms))],
        [f"d{i}" for i in range(6)],
    )
    brute = R.ir_metrics_per_query(perms, rep)
    for k in R.METRICS:
      assert closed[k][qi] == pytest.approx(brute[k].mean(), abs=1e-12), (qid, k)


# ----------------------------------------------------------------------------- stitched retrieval


def _planted(d=32, n_docs=300, n_q=200, seed=0):
  rng = np.random.default_rng(seed)
  rows, dor, centres = _chunked(rng, n_docs, d, max_chunks=2)
  rel = rng.integers(0, n_docs, n_q)
  q_a = centres[rel] + 0.7 * rng.normal(size=(n_q, d))
  qrels = R.Qrels(
      np.arange(n_q, dtype=np.int32), rel.astype(np.int32), np.ones(n_q, np.int32), n_q, n_docs
  )
  rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
  return rows, dor, q_a, qrels, rot, rng


def test_planted_rotation_and_identity_retention_one():
  rows, dor, q_a, qrels, rot, _ = _planted()
  c_b, q_b = rows @ rot, q_a @ rot  # model B = a rotation of model A
  native_b, ids_b = R.evaluate(q_b, R.prepare_corpus(c_b, dor), qrels)
  assert native_b["ndcg@10"] > 0.5
  for w in (rot, np.eye(rot.shape[0])):
    target_q = q_b if w is rot else q_a
    native, ids_n = R.evaluate(target_q, R.prepare_corpus(rows @ w, dor), qrels)
    stitched, ids_s = R.evaluate(target_q, R.prepare_corpus(rows @ w, dor, block=64), qrels)
    for k, v in R.retention(stitched, native).items():
      assert v == pytest.approx(1.0, abs=1e-9), k
    assert R.overlap(ids_s, ids_n, [10])["jaccard@10"] == 1.0
  # retention of the rotation stitch against B's native metrics
  st, _ = R.evaluate(q_b, R.prepare_corpus(rows.astype(np.float64) @ rot, dor), qrels)
  assert R.retention(st, native_b)["ndcg@10"] == pytest.approx(1.0, abs=1e-9)


def test_random_stitch_retention_near_chance():
  rows, dor, q_a, qrels, rot, rng = _planted(d=64)
  c_b, q_b = rows @ rot, q_a @ rot
  native, _ = R.evaluate(q_b, R.prepare_corpus(c_b, dor), qrels)
  w = rng.normal(size=(64, 64))
  stitched, _ = R.evaluate(q_b, R.prepare_corpus(rows @ w, dor), qrels)
  chance = R.mean_metrics(R.random_ranking_metrics(qrels), qrels)
  ret = R.retention(stitched, native)
  assert ret["ndcg@10"] < 0.25
  assert abs(stitched["recall@100"] - chance["recall@100"]) < 0.15
  # the mean estimator: every row the same vector → every document ties
  mu = c_b.mean(0)
  vals, _ = R.topk_search(q_b, np.broadcast_to(mu, c_b.shape), 5, dor)
  np.testing.assert_array_equal(vals, vals[:, :1].repeat(5, 1))


# ----------------------------------------------------------------------------- overlap, translation, kNN


def test_overlap_hand_cases():
  a = np.asarray([[0, 1, 2], [0, 1, 2], [0, 1, 2]])
  b = np.asarray([[0, 1, 2], [5, 6, 7], [1, 0, 5]])
  np.testing.assert_allclose(R.jaccard_at_k(a, b, 3), [1.0, 0.0, 0.5])
  # row 3: common {0, 1} at ranks (1, 2) and (2, 1): 2 · 1/((1+1)·2) / H(2)
  np.testing.assert_allclose(R.rank_similarity_at_k(a, b, 3), [1.0, 0.0, 0.5 / 1.5])
  np.testing.assert_allclose(R.jaccard_at_k(a, b, 1), [1.0, 0.0, 0.0])


def test_translation_metrics_against_numpy():
  rng = np.random.default_rng(4)
  y = rng.normal(size=(50, 8)).astype(np.float32)
  m = R.translation_metrics(y * 3.0, y, block=16)
  assert (
      m["top1"] == 1.0 and m["mean_rank"] == 1.0 and m["mean_cos"] == pytest.approx(1.0, abs=1e-6)
  )
  p = y + 1.5 * rng.normal(size=y.shape).astype(np.float32)
  m = R.translation_metrics(p, y, block=16)
  pn = p / np.linalg.norm(p, axis=1, keepdims=True)
  yn = y / np.linalg.norm(y, axis=1, keepdims=True)
  s = pn.astype(np.float64) @ yn.T
  ranks = 1 + (s > np.diag(s)[:, None]).sum(1)
  assert m["top1"] == pytest.approx(np.mean(ranks == 1))
  assert m["mean_rank"] == pytest.approx(ranks.mean())
  assert m["mean_cos"] == pytest.approx(np.diag(s).mean(), abs=1e-6)


def test_mutual_knn():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(80, 10)).astype(np.float32)
  kx = R.knn(x, 5, block=16)
  xn = x / np.linalg.norm(x, axis=1, keepdims=True)
  s = xn.astype(np.float64) @ xn.T
  np.fill_diagonal(s, -np.inf)
  np.testing.assert_array_equal(kx, np.argsort(-s, axis=1, kind="stable")[:, :5])
  assert R.mutual_knn(
      kx, R.knn(x @ np.linalg.qr(rng.normal(size=(10, 10)))[0], 5)
  ) == pytest.approx(1.0)
  m = R.mutual_knn_all_pairs([x, x * 2.0, rng.normal(size=(80, 6))], 5)
  assert m[0, 1] == 1.0 and m[0, 0] == 1.0
  assert m[0, 2] < 0.25  # chance is 5/79


# ----------------------------------------------------------------------------- translate_store


def _write(root, model, x, block_rows=16):
  w = store.open_writer(
      root,
      "toy",
      "val",
      "corpus",
      model,
      n_rows=len(x),
      dim=x.shape[1],
      meta={"rows_digest": "rows-v1", "weights_digest": f"w-{model}"},
      block_rows=block_rows,
  )
  for s in range(0, len(x), w.block_rows):
    w.write(s, x[s : s + w.block_rows])
  w.finish()


def _closed_form_dir(path, pairs):
  """A closed-form stitch directory in lead_jax.stitch.io's layout: pairs = [(src, tgt, W, b)]."""
  import orbax.checkpoint as ocp

  path.mkdir(parents=True)
  tree, info = {}, []
  for i, (s, t, w, b) in enumerate(pairs):
    key = f"pair_{i:03d}_{i + 1:03d}"
    tree[key] = {"W": w.astype(np.float32), "b": b.astype(np.float32), "lam": np.asarray(0.5)}
    info.append(
        {
            "key": key,
            "source": s,
            "target": t,
            "source_dim": w.shape[0],
            "target_dim": w.shape[1],
            "lam": 0.5,
        }
    )
  c = ocp.StandardCheckpointer()
  c.save(path.absolute() / "stitches", tree)
  c.wait_until_finished()
  (path / "stitches.json").write_text(json.dumps(info))
  return path


@pytest.fixture
def translate_run(tmp_path):
  """The translate stage with its settings given as keywords (the old binary's flags)."""
  from lead_jax import config
  from lead_jax.layout import RunLayout
  from lead_jax.pipeline import translate

  def run(*, store_root, dataset, stop_after_blocks=None, **kw):
    cfg = config.StudyConfig(dataset=dataset, out=str(tmp_path / "run"), store=str(store_root))
    for k, v in kw.items():
      setattr(cfg.translate, k, str(v) if k == "stitch" else v)
    return translate.run(cfg, RunLayout.from_config(cfg), stop_after_blocks=stop_after_blocks)

  return run


def test_translate_store_round_trip_resume_and_refusal(tmp_path, translate_run):
  rng = np.random.default_rng(6)
  xa = rng.normal(size=(50, 8)).astype(np.float32)
  root = tmp_path / "store"
  _write(root, "A", xa)
  _write(root, "B", rng.normal(size=(50, 6)).astype(np.float32))
  w, b = rng.normal(size=(8, 6)), rng.normal(size=(6,))
  ck = _closed_form_dir(
      tmp_path / "cf", [("A", "B", w, b), ("B", "A", rng.normal(size=(6, 8)), np.zeros(8))]
  )
  kw = dict(
      store_root=root,
      dataset="toy",
      split="val",
      kind="corpus",
      source="A",
      target="B",
      stitch=ck,
      block_rows=16,
  )
  res = translate_run(**kw)
  assert res["complete"] and res["rows"] == 50
  y = store.read_array(root, "toy", "val", "corpus", "A__to__B")  # aligned with A and B
  np.testing.assert_allclose(y, xa @ w + b, rtol=1e-5, atol=1e-5)
  meta = store.read_meta(root, "toy", "val", "corpus", "A__to__B")
  assert meta["source_model"] == "A" and meta["target_model"] == "B" and meta["lam"] == 0.5
  assert meta["stitch_checkpoint"] == str(ck.absolute()) and meta["rows_digest"] == "rows-v1"
  assert meta["source"] == "translated" and meta["source_weights_digest"] == "w-A"

  # interrupted after one block, then resumed: the same bytes as the uninterrupted run
  part = translate_run(**kw, name="resumed", stop_after_blocks=1)
  assert not part["complete"] and part["committed_rows"] == 16
  with pytest.raises(store.StoreError, match="incomplete"):
    store.read_array(root, "toy", "val", "corpus", "resumed")
  res2 = translate_run(**kw, name="resumed")
  assert res2["resumed_from"] == 16
  np.testing.assert_array_equal(store.read_array(root, "toy", "val", "corpus", "resumed"), y)

  # refusals: a stitch whose source model or dim does not match the array
  with pytest.raises(stitch_io.StitchError, match="no stitch A→A"):
    translate_run(**{**kw, "target": "A"})
  bad = _closed_form_dir(tmp_path / "bad_dim", [("A", "B", rng.normal(size=(5, 6)), np.zeros(6))])
  with pytest.raises(stitch_io.StitchError, match="dim 5"):
    translate_run(**{**kw, "stitch": bad, "name": "x"})
  st = stitch_io.find(stitch_io.load(ck), "B", "A")
  with pytest.raises(stitch_io.StitchError, match="source is 'B'"):
    stitch_io.check_fits(st, "A", 6, "toy/val/corpus/A")
  # a different stitch into an existing array is refused by the store writer
  other = _closed_form_dir(tmp_path / "other", [("A", "B", w * 2, b)])
  with pytest.raises(store.StoreError, match="weights_digest"):
    translate_run(**{**kw, "stitch": other})
