"""BEIR-layout datasets: loading with file:line errors, and the seeded train/val cap.

A BEIR directory holds `corpus.jsonl` (`_id`, `title`, `text`), `queries.jsonl`
(`_id`, `text`) and `qrels/<split>.tsv` (`query-id`, `corpus-id`, `score`, with a
header line). Each file may also be gzipped (`.jsonl.gz`, `.tsv.gz`); the shipped
WordNet set is.

The stitching study needs two disjoint document sets, `train` (fit stitches) and
`val` (choose λ, measure, and run retrieval), with the same rows for every model.
`split_dataset` draws them deterministically from a seed:
  * the total is min(corpus size, n_train + n_val, max_docs), divided between the
    splits in the ratio n_train : n_val;
  * `val` is filled first with documents relevant to some query (in seeded order),
    then with seeded distractors, so retrieval on `val` has queries to score;
  * `train` is a seeded sample of the remaining documents;
  * a split's queries are those with at least one relevant document in it, and
    its qrels are restricted to its documents.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import pathlib
from collections.abc import Iterator, Mapping

import numpy as np

from lead_jax.errors import InputError

WORDNET_DIR = pathlib.Path(__file__).resolve().parent / "wordnet"
SPLITS = ("train", "val")


class DataError(InputError):
  """Bad input data; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A loaded BEIR dataset.

  Attributes:
    name: the store name (`dataset_name`).
    path: the directory read.
    corpus: doc id -> (title, text), in file order.
    queries: query id -> text, in file order.
    qrels: query id -> {doc id: score}.
    qrels_split: the qrels file used (`qrels/<qrels_split>.tsv`).
  """

  name: str
  path: pathlib.Path
  corpus: Mapping[str, tuple[str, str]]  # doc id -> (title, text), file order
  queries: Mapping[str, str]  # query id -> text, file order
  qrels: Mapping[str, Mapping[str, int]]  # query id -> {doc id: score}
  qrels_split: str


@dataclasses.dataclass(frozen=True)
class Split:
  """The rows one split contributes to every model's store arrays.

  Attributes:
    name: `train` or `val`.
    doc_ids: the split's documents, in corpus order.
    query_ids: the queries with a relevant document in the split, in file order.
    qrels: query id -> {doc id: score}, restricted to the split's documents.
  """

  name: str
  doc_ids: tuple[str, ...]
  query_ids: tuple[str, ...]
  qrels: Mapping[str, Mapping[str, int]]


def dataset_name(dataset: str) -> str:
  """The store name of a dataset: `wordnet`, or a BEIR directory's own name.

  Needs no files, so stages that only read the store can name the dataset.

  Args:
    dataset: `wordnet`, or a BEIR directory path.

  Returns:
    The name.
  """
  return "wordnet" if dataset == "wordnet" else pathlib.Path(dataset).expanduser().resolve().name


def resolve(dataset: str) -> tuple[str, pathlib.Path]:
  """`wordnet` (shipped) or a BEIR directory path -> (name, path).

  Args:
    dataset: `wordnet`, or a BEIR directory path.

  Returns:
    `(name, path)` of the dataset's directory.

  Raises:
    DataError: `dataset` is neither `wordnet` nor a directory.
  """
  if dataset == "wordnet":
    return "wordnet", WORDNET_DIR
  path = pathlib.Path(dataset).expanduser()
  if not path.is_dir():
    raise DataError(f"{dataset}: not a directory, and not a known dataset name ('wordnet')")
  return dataset_name(dataset), path


def _find(path: pathlib.Path, stem: str) -> pathlib.Path:
  for p in (path / stem, path / (stem + ".gz")):
    if p.exists():
      return p
  raise DataError(f"{path / stem}: missing (neither it nor {stem}.gz exists)")


def _lines(path: pathlib.Path) -> Iterator[tuple[int, str]]:
  """Yields (1-based line number, decoded line); non-UTF-8 bytes name the line."""
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(
            f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start})"
        ) from None
      yield lineno, line.rstrip("\r\n")


def _jsonl(path: pathlib.Path, fields: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
  seen: set[str] = set()
  for lineno, line in _lines(path):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
      raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    if "_id" not in obj:
      raise DataError(f"{path}:{lineno}: missing '_id'")
    obj["_id"] = _id = str(obj["_id"])
    if _id in seen:
      raise DataError(f"{path}:{lineno}: duplicate id {_id!r}")
    seen.add(_id)
    for field in fields:
      value = obj.get(field, "")
      if value is None:
        value = ""
      if not isinstance(value, str):
        raise DataError(f"{path}:{lineno}: field {field!r} of {_id!r} is not a string")
      obj[field] = value
    yield lineno, obj


def load(dataset: str, qrels_split: str | None = None) -> Dataset:
  """Loads a BEIR directory (or `wordnet`), validating every line.

  Args:
    dataset: `wordnet`, or a BEIR directory path.
    qrels_split: the qrels file to read; None: `test` if there is one, else the first.

  Returns:
    The `Dataset`.

  Raises:
    DataError: a file is missing, or a line is malformed (the message names file and line).
  """
  name, path = resolve(dataset)
  corpus = {
      o["_id"]: (o["title"], o["text"])
      for _, o in _jsonl(_find(path, "corpus.jsonl"), ("title", "text"))
  }
  queries = {o["_id"]: o["text"] for _, o in _jsonl(_find(path, "queries.jsonl"), ("text",))}
  qdir = path / "qrels"
  available = sorted(p.name.split(".")[0] for p in qdir.glob("*.tsv*")) if qdir.is_dir() else []
  if qrels_split is None:
    if not available:
      raise DataError(f"{qdir}: no qrels/<split>.tsv files")
    qrels_split = "test" if "test" in available else available[0]
  qpath = _find(qdir, f"{qrels_split}.tsv")
  qrels: dict[str, dict[str, int]] = {}
  for lineno, line in _lines(qpath):
    if not line.strip():
      continue
    cols = line.split("\t")
    if lineno == 1 and not cols[-1].strip().lstrip("-").isdigit():
      continue  # header
    if len(cols) != 3:
      raise DataError(f"{qpath}:{lineno}: expected 3 tab-separated columns, got {len(cols)}")
    qid, did, score = cols
    try:
      score_i = int(score)
    except ValueError:
      raise DataError(f"{qpath}:{lineno}: score {score!r} is not an integer") from None
    if qid not in queries:
      raise DataError(f"{qpath}:{lineno}: query id {qid!r} is not in queries")
    if did not in corpus:
      raise DataError(f"{qpath}:{lineno}: corpus id {did!r} is not in the corpus")
    qrels.setdefault(qid, {})[did] = score_i
  return Dataset(name, path, corpus, queries, qrels, qrels_split)


def split_dataset(
    ds: Dataset,
    *,
    n_train: int = 20_000,
    n_val: int = 5_000,
    max_docs: int | None = None,
    seed: int = 0,
) -> dict[str, Split]:
  """Deterministic, seeded, disjoint train/val documents (see module docstring).

  Args:
    ds: the dataset.
    n_train: the train share of the total.
    n_val: the val share of the total.
    max_docs: a cap on the total; None: no cap beyond n_train + n_val.
    seed: seeds the draw.

  Returns:
    `{"train": Split, "val": Split}`.

  Raises:
    ValueError: a size is negative, or both are zero.
  """
  if n_train < 0 or n_val < 0 or n_train + n_val == 0:
    raise ValueError(f"n_train={n_train}, n_val={n_val}: need non-negative sizes, not both zero")
  ids = list(ds.corpus)
  total = min(len(ids), n_train + n_val, max_docs if max_docs is not None else len(ids))
  val_n = int(round(total * n_val / (n_train + n_val)))
  train_n = total - val_n
  rng = np.random.default_rng(seed)
  relevant = sorted({d for q in ds.qrels.values() for d, s in q.items() if s > 0})
  relevant_set = set(relevant)
  others = [d for d in ids if d not in relevant_set]
  rel_order = [relevant[i] for i in rng.permutation(len(relevant))]
  oth_order = [others[i] for i in rng.permutation(len(others))]
  val = rel_order[:val_n]
  val += oth_order[: val_n - len(val)]
  used = set(val)
  pool = [d for d in ids if d not in used]
  train = [pool[i] for i in np.sort(rng.permutation(len(pool))[:train_n])]
  val_sorted = [d for d in ids if d in used]  # corpus order, independent of draw order

  def make(name: str, doc_ids: list[str]) -> Split:
    docs = set(doc_ids)
    qrels = {}
    for qid in ds.queries:  # file order
      rel = {d: s for d, s in ds.qrels.get(qid, {}).items() if d in docs}
      if any(s > 0 for s in rel.values()):
        qrels[qid] = rel
    return Split(name, tuple(doc_ids), tuple(qrels), qrels)

  return {"train": make("train", train), "val": make("val", val_sorted)}


def doc_text(title: str, text: str) -> str:
  """How a BEIR document becomes one string (BEIR's own convention: title, space, text).

  Args:
    title: the document's title (may be empty).
    text: the document's text.

  Returns:
    `"title text"` stripped, or `text` alone when there is no title.
  """
  return f"{title} {text}".strip() if title else text
