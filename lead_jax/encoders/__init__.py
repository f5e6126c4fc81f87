"""Text encoders: Flax ports of HF encoder models plus pooling and a local loader.

Import the submodules directly (`from lead_jax.encoders import loader`); this
package imports nothing heavy on its own.
"""
