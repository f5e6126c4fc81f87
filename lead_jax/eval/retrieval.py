"""Retrieval-level truth: exact top-k, document scoring, IR metrics, overlap, translation, mutual-kNN.

Driven by `experiments/retrieval_eval.py`:

    .venv/bin/python experiments/retrieval_eval.py --dataset=wordnet --run=dev --max_docs=2000

Everything here is a pure function over arrays (plus small table builders at the end).

Scores and search
  * score(q, row) = cos(q, row): queries and corpus rows are L2-normalised first
    (`l2_normalize`), so native, stitched and translated corpora are compared alike.
  * Exact top-k (`search`): the corpus is packed into blocks of `block` rows that
    never split a document (`prepare_corpus`); a `lax.scan` over blocks does one
    `[Q, B]` matmul per block (`precision=HIGHEST`), reduces chunks to documents inside
    the block (`segment_max`), takes that block's top-k with `lax.top_k` and merges it
    into the running top-k.  Memory is O(Q·B + Q·k), never O(Q·N).  Queries go in host
    batches of `query_block`.  With a mesh the blocks are sharded over devices
    (`shard_map`); each device scans its blocks and the per-device top-k lists are
    all-gathered and merged.
  * Documents are chunked, so retrieval is over chunks and a document's score is its
    MAX chunk score (BEIR-style MaxP).  A document is ranked once.
  * Ties: equal scores are ordered by lower document index first (document index =
    order of first appearance in the corpus rows = the split's document order).  This
    is what `lax.top_k` does (stable) and equals `np.argsort(-s, kind="stable")`.
    trec_eval instead breaks ties by docno, descending; the two agree whenever scores
    are distinct.  When *every* document ties (a constant corpus: the mean-estimator
    control) any order is arbitrary, so that control is reported as the expectation over
    a uniformly random order (`random_ranking_metrics`, closed form).

IR metrics (per query, then averaged over queries with at least one relevant document;
as trec_eval / pytrec_eval and BEIR compute them; grade g > 0 is relevant, gain = g):
  nDCG@k     DCG@k / IDCG@k,  DCG@k = Σ_{r≤k} g_r / log2(r + 1)  (linear gain, trec_eval's
             ndcg_cut; IDCG from the query's judged grades sorted descending)
  Recall@k   |relevant ∩ top-k| / |relevant|
  MRR@k      1 / rank of the first relevant document within the top k, else 0 (BEIR's mrr)

Overlap of two rankings A, B of the same query (Beyond Benchmarks, Caspari et al. 2024),
on the top-k documents:
  Jaccard@k      |A_k ∩ B_k| / |A_k ∪ B_k|
  RankSim@k      (1 / H(|C|)) Σ_{j∈C} 1 / ((1 + |r_A(j) − r_B(j)|) · max(r_A(j), r_B(j)))
                 C = A_k ∩ B_k, ranks from 1, H(n) the n-th harmonic number; 1 for identical
                 lists, 0 for disjoint ones; rewards common documents placed at the same,
                 high ranks.

Translation (vec2vec, Jha et al. 2025), translated rows ŷ_i against the target's rows y_j
of the same texts:  rank_i = 1 + #{j : cos(ŷ_i, y_j) > cos(ŷ_i, y_i)} (ties count in
the row's favour), top-1 accuracy = mean(rank_i == 1), mean rank = mean(rank_i), and
mean cosine = mean_i cos(ŷ_i, y_i).

Mutual-kNN alignment (Huh et al. 2024, the platonic-representation metric): with N_A(i)
the k nearest rows of row i by cosine in space A (row i itself excluded),
  mKNN@k(A, B) = mean_i |N_A(i) ∩ N_B(i)| / k;   1 for a space with itself, ≈ k/(n−1) by chance.

Retention of a stitched retrieval (A's corpus mapped into B's space, queried with B's
own queries) = stitched metric / B's native metric.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import Mesh, NamedSharding, PartitionSpec

HIGHEST = jax.lax.Precision.HIGHEST
RECALL_KS = (1, 10, 100)
NDCG_K = 10
MRR_K = 10
METRICS = ("ndcg@10", "recall@1", "recall@10", "recall@100", "mrr@10")


# ----------------------------------------------------------------------------- corpus layout


def l2_normalize(x: jax.typing.ArrayLike, eps: float = 1e-12) -> np.ndarray:
  """Rows scaled to unit L2 norm (zero rows stay zero); float32 numpy.

  Args:
    x: rows [..., d].
    eps: the smallest norm divided by.

  Returns:
    The normalised rows, float32 (norms summed in float64).
  """
  x = np.asarray(x, np.float32)
  n = np.sqrt(np.sum(np.square(x, dtype=np.float64), axis=-1, keepdims=True))
  return (x / np.maximum(n, eps)).astype(np.float32)


def doc_index(row_doc_ids: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
  """(doc_of_row [N] int32, doc ids in order of first appearance) from per-row doc ids.

  Args:
    row_doc_ids: per corpus row, its document's id.

  Returns:
    `(doc_of_row, doc_ids)`: each row's document index, and the ids by index.

  Raises:
    ValueError: a document's rows are not contiguous (the chunker emits them contiguously).
  """
  index: dict[str, int] = {}
  out = np.empty(len(row_doc_ids), np.int32)
  prev = None
  for i, d in enumerate(row_doc_ids):
    if d != prev and d in index:
      raise ValueError(
          f"corpus row {i}: document {d!r} resumes after other documents' rows; "
          "a document's chunks must be contiguous"
      )
    out[i] = index.setdefault(d, len(index))
    prev = d
  return out, tuple(index)


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A corpus packed for `search`: [X, B, d] blocks that never split a document.

  rows[x, b]: corpus row in slot (x, b), −1 = padding; seg[x, b]: the block-local
  document slot of that row; docs[x, s]: global document index of slot s, −1 = empty.
  `aggregate` is False when every row is its own document (no chunk → doc reduction).

  Attributes:
    blocks: [X, B, d] the (normalised) rows of each slot, zeros for padding.
    seg: [X, B] int32, the block-local document slot of each row.
    docs: [X, B] int32, the global document index of each slot, −1 = empty.
    valid: [X, B] bool, whether the slot holds a corpus row.
    n_rows: the corpus row count N.
    n_docs: the document count.
    aggregate: whether chunk scores are reduced to document scores.
    mesh: the mesh the blocks are sharded over, or None.
    axis: the mesh axis of the blocks.
  """

  blocks: jax.Array
  seg: jax.Array
  docs: jax.Array
  valid: jax.Array
  n_rows: int
  n_docs: int
  aggregate: bool
  mesh: Mesh | None = None
  axis: str = "data"


