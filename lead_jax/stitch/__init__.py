"""Closed-form stitches (ridge λ-path, OLS, Procrustes) for all pairs; saving them."""

from lead_jax.stitch.closed_form import DEFAULT_LAMBDAS, cross_validate_all_pairs, fit_all_pairs

__all__ = ["DEFAULT_LAMBDAS", "cross_validate_all_pairs", "fit_all_pairs"]
