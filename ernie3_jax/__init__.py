"""ernie3-jax: ERNIE 3.0 in JAX.

Sub-packages: `model` (Flax modules), `parallel` (mesh and logical axis rules).
"""
