"""Metrics, controls, k-fold statistics and results tables."""

from lead_jax.eval.metrics import cka_to_table, regression_metrics, results_to_table

__all__ = ["cka_to_table", "regression_metrics", "results_to_table"]
