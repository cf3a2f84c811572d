"""Decoding and serving: cached generation on the device mesh and its command line
(`python -m ernie3_jax.inference.generate`)."""
