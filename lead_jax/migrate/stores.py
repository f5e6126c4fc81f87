"""Vector stores as migration sources and targets: LanceDB, Chroma, lead_jax's zarr store.

A collection is named by one string, `<backend>:<location>#<name>`:

    lancedb:/data/db#docs                      a LanceDB table (embedded, `lancedb.connect`)
    chroma:/data/chroma#docs                   a Chroma collection (`chromadb.PersistentClient`)
    zarr:/runs/x/store#wordnet/train/corpus/m  an array of lead_jax's store

`read` gives a checked `Collection` (ids, vectors, texts, the backend's metadata); bad
input raises `MigrateError` naming the collection and the id. A target is written with
`create` (refused when it exists), `write` (one batch, atomic or idempotent by id),
`done_ids` (what a killed run already wrote) and `finish` (provenance, complete flag):

  * LanceDB: one `Table.add` per batch; a Lance commit is atomic (a new manifest version),
    so a SIGKILL leaves a batch wholly in or wholly out, and `done_ids` reads the ids that
    are in. Provenance is the schema metadata `lead_jax` (JSON), written with the table;
    completion is the `lead_jax_complete` metadata of the vector field.
  * Chroma: `Collection.upsert` per batch (ids are keys, so a repeated batch cannot
    duplicate an id). Provenance is the collection metadata `lead_jax` (JSON) and
    completion its `lead_jax_complete` flag. Embedded Chroma caches a store per process:
    one process per Chroma directory at a time.
  * zarr: lead_jax's resumable store writer (one block per batch, committed in order);
    ids in an `ids.json` sidecar written before any row; meta.json holds provenance.

No backend ever writes to a source: sources are opened read-only by these functions
(there is no write path that takes the source address), and `create` refuses a target
that is the source.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from lead_jax import data, files, store
from lead_jax.errors import InputError

BACKENDS = ("lancedb", "chroma", "zarr")
META_KEY = "lead_jax"  # provenance / model metadata key in every backend
COMPLETE_KEY = "lead_jax_complete"


class MigrateError(InputError):
  """Bad migration input: the message names the collection and, where it applies, the id."""


@dataclasses.dataclass(frozen=True)
class Address:
  """A collection's address: backend, location (a directory) and name.

  Attributes:
    backend: one of `BACKENDS`.
    location: the database directory (LanceDB, Chroma) or store root (zarr).
    name: the table / collection, or `dataset/split/kind/model` for zarr.
  """

  backend: str
  location: str
  name: str

  def __str__(self) -> str:
    return f"{self.backend}:{self.location}#{self.name}"


def parse(address: str, what: str = "collection") -> Address:
  """`<backend>:<location>#<name>` → `Address`.

  Args:
    address: the collection's address.
    what: which setting it came from, for the message.

  Returns:
    The `Address` (location made absolute).

  Raises:
    MigrateError: not of that form, or an unknown backend.
  """
  backend, sep, rest = str(address).partition(":")
  location, sep2, name = rest.rpartition("#")
  if not (sep and sep2 and location and name) or backend not in BACKENDS:
    raise MigrateError(
        f"{what} {address!r}: expected <backend>:<location>#<name> with backend one of "
        f"{BACKENDS}, e.g. lancedb:/data/db#docs"
    )
  if backend == "zarr" and len(name.split("/")) != 4:
    raise MigrateError(f"{what} {address!r}: a zarr collection is #dataset/split/kind/model")
  return Address(backend, os.path.abspath(os.path.expanduser(location)), name)


@dataclasses.dataclass
class Collection:
  """A collection read into memory and checked.

  Attributes:
    address: where it lives.
    ids: [n] the ids (unique, non-empty strings).
    vectors: [n, d] float32, finite.
    texts: per id its text, None where the collection has none; None: no texts at all.
    meta: the backend's lead_jax metadata (e.g. `{"model": …}`, or a translation's
      provenance); {} when none.
  """

  address: Address
  ids: list[str]
  vectors: np.ndarray
  texts: list[str | None] | None
  meta: dict

  @property
  def n(self) -> int:
    return len(self.ids)

  @property
  def dim(self) -> int:
    return int(self.vectors.shape[1])


# ----------------------------------------------------------------------------- checks


def check_rows(
    where: Address | str, ids: Sequence[Any], vectors: Sequence[Any], report: list | None = None
) -> np.ndarray:
  """Checks ids and vectors of a collection; returns the vectors as one [n, d] float32 array.

  Args:
    where: the collection, for messages.
    ids: the raw ids (None or "" counts as missing).
    vectors: the raw vectors (rows of possibly different length, or None).
    report: None: raise at the first problem. A list: append every problem found (a
      description naming the first ids) and return what can be returned (rows of another
      dim or without a vector become NaN rows), for `plan`.

  Returns:
    The [n, d] float32 vectors.

  Raises:
    MigrateError: (without `report`) an empty collection, a missing or duplicate id, a
      missing vector, rows of different dims, or a NaN/Inf entry; the message names the
      collection and the id.
  """

  def problem(msg):
    if report is None:
      raise MigrateError(f"{where}: {msg}")
    report.append(msg)

  if len(ids) == 0:
    raise MigrateError(f"{where}: the collection is empty")
  seen: dict[str, int] = {}
  missing, dups = [], []
  for i, x in enumerate(ids):
    if x is None or str(x) == "":
      missing.append(i)
      if report is None:
        problem(f"row {i} has no id (missing id)")
    elif x in seen:
      dups.append(x)
      if report is None:
        problem(f"duplicate id {x!r} (rows {seen[x]} and {i})")
    else:
      seen[x] = i
  if missing:
    problem(f"{len(missing)} rows have no id (missing ids; first at row {missing[0]})")
  if dups:
    problem(f"{len(dups)} duplicate ids (first {sorted(set(dups))[:3]})")
  if isinstance(vectors, np.ndarray) and vectors.ndim == 2:
    arr = vectors
  else:
    dims: dict[int, list] = {}
    for i, v in zip(ids, vectors):
      if v is None:
        problem(f"id {i!r} has no vector")
        continue
      dims.setdefault(len(v), []).append(i)
    main = max(dims, key=lambda d: len(dims[d])) if dims else 0
    if len(dims) > 1:
      other = next(d for d in dims if d != main)
      problem(
          f"dim mismatch: id {dims[main][0]!r} has dim {main}, id {dims[other][0]!r} has dim "
          f"{other} ({sum(len(v) for d, v in dims.items() if d != main)} rows not of dim {main})"
      )
    nan = np.full(main, np.nan, np.float32)
    arr = np.asarray(
        [nan if v is None or len(v) != main else np.asarray(v, np.float32) for v in vectors],
        np.float32,
    )
  arr = np.ascontiguousarray(arr, np.float32)
  bad = ~np.isfinite(arr).all(axis=1)
  if bad.any():
    j = int(np.flatnonzero(bad)[0])
    problem(f"id {ids[j]!r} has a NaN or Inf vector ({int(bad.sum())} such rows)")
  return arr


def read_texts_file(path: str) -> dict[str, str]:
  """{id: text} from a JSONL file of `{"id": …, "text": …}` (or BEIR's `_id`).

  Args:
    path: the file.

  Returns:
    The texts by id.

  Raises:
    MigrateError: a line is not such an object (names the file and line).
  """
  out = {}
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
        key = rec["id"] if "id" in rec else rec["_id"]
        out[str(key)] = str(rec["text"])
      except (ValueError, KeyError, TypeError) as e:
        raise MigrateError(f"{path}:{n}: expected {{'id', 'text'}} JSON ({e})") from None
  return out


# ----------------------------------------------------------------------------- LanceDB


def _lance(addr: Address):
  import lancedb

  return lancedb.connect(addr.location)


def _lance_names(db) -> list[str]:
  return list(db.list_tables().tables)


def _lance_meta(schema) -> dict:
  raw = (schema.metadata or {}).get(META_KEY.encode())
  return json.loads(raw) if raw else {}


class _LanceDB:
  """LanceDB tables: columns `id`, `vector` (fixed-size list of float32), `text`."""

  def exists(self, addr: Address) -> bool:
    return os.path.isdir(addr.location) and addr.name in _lance_names(_lance(addr))

  def read(self, addr: Address, cfg, report: list | None = None) -> Collection:
    import pyarrow as pa
    import pyarrow.compute as pc

    m = cfg.migrate
    if not self.exists(addr):
      raise MigrateError(f"{addr}: no such LanceDB table")
    tbl = _lance(addr).open_table(addr.name).to_arrow()
    missing = [f for f in (m.id_field, m.vector_field) if f not in tbl.column_names]
    if missing:
      raise MigrateError(f"{addr}: no column {missing[0]!r}; columns {tbl.column_names}")
    ids = tbl.column(m.id_field).to_pylist()
    col = tbl.column(m.vector_field).combine_chunks()
    vectors: Any
    if pa.types.is_fixed_size_list(col.type) and col.null_count == 0:
      flat = col.flatten().to_numpy(zero_copy_only=False)
      vectors = flat.reshape(len(col), col.type.list_size)
    else:
      lengths = pc.list_value_length(col).to_pylist()
      if col.null_count == 0 and len(set(lengths)) == 1:
        vectors = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), lengths[0])
      else:
        vectors = col.to_pylist()
    vecs = check_rows(addr, ids, vectors, report)
    texts = tbl.column(m.text_field).to_pylist() if m.text_field in tbl.column_names else None
    return Collection(addr, [str(i) for i in ids], vecs, texts, _lance_meta(tbl.schema))

  def read_meta(self, addr: Address) -> dict:
    tbl = _lance(addr).open_table(addr.name)
    meta = _lance_meta(tbl.schema)
    names = tbl.schema.names
    vmeta = (tbl.schema.field("vector").metadata if "vector" in names else None) or {}
    meta[COMPLETE_KEY] = vmeta.get(COMPLETE_KEY.encode()) == b"true"
    return meta

  def _schema(self, dim: int, meta: dict):
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("text", pa.string()),
        ],
        metadata={META_KEY: json.dumps(meta)},
    )

  def create(self, addr: Address, dim: int, meta: dict) -> None:
    os.makedirs(addr.location, exist_ok=True)
    _lance(addr).create_table(addr.name, schema=self._schema(dim, meta))

  def begin(self, addr: Address, dim: int, meta: dict) -> None:
    del addr, dim, meta  # every write opens the table

  def done_ids(self, addr: Address) -> set[str]:
    tbl = _lance(addr).open_table(addr.name)
    return set(tbl.to_arrow().column("id").to_pylist())

  def write(self, addr: Address, start: int, ids, vectors, texts) -> None:
    import pyarrow as pa

    del start
    tbl = _lance(addr).open_table(addr.name)
    d = vectors.shape[1]
    batch = pa.table(
        {
            "id": pa.array(list(ids), pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), d),
            "text": pa.array(list(texts) if texts is not None else [None] * len(ids), pa.string()),
        },
        schema=tbl.schema,
    )
    tbl.add(batch)  # one Lance commit: the batch is wholly in or wholly out

  def finish(self, addr: Address, meta: dict) -> None:
    del meta  # provenance went in with the schema; completion is a field-metadata commit
    tbl = _lance(addr).open_table(addr.name)
    tbl.update_field_metadata({"path": "vector", "metadata": {COMPLETE_KEY: "true"}})

  def search(self, addr: Address, q_d: np.ndarray, k: int) -> list[dict]:
    tbl = _lance(addr).open_table(addr.name)
    res = tbl.search(np.asarray(q_d, np.float32)).metric("cosine").limit(k).to_arrow()
    return [
        {"id": i, "text": t, "distance": float(d)}
        for i, t, d in zip(*(res.column(c).to_pylist() for c in ("id", "text", "_distance")))
    ]


# ----------------------------------------------------------------------------- Chroma


def _chroma(addr: Address):
  import chromadb
  from chromadb.config import Settings

  # no telemetry, and never chromadb's default embedding function (it downloads a model)
  return chromadb.PersistentClient(
      path=addr.location, settings=Settings(anonymized_telemetry=False)
  )


def _chroma_meta(col) -> dict:
  md = col.metadata or {}
  meta = json.loads(md[META_KEY]) if META_KEY in md else {}
  meta[COMPLETE_KEY] = bool(md.get(COMPLETE_KEY, False))
  return meta


class _Chroma:
  """Chroma collections: ids, embeddings, documents (the texts), metadata."""

  page = 5_000

  def exists(self, addr: Address) -> bool:
    if not os.path.isdir(addr.location):
      return False
    return addr.name in [getattr(c, "name", c) for c in _chroma(addr).list_collections()]

  def _get(self, addr: Address):
    if not self.exists(addr):
      raise MigrateError(f"{addr}: no such Chroma collection")
    return _chroma(addr).get_collection(addr.name, embedding_function=None)

  def read(self, addr: Address, cfg, report: list | None = None) -> Collection:
    del cfg
    col = self._get(addr)
    ids, vecs, texts = [], [], []
    offset = 0
    while True:
      got = col.get(include=["embeddings", "documents"], limit=self.page, offset=offset)
      if not got["ids"]:
        break
      ids += got["ids"]
      vecs.append(np.asarray(got["embeddings"], np.float32))
      texts += list(got["documents"] or [None] * len(got["ids"]))
      offset += len(got["ids"])
    if not ids:
      raise MigrateError(f"{addr}: the collection is empty")
    v = check_rows(addr, ids, np.concatenate(vecs), report)
    meta = _chroma_meta(col)
    meta.pop(COMPLETE_KEY)
    has_texts = any(t is not None for t in texts)
    return Collection(addr, list(ids), v, texts if has_texts else None, meta)

  def read_meta(self, addr: Address) -> dict:
    return _chroma_meta(self._get(addr))

  def create(self, addr: Address, dim: int, meta: dict) -> None:
    del dim
    os.makedirs(addr.location, exist_ok=True)
    try:
      _chroma(addr).create_collection(
          addr.name,
          embedding_function=None,
          metadata={META_KEY: json.dumps(meta), COMPLETE_KEY: False},
          configuration={"hnsw": {"space": "cosine"}},
      )
    except Exception as e:  # noqa: BLE001 - chromadb raises its own ChromaError kinds (a bad name, …)
      raise MigrateError(f"{addr}: Chroma refused to create the collection: {e}") from None

  def begin(self, addr: Address, dim: int, meta: dict) -> None:
    del addr, dim, meta  # every write opens the collection

  def done_ids(self, addr: Address) -> set[str]:
    col = self._get(addr)
    out, offset = set(), 0
    while True:
      got = col.get(include=[], limit=self.page, offset=offset)
      if not got["ids"]:
        return out
      out.update(got["ids"])
      offset += len(got["ids"])

  def write(self, addr: Address, start: int, ids, vectors, texts) -> None:
    del start
    col = self._get(addr)
    # upsert: ids are keys, so writing a batch twice cannot duplicate an id
    col.upsert(ids=list(ids), embeddings=np.asarray(vectors, np.float32), documents=texts)

  def finish(self, addr: Address, meta: dict) -> None:
    col = self._get(addr)
    col.modify(metadata={META_KEY: json.dumps(meta), COMPLETE_KEY: True})

  def search(self, addr: Address, q_d: np.ndarray, k: int) -> list[dict]:
    col = self._get(addr)
    res = col.query(query_embeddings=np.asarray(q_d, np.float32)[None], n_results=k)
    docs = (res.get("documents") or [[None] * len(res["ids"][0])])[0]
    return [
        {"id": i, "text": t, "distance": float(d)}
        for i, t, d in zip(res["ids"][0], docs, res["distances"][0])
    ]


# ----------------------------------------------------------------------------- zarr


def _zarr_parts(addr: Address) -> tuple[str, str, str, str]:
  dataset, split, kind, model = addr.name.split("/")
  return dataset, split, kind, model


def row_ids(rows: data.Rows) -> list[str]:
  """Unique ids of a `data.Rows`: the document id, `doc#j` for the j-th chunk of a longer one.

  Args:
    rows: the rows.

  Returns:
    One id per row.
  """
  count: dict[str, int] = {}
  for d in rows.ids:
    count[d] = count.get(d, 0) + 1
  seen: dict[str, int] = {}
  out = []
  for d in rows.ids:
    j = seen.get(d, 0)
    seen[d] = j + 1
    out.append(d if count[d] == 1 else f"{d}#{j}")
  return out


class _Zarr:
  """lead_jax store arrays: rows positional; ids from `ids.json` or the dataset's rows."""

  def _dir(self, addr: Address) -> pathlib.Path:
    return pathlib.Path(store.array_dir(addr.location, *_zarr_parts(addr)))

  def exists(self, addr: Address) -> bool:
    return (self._dir(addr) / "meta.json").exists()

  def read(self, addr: Address, cfg, report: list | None = None) -> Collection:
    if not self.exists(addr):
      raise MigrateError(f"{addr}: no such store array")
    try:
      _, meta, arr = store.open_complete(addr.location, *_zarr_parts(addr))
    except store.StoreError as e:
      raise MigrateError(f"{addr}: {e}") from None
    x = np.asarray(arr[:].read().result(), np.float32)
    ids_file = self._dir(addr) / "ids.json"
    texts = None
    if ids_file.exists():
      side = files.read_json(ids_file)
      ids, texts = side["ids"], side.get("texts")
    else:
      ids, texts = self._dataset_rows(addr, cfg, meta)
    if len(ids) != len(x):
      raise MigrateError(f"{addr}: {len(ids)} ids for {len(x)} rows")
    vecs = check_rows(addr, ids, x, report)
    meta = dict(meta)
    if meta.get("source") == "translated" and meta.get("target_model"):
      meta["model"] = meta["target_model"]  # the store names the array; the space is this
    return Collection(addr, list(ids), vecs, texts, meta)

  def _dataset_rows(self, addr: Address, cfg, meta: dict):
    from lead_jax.pipeline import embed

    dataset, split, kind, _ = _zarr_parts(addr)
    _, _, rows = embed.split_rows(cfg, [f"{split}/{kind}"])
    r = rows[split, kind]
    if data.dataset_name(cfg.dataset) != dataset or r.digest != meta.get("rows_digest"):
      raise MigrateError(
          f"{addr}: the rows of config.dataset={cfg.dataset!r} with config.data = {cfg.data} "
          f"(digest {r.digest[:12]}…) are not this array's (digest "
          f"{str(meta.get('rows_digest'))[:12]}…); use the data settings it was embedded with"
      )
    return row_ids(r), list(r.texts)

  def read_meta(self, addr: Address) -> dict:
    meta = store.read_meta(addr.location, *_zarr_parts(addr))
    meta[COMPLETE_KEY] = bool(meta.get("complete"))
    if "source_collection" in meta:
      meta["source"] = meta["source_collection"]
    return meta

  def create(self, addr: Address, dim: int, meta: dict) -> None:
    self._open[str(addr)] = self._writer(addr, dim, meta)  # creates the array

  def _writer(self, addr: Address, dim: int, meta: dict):
    m = {k: v for k, v in meta.items() if not k.startswith("_")}
    return store.open_writer(
        addr.location,
        *_zarr_parts(addr),
        n_rows=len(meta["_ids"]),
        dim=dim,
        meta={
            **m,
            "weights_digest": m.get("stitch_digest"),
            "source": "translated",  # the store's own mark of a translated array
            "source_collection": m.get("source"),
        },
        block_rows=int(meta["_block_rows"]),
    )

  def done_ids(self, addr: Address) -> set[str]:
    side = files.read_json(self._dir(addr) / "ids.json")
    progress = files.read_json(self._dir(addr) / "progress.json", missing_ok=True) or {}
    return set(side["ids"][: int(progress.get("committed_rows", 0))])

  def write(self, addr: Address, start: int, ids, vectors, texts) -> None:
    del ids, texts
    self._open[str(addr)].write(start, np.asarray(vectors, np.float32))

  def finish(self, addr: Address, meta: dict) -> None:
    w = self._open.pop(str(addr))
    ident = set(store._IDENTITY) | {"source"}  # noqa: SLF001 - fixed at creation
    w.finish({k: v for k, v in meta.items() if not k.startswith("_") and k not in ident})

  def begin(self, addr: Address, dim: int, meta: dict) -> None:
    if str(addr) not in self._open:
      self._open[str(addr)] = self._writer(addr, dim, meta)
    # the ids (and texts), atomically, before any row; rewritten if a kill came first
    side = {"ids": list(meta["_ids"]), "texts": meta.get("_texts")}
    path = self._dir(addr) / "ids.json"
    if files.read_json(path, missing_ok=True) != side:
      files.write_json(path, side, None)

  def search(self, addr: Address, q_d: np.ndarray, k: int) -> list[dict]:
    from lead_jax.eval import retrieval

    col = self.read(addr, None)
    s, ids = retrieval.topk_search(np.asarray(q_d, np.float32)[None], col.vectors, k)
    return [
        {"id": col.ids[i], "text": col.texts[i] if col.texts else None, "distance": 1 - float(v)}
        for v, i in zip(s[0], ids[0])
    ]

  def __init__(self):
    self._open: dict[str, Any] = {}


_BACKENDS = {"lancedb": _LanceDB(), "chroma": _Chroma(), "zarr": _Zarr()}


def backend(addr: Address):
  """The backend object of an address (`exists`, `read`, `create`, `write`, `finish`, …).

  Args:
    addr: the collection's address.

  Returns:
    Its backend.
  """
  return _BACKENDS[addr.backend]


def read(address: str | Address, cfg, report: list | None = None) -> Collection:
  """Reads and checks a collection (never writes to it).

  Args:
    address: the collection's address (see `parse`).
    cfg: the study config (`migrate` fields; `dataset`/`data` for zarr rows' texts).
    report: collect problems here instead of raising (see `check_rows`).

  Returns:
    The checked `Collection`, its texts filled from `cfg.migrate.texts` when given.

  Raises:
    MigrateError: see `check_rows`; or no such collection.
  """
  addr = address if isinstance(address, Address) else parse(address, "config.migrate.source")
  col = backend(addr).read(addr, cfg, report)
  if cfg.migrate.texts:
    by_id = read_texts_file(cfg.migrate.texts)
    base = col.texts or [None] * col.n
    col.texts = [t if t is not None else by_id.get(i) for i, t in zip(col.ids, base)]
  return col


def search(address: str, cfg, text: str, k: int = 10) -> dict:
  """The top-k of a collection for one text, by the engine's own search (cosine).

  The text is embedded with `cfg.migrate.target_model` (query prefix), or, when unset,
  the model the collection's metadata records.

  Args:
    address: the collection.
    cfg: the study config.
    text: the query.
    k: how many hits.

  Returns:
    `{"collection", "model", "query", "hits": [{"id", "text", "distance"}]}`.

  Raises:
    MigrateError: no such collection, or no model to embed with.
  """
  from lead_jax.migrate import calibrate

  addr = parse(address, "config.migrate.target")
  b = backend(addr)
  if not b.exists(addr):
    raise MigrateError(f"{addr}: no such collection")
  meta = b.read_meta(addr)
  model = cfg.migrate.target_model or meta.get("target_model") or meta.get("model")
  if not model:
    raise MigrateError(f"{addr}: no model recorded; name it with config.migrate.target_model")
  fn, _, _, (qp, _) = calibrate.encoder(cfg, model)
  q = np.asarray(fn([qp + text]), np.float32)[0]
  return {"collection": str(addr), "model": model, "query": text, "hits": b.search(addr, q, k)}


def texts_for(col: Collection, index: np.ndarray, what: str = "sampled") -> list[str]:
  """The texts of rows `index`, refusing any that is missing.

  Args:
    col: the collection.
    index: row indices.
    what: what the rows are, for the message.

  Returns:
    Their texts.

  Raises:
    MigrateError: a row has no text (names the collection and the id).
  """
  if col.texts is None:
    raise MigrateError(
        f"{col.address}: the collection has no texts; give them with config.migrate.texts="
        f"<jsonl of id, text> (first {what} id {col.ids[int(index[0])]!r})"
    )
  out = []
  for i in index:
    t = col.texts[int(i)]
    if t is None or t == "":
      raise MigrateError(f"{col.address}: {what} id {col.ids[int(i)]!r} has no text")
    out.append(t)
  return out


def model_of(col: Collection, given: str = "") -> str:
  """The model that embedded a collection: `given`, checked against the recorded one.

  Args:
    col: the collection.
    given: `config.migrate.source_model` ("" for the recorded model).

  Returns:
    The model name.

  Raises:
    MigrateError: neither is known, or they differ.
  """
  recorded = col.meta.get("model") or col.meta.get("target_model") or ""
  if given and recorded and given != recorded:
    raise MigrateError(
        f"{col.address}: config.migrate.source_model is {given!r}, but the collection records "
        f"model {recorded!r}"
    )
  if not (given or recorded):
    raise MigrateError(
        f"{col.address}: no model recorded in its metadata; name it with "
        "config.migrate.source_model"
    )
  return given or recorded