def _pack(doc_of_row: np.ndarray, block: int) -> list[list[tuple[int, int]]]:
  """Greedy packing of contiguous document runs (start, stop) into blocks of ≤ block rows."""
  change = np.flatnonzero(np.diff(doc_of_row)) + 1
  starts = np.concatenate([[0], change])
  stops = np.concatenate([change, [len(doc_of_row)]])
  out: list[list[tuple[int, int]]] = [[]]
  used = 0
  for a, b in zip(starts.tolist(), stops.tolist()):
    if used + (b - a) > block:
      out.append([])
      used = 0
    out[-1].append((a, b))
    used += b - a
  return out


def prepare_corpus(
    corpus_nd: jax.typing.ArrayLike,
    doc_of_row: np.ndarray | None = None,
    *,
    block: int = 4096,
    mesh: Mesh | None = None,
    axis: str = "data",
    normalize: bool = True,
) -> Corpus:
  """Normalises and packs corpus rows into document-aligned blocks (placed on the mesh).

  Args:
    corpus_nd: corpus rows [N, d].
    doc_of_row: [N] maps each row to its document (`doc_index`); None: every row is a
      document.
    block: rows per block; grows to the longest document when one has more rows.
    mesh: shard the blocks over this mesh, or None (one device).
    axis: the mesh axis the blocks are sharded over.
    normalize: L2-normalise the rows first.

  Returns:
    The `Corpus`, its block count padded to a multiple of the axis size.

  Raises:
    ValueError: the corpus is empty or not 2-D, or `doc_of_row` has the wrong shape or
      does not number contiguous documents 0, 1, … in order.
  """
  x = np.asarray(corpus_nd, np.float32)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f"corpus: expected a non-empty [rows, dim] array, got shape {x.shape}")
  n = x.shape[0]
  if normalize:
    x = l2_normalize(x)
  aggregate = doc_of_row is not None
  if doc_of_row is None:
    doc_of_row = np.arange(n, dtype=np.int32)
  doc_of_row = np.asarray(doc_of_row, np.int32)
  if doc_of_row.shape != (n,):
    raise ValueError(f"doc_of_row: shape {doc_of_row.shape}, expected ({n},)")
  d = np.diff(doc_of_row)
  if doc_of_row[0] != 0 or np.any((d != 0) & (d != 1)):
    raise ValueError(
        "doc_of_row must number documents 0, 1, … in order of first appearance, "
        "with each document's rows contiguous (see doc_index)"
    )
  n_docs = int(doc_of_row[-1]) + 1
  runs = np.diff(np.concatenate([[0], np.flatnonzero(d) + 1, [n]]))
  block = int(max(min(block, n), int(runs.max())))
  packs = _pack(doc_of_row, block)
  n_shards = 1 if mesh is None else mesh.shape[axis]
  nb = -(-len(packs) // n_shards) * n_shards
  rows = np.full((nb, block), -1, np.int64)
  seg = np.full((nb, block), block - 1, np.int32)  # padding: the last slot (keeps seg sorted)
  docs = np.full((nb, block), -1, np.int32)
  for i, pack in enumerate(packs):
    pos = 0
    for slot, (a, b) in enumerate(pack):
      rows[i, pos : pos + b - a] = np.arange(a, b)
      seg[i, pos : pos + b - a] = slot
      docs[i, slot] = doc_of_row[a]
      pos += b - a
  valid = rows >= 0
  blocks = np.where(valid[..., None], x[np.maximum(rows, 0)], 0.0).astype(np.float32)
  if not aggregate:
    seg = np.broadcast_to(np.arange(block, dtype=np.int32), (nb, block)).copy()
    docs = np.where(valid, rows, -1).astype(np.int32)
  arrs = (blocks, seg, docs, valid)
  if mesh is not None:
    sh = NamedSharding(mesh, PartitionSpec(axis))
    arrs = tuple(jax.device_put(a, sh) for a in arrs)
  else:
    arrs = tuple(jnp.asarray(a) for a in arrs)
  return Corpus(*arrs, n_rows=n, n_docs=n_docs, aggregate=aggregate, mesh=mesh, axis=axis)


# ----------------------------------------------------------------------------- exact top-k


def _merge(vals_a, ids_a, vals_b, ids_b, k):
  """Top-k of two candidate lists; on ties list a (lower document indices) comes first."""
  v = jnp.concatenate([vals_a, vals_b], axis=-1)
  i = jnp.concatenate([ids_a, ids_b], axis=-1)
  top_v, pos = jax.lax.top_k(v, k)
  top_i = jnp.take_along_axis(i, pos, axis=-1)
  return top_v, jnp.where(jnp.isneginf(top_v), -1, top_i)


def _scan_topk(q_qd, q_ids, blocks, seg, docs, valid, *, k, aggregate, exclude_self):
  """Running top-k documents over the corpus blocks of one device."""
  n_q = q_qd.shape[0]
  b = blocks.shape[1]
  kb = min(k, b)

  def step(carry, blk):
    x_bd, seg_b, doc_b, ok_b = blk
    s_qb = jnp.einsum("qd,bd->qb", q_qd, x_bd, precision=HIGHEST)
    s_qb = jnp.where(ok_b[None, :], s_qb, -jnp.inf)
    if aggregate:  # chunk scores → document (slot) scores: the max over the doc's chunks
      s_qb = jax.ops.segment_max(s_qb.T, seg_b, num_segments=b, indices_are_sorted=True).T
    s_qb = jnp.where(doc_b[None, :] >= 0, s_qb, -jnp.inf)
    if exclude_self:
      s_qb = jnp.where(doc_b[None, :] == q_ids[:, None], -jnp.inf, s_qb)
    v, pos = jax.lax.top_k(s_qb, kb)
    ids = doc_b[pos]
    return _merge(*carry, v, ids, k), None

  init = (jnp.full((n_q, k), -jnp.inf, jnp.float32), jnp.full((n_q, k), -1, jnp.int32))
  (vals, ids), _ = jax.lax.scan(step, init, (blocks, seg, docs, valid))
  return vals, ids


@functools.partial(jax.jit, static_argnames=("k", "aggregate", "exclude_self"))
def _search_local(q_qd, q_ids, blocks, seg, docs, valid, *, k, aggregate, exclude_self):
  return _scan_topk(
      q_qd, q_ids, blocks, seg, docs, valid, k=k, aggregate=aggregate, exclude_self=exclude_self
  )


@functools.lru_cache(maxsize=32)
def _sharded_search(mesh: Mesh, axis: str, k: int, aggregate: bool, exclude_self: bool):
  """jit(shard_map): each device scans its blocks; per-device top-k lists are merged."""
  P = PartitionSpec

  def local(q_qd, q_ids, blocks, seg, docs, valid):
    vals, ids = _scan_topk(
        q_qd, q_ids, blocks, seg, docs, valid, k=k, aggregate=aggregate, exclude_self=exclude_self
    )
    # Device order = block order = increasing document index, so concatenating the
    # gathered lists in device order keeps the lower-index-first tie rule.
    all_v = jax.lax.all_gather(vals, axis, axis=1, tiled=True)
    all_i = jax.lax.all_gather(ids, axis, axis=1, tiled=True)
    top_v, pos = jax.lax.top_k(all_v, k)
    top_i = jnp.take_along_axis(all_i, pos, axis=-1)
    return top_v, jnp.where(jnp.isneginf(top_v), -1, top_i)

  f = jax.shard_map(
      local,
      mesh=mesh,
      in_specs=(P(), P(), P(axis), P(axis), P(axis), P(axis)),
      out_specs=(P(), P()),
      check_vma=False,
  )
  return jax.jit(f)


def search(
    queries_qd: jax.typing.ArrayLike,
    corpus: Corpus,
    k: int,
    *,
    exclude_self: bool = False,
    query_block: int = 1024,
    normalize: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """Exact top-k documents per query: (scores [Q, k] float32, doc indices [Q, k] int32).

  Slots beyond the number of documents hold score −inf and index −1.

  Args:
    queries_qd: queries [Q, d].
    corpus: the packed corpus (`prepare_corpus`).
    k: documents per query, ≥ 1.
    exclude_self: drop document i for query i (kNN within one space).
    query_block: queries per device call.
    normalize: L2-normalise the queries first.

  Returns:
    `(scores, doc_indices)`, each [Q, k].

  Raises:
    ValueError: the queries are not [Q, d] with the corpus's d, or k < 1.
  """
  q = np.asarray(queries_qd, np.float32)
  if q.ndim != 2 or q.shape[1] != corpus.blocks.shape[-1]:
    raise ValueError(
        f"queries: shape {q.shape}, expected [Q, {corpus.blocks.shape[-1]}] " "(the corpus dim)"
    )
  if normalize:
    q = l2_normalize(q)
  k = int(k)
  if k < 1:
    raise ValueError(f"k must be ≥ 1, got {k}")
  n_q = q.shape[0]
  qb = max(1, min(query_block, n_q))
  if corpus.mesh is None:
    fn = functools.partial(
        _search_local, k=k, aggregate=corpus.aggregate, exclude_self=exclude_self
    )
  else:
    fn = _sharded_search(corpus.mesh, corpus.axis, k, corpus.aggregate, exclude_self)
  vals, ids = [], []
  for start in range(0, n_q, qb):
    stop = min(start + qb, n_q)
    qq = np.zeros((qb, q.shape[1]), np.float32)
    qq[: stop - start] = q[start:stop]
    qi = np.full((qb,), -2, np.int32)
    qi[: stop - start] = np.arange(start, stop)
    v, i = fn(
        jnp.asarray(qq), jnp.asarray(qi), corpus.blocks, corpus.seg, corpus.docs, corpus.valid
    )
    vals.append(np.asarray(v)[: stop - start])
    ids.append(np.asarray(i)[: stop - start])
  return np.concatenate(vals), np.concatenate(ids)


def topk_search(
    queries_qd,
    corpus_nd,
    k: int,
    doc_of_row: np.ndarray | None = None,
    *,
    block: int = 4096,
    mesh: Mesh | None = None,
    **kw,
) -> tuple[np.ndarray, np.ndarray]:
  """One-shot `prepare_corpus` + `search`.

  Args:
    queries_qd: queries [Q, d].
    corpus_nd: corpus rows [N, d].
    k: documents per query.
    doc_of_row: [N] document index of each row; None: every row is a document.
    block: rows per corpus block.
    mesh: shard the corpus over this mesh, or None.
    **kw: passed to `search`.

  Returns:
    `(scores [Q, k], doc indices [Q, k])`.
  """
  return search(queries_qd, prepare_corpus(corpus_nd, doc_of_row, block=block, mesh=mesh), k, **kw)


def doc_scores_reference(queries_qd, corpus_nd, doc_of_row=None) -> np.ndarray:
  """Float64 numpy [Q, n_docs] max-chunk cosine scores (a test reference; O(Q·N) memory).

  Args:
    queries_qd: queries [Q, d].
    corpus_nd: corpus rows [N, d].
    doc_of_row: [N] document index of each row; None: every row is a document.

  Returns:
    The [Q, n_docs] (or [Q, N]) scores.
  """
  q = np.asarray(queries_qd, np.float64)
  c = np.asarray(corpus_nd, np.float64)
  q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
  c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
  s = q @ c.T
  if doc_of_row is None:
    return s
  n_docs = int(np.max(doc_of_row)) + 1
  out = np.full((q.shape[0], n_docs), -np.inf)
  np.maximum.at(out.T, doc_of_row, s.T)
  return out


# ----------------------------------------------------------------------------- qrels + IR metrics


@dataclasses.dataclass(frozen=True)
class Qrels:
  """Judgements in index space: query q[j] judged document d[j] with grade[j].

  Attributes:
    q: int32 query indices, sorted by (q, d).
    d: int32 document indices.
    grade: int32 grades.
    n_queries: the query count Q.
    n_docs: the document count.
  """

  q: np.ndarray
  d: np.ndarray
  grade: np.ndarray
  n_queries: int
  n_docs: int

  @property
  def keys(self) -> np.ndarray:
    """Sorted int64 keys q·n_docs + d of the judgements."""
    return self.q.astype(np.int64) * self.n_docs + self.d

  def n_relevant(self) -> np.ndarray:
    """The number of relevant (grade > 0) documents per query.

    Returns:
      [Q] counts.
    """
    return np.bincount(self.q[self.grade > 0], minlength=self.n_queries)


def qrels_from_dict(
    qrels: Mapping[str, Mapping[str, int]], query_ids: Sequence[str], doc_ids: Sequence[str]
) -> Qrels:
  """BEIR-style {query id: {doc id: grade}} → `Qrels` over the given id orders.

  Args:
    qrels: {query id: {doc id: grade}}; queries not in `query_ids` are dropped.
    query_ids: the queries' ids by index.
    doc_ids: the documents' ids by index.

  Returns:
    The `Qrels`.

  Raises:
    KeyError: a judged document has no corpus rows.
  """
  qpos = {q: i for i, q in enumerate(query_ids)}
  dpos = {d: i for i, d in enumerate(doc_ids)}
  qs, ds, gs = [], [], []
  for qid, judged in qrels.items():
    if qid not in qpos:
      continue  # a query without a row is not evaluated (trec_eval: not in the run)
    for did, g in judged.items():
      if did not in dpos:
        raise KeyError(f"qrels: query {qid!r} judges document {did!r}, which has no corpus rows")
      qs.append(qpos[qid])
      ds.append(dpos[did])
      gs.append(int(g))
  order = np.lexsort((np.asarray(ds, np.int64), np.asarray(qs, np.int64)))
  return Qrels(
      np.asarray(qs, np.int32)[order],
      np.asarray(ds, np.int32)[order],
      np.asarray(gs, np.int32)[order],
      len(query_ids),
      len(doc_ids),
  )


def grades(ranked: np.ndarray, qrels: Qrels) -> np.ndarray:
  """Grade [Q, K] of each ranked document (0 when unjudged or an empty slot −1).

  Args:
    ranked: [Q, K] ranked document indices.
    qrels: the judgements.

  Returns:
    The [Q, K] grades.
  """
  ranked = np.asarray(ranked)
  keys = qrels.keys
  qk = np.arange(ranked.shape[0], dtype=np.int64)[:, None] * qrels.n_docs + np.maximum(ranked, 0)
  pos = np.clip(np.searchsorted(keys, qk), 0, max(len(keys) - 1, 0))
  hit = (len(keys) > 0) & (ranked >= 0)
  if len(keys):
    hit = hit & (keys[pos] == qk)
    return np.where(hit, qrels.grade[pos], 0)
  return np.zeros(ranked.shape, np.int32)


def _discount(n: int) -> np.ndarray:
  return 1.0 / np.log2(np.arange(n, dtype=np.float64) + 2.0)


def ideal_dcg(qrels: Qrels, k: int = NDCG_K) -> np.ndarray:
  """IDCG@k [Q]: the query's positive grades, sorted descending, cut at k.

  Args:
    qrels: the judgements.
    k: the cut-off.

  Returns:
    [Q] float64 ideal DCG@k.
  """
  pos = qrels.grade > 0
  q, g = qrels.q[pos], qrels.grade[pos].astype(np.float64)
  order = np.lexsort((-g, q))
  q, g = q[order], g[order]
  first = np.searchsorted(q, q)  # index of each query's first entry
  rank = np.arange(len(q)) - first
  keep = rank < k
  out = np.zeros(qrels.n_queries)
  np.add.at(out, q[keep], g[keep] * _discount(k)[rank[keep]])
  return out


def ir_metrics_per_query(ranked: np.ndarray, qrels: Qrels) -> dict[str, np.ndarray]:
  """nDCG@10, Recall@{1,10,100}, MRR@10 per query [Q] from ranked doc indices [Q, K].

  Args:
    ranked: [Q, K] ranked document indices (−1 = empty slot).
    qrels: the judgements.

  Returns:
    `{metric: [Q]}` for `METRICS`.

  Raises:
    ValueError: `ranked` and `qrels` differ in query count.
  """
  ranked = np.asarray(ranked)
  if ranked.shape[0] != qrels.n_queries:
    raise ValueError(f"ranked has {ranked.shape[0]} queries, qrels {qrels.n_queries}")
  g = np.maximum(grades(ranked, qrels), 0).astype(np.float64)
  K = g.shape[1]
  n_rel = qrels.n_relevant().astype(np.float64)
  out = {}
  kn = min(NDCG_K, K)
  dcg = np.sum(g[:, :kn] * _discount(kn)[None], axis=1)
  idcg = ideal_dcg(qrels, NDCG_K)
  out[f"ndcg@{NDCG_K}"] = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0)
  rel = g > 0
  for k in RECALL_KS:
    hits = np.sum(rel[:, : min(k, K)], axis=1)
    out[f"recall@{k}"] = np.where(n_rel > 0, hits / np.maximum(n_rel, 1), 0.0)
  km = min(MRR_K, K)
  first = np.argmax(rel[:, :km], axis=1)
  out[f"mrr@{MRR_K}"] = np.where(rel[:, :km].any(axis=1), 1.0 / (first + 1.0), 0.0)
  return out


def scored_queries(qrels: Qrels) -> np.ndarray:
  """Mask [Q] of the queries that count: those with at least one relevant document.

  Args:
    qrels: the judgements.

  Returns:
    [Q] bool.
  """
  return qrels.n_relevant() > 0


def mean_metrics(per_query: Mapping[str, np.ndarray], qrels: Qrels) -> dict[str, float]:
  """Averages over `scored_queries` (trec_eval's and BEIR's mean over judged queries).

  Args:
    per_query: `{metric: [Q]}`.
    qrels: the judgements.

  Returns:
    `{metric: mean}`.

  Raises:
    ValueError: no query has a relevant document.
  """
  m = scored_queries(qrels)
  if not m.any():
    raise ValueError("qrels: no query has a relevant document; nothing to score")
  return {k: float(np.mean(np.asarray(v)[m])) for k, v in per_query.items()}


def random_ranking_metrics(qrels: Qrels) -> dict[str, np.ndarray]:
  """Per-query expected metrics when all n documents tie (a uniformly random order).

  E[DCG@k] = (Σ_d g_d / n) Σ_{r≤min(k,n)} 1/log2(r+1);  E[Recall@k] = min(k, n)/n;
  E[RR@k] = Σ_{r≤min(k,n)} (1/r) P(first relevant at r), with R relevant of n:
  P(first at r) = Π_{i<r−1} (n−R−i)/(n−i) · R/(n−r+1).

  Args:
    qrels: the judgements.

  Returns:
    `{metric: [Q]}` for `METRICS`.
  """
  n = qrels.n_docs
  pos = qrels.grade > 0
  gain_sum = np.zeros(qrels.n_queries)
  np.add.at(gain_sum, qrels.q[pos], qrels.grade[pos].astype(np.float64))
  n_rel = qrels.n_relevant().astype(np.float64)
  out = {}
  kn = min(NDCG_K, n)
  idcg = ideal_dcg(qrels, NDCG_K)
  edcg = gain_sum / n * np.sum(_discount(kn))
  out[f"ndcg@{NDCG_K}"] = np.where(idcg > 0, edcg / np.where(idcg > 0, idcg, 1.0), 0.0)
  for k in RECALL_KS:
    out[f"recall@{k}"] = np.where(n_rel > 0, min(k, n) / n, 0.0)
  km = min(MRR_K, n)
  r = np.arange(1, km + 1, dtype=np.float64)
  R = n_rel[:, None]
  # P(no relevant in the first r−1 positions), as a running product over positions.
  none_before = np.cumprod(
      np.concatenate(
          [
              np.ones((len(n_rel), 1)),
              np.clip((n - R - (r[None, :-1] - 1)) / (n - (r[None, :-1] - 1)), 0, 1),
          ],
          axis=1,
      ),
      axis=1,
  )
  p_first = none_before * R / (n - r[None] + 1)
  out[f"mrr@{MRR_K}"] = np.sum(p_first / r[None], axis=1)
  return out


def retention(stitched: Mapping[str, float], native: Mapping[str, float]) -> dict[str, float]:
  """metric → stitched / native (NaN where the native metric is 0).

  Args:
    stitched: `{metric: value}` of the stitched retrieval.
    native: `{metric: value}` of the target's native retrieval (every key of `stitched`).

  Returns:
    `{metric: ratio}`.
  """
  return {
      k: (float(stitched[k]) / float(native[k]) if native[k] else float("nan")) for k in stitched
  }


# ----------------------------------------------------------------------------- overlap


def _matches(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[Q, k, k] a[q, i] == b[q, j], empty slots (−1) never match."""
  return (a[:, :, None] == b[:, None, :]) & (a[:, :, None] >= 0)


def jaccard_at_k(ids_a: np.ndarray, ids_b: np.ndarray, k: int, chunk: int = 512) -> np.ndarray:
  """Per-query |A_k ∩ B_k| / |A_k ∪ B_k| of two ranked lists [Q, ≥k].

  Args:
    ids_a: [Q, ≥k] ranked document indices (−1 = empty).
    ids_b: [Q, ≥k] likewise.
    k: the cut-off.
    chunk: queries per vectorised step.

  Returns:
    [Q] Jaccard@k, 1 when both lists are empty.
  """
  a, b = np.asarray(ids_a)[:, :k], np.asarray(ids_b)[:, :k]
  out = []
  for s in range(0, a.shape[0], chunk):
    aa, bb = a[s : s + chunk], b[s : s + chunk]
    inter = _matches(aa, bb).any(axis=2).sum(axis=1)
    union = (aa >= 0).sum(1) + (bb >= 0).sum(1) - inter
    out.append(np.where(union > 0, inter / np.maximum(union, 1), 1.0))
  return np.concatenate(out)


def rank_similarity_at_k(
    ids_a: np.ndarray, ids_b: np.ndarray, k: int, chunk: int = 512
) -> np.ndarray:
  """Per-query RankSim@k (module docstring) of two ranked lists [Q, ≥k]; 0 when disjoint.

  Args: as `jaccard_at_k`.

  Returns:
    [Q] RankSim@k.
  """
  a, b = np.asarray(ids_a)[:, :k], np.asarray(ids_b)[:, :k]
  r = np.arange(1, a.shape[1] + 1, dtype=np.float64)
  harmonic = np.concatenate([[1.0], np.cumsum(1.0 / np.arange(1, a.shape[1] + 1))])
  out = []
  for s in range(0, a.shape[0], chunk):
    m = _matches(a[s : s + chunk], b[s : s + chunk])  # [q, i, j]
    ra, rb = r[None, :, None], r[None, None, :]
    w = 1.0 / ((1.0 + np.abs(ra - rb)) * np.maximum(ra, rb))
    num = np.sum(np.where(m, w, 0.0), axis=(1, 2))
    c = m.any(axis=2).sum(axis=1)
    out.append(np.where(c > 0, num / harmonic[c], 0.0))
  return np.concatenate(out)


# ----------------------------------------------------------------------------- translation + mKNN


@functools.partial(jax.jit, static_argnames=())
def _rank_block(yhat_bd, rows_b, y_nd):
  s_bn = jnp.einsum("bd,nd->bn", yhat_bd, y_nd, precision=HIGHEST)
  true = jnp.take_along_axis(s_bn, rows_b[:, None], axis=1)
  return 1 + jnp.sum(s_bn > true, axis=1), true[:, 0]


def translation_metrics(
    pred_nd: jax.typing.ArrayLike, target_nd: jax.typing.ArrayLike, *, block: int = 512
) -> dict[str, float]:
  """vec2vec's top-1 accuracy and mean rank, and the mean cosine (module docstring).

  Args:
    pred_nd: translated rows ŷ [n, d].
    target_nd: the target's rows y [n, d] of the same texts.
    block: translated rows per device call.

  Returns:
    `{"top1", "mean_rank", "mean_cos", "n_rows"}`.

  Raises:
    ValueError: the two arrays differ in shape.
  """
  p = l2_normalize(pred_nd)
  y = l2_normalize(target_nd)
  if p.shape != y.shape:
    raise ValueError(f"translated rows {p.shape} and target rows {y.shape} differ in shape")
  n = p.shape[0]
  b = max(1, min(block, n))
  yd = jnp.asarray(y)
  ranks, cos = [], []
  for s in range(0, n, b):
    e = min(s + b, n)
    pp = np.zeros((b, p.shape[1]), np.float32)
    pp[: e - s] = p[s:e]
    rows = np.zeros((b,), np.int32)
    rows[: e - s] = np.arange(s, e)
    r, c = _rank_block(jnp.asarray(pp), jnp.asarray(rows), yd)
    ranks.append(np.asarray(r)[: e - s])
    cos.append(np.asarray(c)[: e - s])
  ranks = np.concatenate(ranks).astype(np.float64)
  cos = np.concatenate(cos).astype(np.float64)
  return {
      "top1": float(np.mean(ranks == 1)),
      "mean_rank": float(np.mean(ranks)),
      "mean_cos": float(np.mean(cos)),
      "n_rows": n,
  }


def knn(
    x_nd: jax.typing.ArrayLike,
    k: int,
    *,
    block: int = 4096,
    query_block: int = 1024,
    mesh: Mesh | None = None,
) -> np.ndarray:
  """Indices [n, k] of each row's k nearest other rows by cosine (exact, self excluded).

  Args:
    x_nd: rows [n, d].
    k: neighbours per row, in [1, n − 1].
    block: rows per corpus block.
    query_block: queries per device call.
    mesh: shard the corpus over this mesh, or None.

  Returns:
    [n, k] int32 row indices, nearest first.

  Raises:
    ValueError: k is not in [1, n − 1].
  """
  x = np.asarray(x_nd, np.float32)
  if not 1 <= k < x.shape[0]:
    raise ValueError(f"k must be in [1, {x.shape[0] - 1}] for {x.shape[0]} rows, got {k}")
  corpus = prepare_corpus(x, None, block=block, mesh=mesh)
  return search(x, corpus, k, exclude_self=True, query_block=query_block)[1]


def mutual_knn(knn_a: np.ndarray, knn_b: np.ndarray) -> float:
  """mean_i |N_A(i) ∩ N_B(i)| / k from two kNN index lists [n, k].

  Args:
    knn_a: [n, k] neighbour indices in space A.
    knn_b: [n, k] neighbour indices in space B.

  Returns:
    mKNN@k(A, B).

  Raises:
    ValueError: the lists differ in shape.
  """
  a, b = np.asarray(knn_a), np.asarray(knn_b)
  if a.shape != b.shape:
    raise ValueError(f"kNN lists differ in shape: {a.shape} vs {b.shape}")
  inter = np.concatenate(
      [
          _matches(a[s : s + 512], b[s : s + 512]).any(axis=2).sum(axis=1)
          for s in range(0, a.shape[0], 512)
      ]
  )
  return float(np.mean(inter / a.shape[1]))


def mutual_knn_all_pairs(xs: Sequence[jax.typing.ArrayLike], k: int, **kw) -> np.ndarray:
  """[M, M] mutual-kNN alignment of row-aligned spaces (one kNN search per space).

  Args:
    xs: M row-aligned arrays [n, d_i].
    k: neighbours per row.
    **kw: passed to `knn`.

  Returns:
    The symmetric [M, M] matrix, 1 on the diagonal.
  """
  lists = [knn(x, k, **kw) for x in xs]
  m = len(lists)
  out = np.eye(m)
  for i in range(m):
    for j in range(i + 1, m):
      out[i, j] = out[j, i] = mutual_knn(lists[i], lists[j])
  return out


# ----------------------------------------------------------------------------- evaluation + tables


def evaluate(
    queries_qd, corpus: Corpus, qrels: Qrels, *, k: int = max(RECALL_KS), query_block: int = 1024
) -> tuple[dict[str, float], np.ndarray]:
  """(mean IR metrics, ranked doc indices [Q, k]) of one query set against one corpus.

  Args:
    queries_qd: queries [Q, d].
    corpus: the packed corpus.
    qrels: the judgements, over the corpus's documents.
    k: documents ranked per query (at most the document count).
    query_block: queries per device call.

  Returns:
    `(metrics, ranked)`: the `mean_metrics` and the [Q, k] ranked document indices.

  Raises:
    ValueError: the corpus and qrels differ in document count (or as `search` and
      `mean_metrics` raise).
  """
  k = min(k, corpus.n_docs)
  if corpus.n_docs != qrels.n_docs:
    raise ValueError(f"corpus has {corpus.n_docs} documents, qrels {qrels.n_docs}")
  _, ids = search(queries_qd, corpus, k, query_block=query_block)
  return mean_metrics(ir_metrics_per_query(ids, qrels), qrels), ids


def overlap(
    ids_a: np.ndarray, ids_b: np.ndarray, ks: Sequence[int], mask: np.ndarray | None = None
) -> dict[str, float]:
  """Mean Jaccard@k and RankSim@k over queries (`mask` selects queries).

  Args:
    ids_a: [Q, ≥k] ranked document indices of ranking A.
    ids_b: [Q, ≥k] those of ranking B.
    ks: the cut-offs.
    mask: [Q] bool, the queries averaged; None: all.

  Returns:
    `{"jaccard@k", "ranksim@k"}` for each k.
  """
  m = np.ones(ids_a.shape[0], bool) if mask is None else np.asarray(mask)
  out = {}
  for k in ks:
    out[f"jaccard@{k}"] = float(np.mean(jaccard_at_k(ids_a, ids_b, k)[m]))
    out[f"ranksim@{k}"] = float(np.mean(rank_similarity_at_k(ids_a, ids_b, k)[m]))
  return out


def join_stitch_results(table: pd.DataFrame, results: pd.DataFrame | None) -> pd.DataFrame:
  """Left-joins the stitch results onto a one-row-per-(source, target, method) table.

  The results are in the long schema (`metrics.TABLE_COLUMNS`); they join as
  `stitch_<metric>` columns. Uses the held-out rows (fold "val") at the chosen λ
  (`chosen` True) for ridge and the MLPs, and the control rows (method train_mean, source
  train_mean) as they are.

  Args:
    table: one row per (source, target, method).
    results: the stitch results, or None.

  Returns:
    `table` with the `stitch_<metric>` columns (unchanged when there are no results).
  """
  if results is None or results.empty:
    return table
  r = results[(results["fold"] == "val")]
  r = r[r["chosen"].astype(bool) | r["method"].isin(["train_mean", "zero"])]
  wide = r.pivot_table(
      index=["source", "target", "method"], columns="metric", values="value", aggfunc="first"
  )
  wide.columns = [f"stitch_{c}" for c in wide.columns]
  wide = wide.reset_index()
  return table.merge(wide, on=["source", "target", "method"], how="left")
