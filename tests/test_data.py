"""BEIR loader: every error names file and line; the cap/split is deterministic and disjoint."""

import gzip
import json
import pathlib
import subprocess
import sys

import pytest

from lead_jax import data
from lead_jax.data import beir

ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_beir(tmp_path, corpus=None, queries=None, qrels=None):
  corpus = (
      corpus
      if corpus is not None
      else [json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"}) for i in range(10)]
  )
  queries = (
      queries
      if queries is not None
      else [json.dumps({"_id": f"q{i}", "text": f"query {i}"}) for i in range(4)]
  )
  qrels = (
      qrels
      if qrels is not None
      else ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(4)]
  )
  (tmp_path / "qrels").mkdir(exist_ok=True)
  for name, lines in (
      ("corpus.jsonl", corpus),
      ("queries.jsonl", queries),
      ("qrels/test.tsv", qrels),
  ):
    p = tmp_path / name
    if isinstance(lines, bytes):
      p.write_bytes(lines)
    else:
      p.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return tmp_path


def test_loads_valid(tmp_path):
  ds = data.load(str(make_beir(tmp_path)))
  assert len(ds.corpus) == 10 and len(ds.queries) == 4
  assert ds.qrels == {f"q{i}": {f"d{i}": 1} for i in range(4)}
  assert ds.corpus["d3"] == ("T3", "text 3")


def test_gz_files(tmp_path):
  make_beir(tmp_path)
  for name in ("corpus.jsonl", "queries.jsonl"):
    raw = (tmp_path / name).read_bytes()
    (tmp_path / name).unlink()
    (tmp_path / (name + ".gz")).write_bytes(gzip.compress(raw))
  assert len(data.load(str(tmp_path)).corpus) == 10


@pytest.mark.parametrize(
    "corpus,needle",
    [
        (
            ['{"_id": "a", "text": "x"}', '{"_id": "b", "text": "y"'],
            "corpus.jsonl:2: malformed JSON",
        ),
        (
            ['{"_id": "a", "text": "x"}', '{"title": "t", "text": "y"}'],
            "corpus.jsonl:2: missing '_id'",
        ),
        (
            ['{"_id": "a", "text": "x"}', '{"_id": "b"}', '{"_id": "a", "text": "z"}'],
            "corpus.jsonl:3: duplicate id 'a'",
        ),
        (["[1, 2]"], "corpus.jsonl:1: expected a JSON object"),
        (['{"_id": "a", "text": 3}'], "corpus.jsonl:1: field 'text'"),
    ],
)
def test_corpus_errors_name_file_and_line(tmp_path, corpus, needle):
  make_beir(tmp_path, corpus=corpus, qrels=["query-id\tcorpus-id\tscore"])
  with pytest.raises(data.DataError, match=needle.replace("(", r"\(").replace("[", r"\[")):
    data.load(str(tmp_path))


def test_non_utf8_names_line(tmp_path):
  make_beir(
      tmp_path,
      corpus=b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "bad \xff\xfe"}\n',
      qrels=["query-id\tcorpus-id\tscore"],
  )
  with pytest.raises(data.DataError, match=r"corpus.jsonl:2: not valid UTF-8"):
    data.load(str(tmp_path))


@pytest.mark.parametrize(
    "qrels,needle",
    [
        (
            ["query-id\tcorpus-id\tscore", "q0\td0\t1", "q0\tnope\t1"],
            r"test.tsv:3: corpus id 'nope'",
        ),
        (["query-id\tcorpus-id\tscore", "qX\td0\t1"], r"test.tsv:2: query id 'qX'"),
        (["query-id\tcorpus-id\tscore", "q0\td0"], r"test.tsv:2: expected 3 tab-separated"),
        (["query-id\tcorpus-id\tscore", "q0\td0\thigh"], r"test.tsv:2: score 'high'"),
    ],
)
def test_qrels_errors(tmp_path, qrels, needle):
  make_beir(tmp_path, qrels=qrels)
  with pytest.raises(data.DataError, match=needle):
    data.load(str(tmp_path))


def test_missing_file(tmp_path):
  make_beir(tmp_path)
  (tmp_path / "queries.jsonl").unlink()
  with pytest.raises(data.DataError, match="queries.jsonl: missing"):
    data.load(str(tmp_path))


def test_split_deterministic_disjoint_and_capped(tmp_path):
  corpus = [json.dumps({"_id": f"d{i}", "text": f"t{i}"}) for i in range(200)]
  queries = [json.dumps({"_id": f"q{i}", "text": f"q{i}"}) for i in range(50)]
  qrels = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{3 * i}\t1" for i in range(50)]
  ds = data.load(str(make_beir(tmp_path, corpus, queries, qrels)))
  a = data.split_dataset(ds, n_train=80, n_val=20, seed=3)
  b = data.split_dataset(ds, n_train=80, n_val=20, seed=3)
  c = data.split_dataset(ds, n_train=80, n_val=20, seed=4)
  assert a == b and a != c
  assert len(a["train"].doc_ids) == 80 and len(a["val"].doc_ids) == 20
  assert not set(a["train"].doc_ids) & set(a["val"].doc_ids)
  # val is filled with relevant documents first, so all 20 val docs have a query.
  assert len(a["val"].query_ids) == 20
  for sp in a.values():
    for q, rel in sp.qrels.items():
      assert set(rel) <= set(sp.doc_ids)
  # a smaller corpus than the caps is divided in the same ratio
  d = data.split_dataset(ds, n_train=800, n_val=200, max_docs=50)
  assert (len(d["train"].doc_ids), len(d["val"].doc_ids)) == (40, 10)


def test_wordnet_shipped():
  ds = data.load("wordnet")
  assert len(ds.queries) >= 5000 and len(ds.corpus) >= 20000
  assert all(len(r) == 1 for r in ds.qrels.values())
  assert (beir.WORDNET_DIR / "LICENSE").read_text().count("Princeton") >= 2
  sp = data.split_dataset(ds)
  assert len(sp["train"].doc_ids) == 20000 and len(sp["val"].doc_ids) == 5000


def test_build_rows_queries_and_corpus():
  ds = data.load("wordnet")
  sp = data.split_dataset(ds, max_docs=100)
  q = data.build_rows(ds, sp["val"], "query")
  c = data.build_rows(ds, sp["val"], "corpus")
  assert len(q) == len(sp["val"].query_ids) and q.texts[0] == ds.queries[q.ids[0]]
  assert len(c) >= len(sp["val"].doc_ids) and q.digest != c.digest


def run_inspect(*args):
  return subprocess.run(
      [sys.executable, str(ROOT / "experiments" / "inspect_dataset.py"), *args],
      capture_output=True,
      text=True,
      timeout=120,
  )


def test_inspect_dataset_binary(tmp_path):
  ok = run_inspect("--dataset=wordnet", "--config.data.max_docs=500")
  assert ok.returncode == 0, ok.stderr
  stats = json.loads(ok.stdout.strip().splitlines()[-1])
  assert stats["docs"] == 30000 and stats["queries"] == 10000 and stats["qrels"] == 10000
  assert stats["chunks"] == 500
  make_beir(tmp_path, corpus=['{"_id": "a", "text": "x"}', "{not json"])
  bad = run_inspect(f"--dataset={tmp_path}")
  assert bad.returncode != 0
  assert f"{tmp_path / 'corpus.jsonl'}:2: malformed JSON" in bad.stderr
