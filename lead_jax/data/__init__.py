"""Datasets as rows: the exact texts, in the exact order, that every model embeds."""

from __future__ import annotations

import dataclasses

from lead_jax.data import beir
from lead_jax.data.beir import DataError, Dataset, Split, dataset_name, load, split_dataset  # noqa: F401
from lead_jax.data.chunking import ChunkConfig, chunk_documents, rows_digest

KINDS = ("corpus", "query")


@dataclasses.dataclass(frozen=True)
class Rows:
  """One (dataset, split, kind): row i is `texts[i]`, from document/query `ids[i]`.

  Attributes:
    dataset: the dataset name.
    split: the split name (train, val).
    kind: `corpus` (document chunks) or `query`.
    ids: per row, the id of the document or query it comes from.
    texts: per row, the text every model embeds.
    digest: `rows_digest(texts)`, which the store records.
  """

  dataset: str
  split: str
  kind: str
  ids: tuple[str, ...]
  texts: tuple[str, ...]
  digest: str

  def __len__(self) -> int:
    return len(self.texts)


def build_rows(
    ds: Dataset, split: Split, kind: str, chunk_cfg: ChunkConfig = ChunkConfig()
) -> Rows:
  """Corpus rows are chunks of the split's documents; query rows are its queries, one each.

  Queries are not chunked: a query is one row, truncated by each model at its own
  max length like any input.

  Args:
    ds: the dataset.
    split: the split of `ds` whose documents or queries become rows.
    kind: `corpus` or `query`.
    chunk_cfg: the chunker of corpus rows.

  Returns:
    The `Rows`.

  Raises:
    ValueError: `kind` is not one of `KINDS`.
  """
  if kind == "corpus":
    chunks = chunk_documents(((d, beir.doc_text(*ds.corpus[d])) for d in split.doc_ids), chunk_cfg)
    ids, texts = tuple(c.doc_id for c in chunks), tuple(c.text for c in chunks)
  elif kind == "query":
    ids = split.query_ids
    texts = tuple(ds.queries[q] for q in ids)
  else:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  return Rows(ds.name, split.name, kind, ids, texts, rows_digest(texts))
