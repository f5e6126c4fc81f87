"""Retrieval evaluation: native, stitched and overlap metrics over a chunked corpus."""
