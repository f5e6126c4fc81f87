"""Cross-Gram blocks and CKA between embedding spaces."""

from lead_jax.similarity.cka import cka_all_pairs, cka_from_stats
from lead_jax.similarity.gram import gram_blocks, make_layout

__all__ = ["cka_all_pairs", "cka_from_stats", "gram_blocks", "make_layout"]
