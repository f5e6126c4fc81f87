"""Cross-Gram blocks and CKA between embedding spaces."""

from lead_jax.similarity.cka import cka_all_pairs, cka_from_stats
from lead_jax.similarity.gram import cross_gram, gram_blocks, make_layout, shard_rows

__all__ = [
    "cka_all_pairs",
    "cka_from_stats",
    "cross_gram",
    "gram_blocks",
    "make_layout",
    "shard_rows",
]
