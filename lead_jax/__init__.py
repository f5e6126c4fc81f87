"""lead_jax: embed texts with many models, compare every pair of embedding spaces, stitch them."""

__version__ = "0.1.0"
