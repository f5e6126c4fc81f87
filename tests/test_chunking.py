"""The cl100k chunker: full coverage, stated overlap, determinism, model independence."""

import hypothesis.strategies as st
from hypothesis import given, settings

from lead_jax.data import chunking
from lead_jax.data.chunking import ChunkConfig, chunk_documents, encoding

ENC = encoding()
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=400)


@settings(max_examples=60, deadline=None)
@given(text=TEXT, window=st.integers(2, 40), overlap_frac=st.floats(0, 0.9))
def test_windows_cover_overlap_and_substring(text, window, overlap_frac):
  overlap = min(int(window * overlap_frac), window - 1)
  cfg = ChunkConfig(window, overlap)
  chunks = chunk_documents([("d", text)], cfg)
  n = len(ENC.encode_ordinary(text))
  assert [c.index for c in chunks] == list(range(len(chunks)))
  # token spans: start at 0, end at n, each at most `window` long, consecutive overlap exactly `overlap`
  assert chunks[0].tok_start == 0 and chunks[-1].tok_end == n
  for a, b in zip(chunks, chunks[1:]):
    assert a.tok_end - a.tok_start == window
    assert a.tok_end - b.tok_start == overlap
  assert all(0 < c.tok_end - c.tok_start <= window for c in chunks) or n == 0
  # character spans: exact substrings that cover the whole text
  covered = 0
  for c in chunks:
    assert c.text == text[c.char_start : c.char_end]
    assert c.char_start <= covered
    covered = max(covered, c.char_end)
  assert covered == len(text)


def test_long_document_has_overlapping_chunks_with_exact_tokens():
  text = " ".join(f"word{i} é 漢字" for i in range(600))
  chunks = chunk_documents([("d", text)], ChunkConfig(256, 25))
  toks = ENC.encode_ordinary(text)
  assert len(chunks) == len(chunking.window_starts(len(toks), 256, 25)) > 2
  for c in chunks:
    # the chunk's text re-tokenizes to (almost exactly) its token span; boundaries may merge
    assert abs(len(ENC.encode_ordinary(c.text)) - (c.tok_end - c.tok_start)) <= 2


def test_deterministic_and_model_independent():
  docs = [(f"d{i}", "lorem ipsum " * (i * 40)) for i in range(6)]
  a = chunk_documents(docs)
  b = chunk_documents(list(reversed(docs)))
  assert a == chunk_documents(docs)
  assert sorted(a, key=lambda c: (c.doc_id, c.index)) == sorted(
      b, key=lambda c: (c.doc_id, c.index)
  )
  # nothing model-specific enters: the config is the only input besides the docs
  assert set(ChunkConfig().to_json()) == {"window", "overlap", "tokenizer"}
  assert chunking.rows_digest([c.text for c in a]) == chunking.rows_digest(
      [c.text for c in chunk_documents(docs)]
  )
  assert chunking.rows_digest(["ab", "c"]) != chunking.rows_digest(["a", "bc"])
