"""ernie3-jax: ERNIE 3.0 in JAX.

Sub-packages, lowest layer first (tests/test_import_graph.py holds the order and checks
it; docs/DESIGN.md draws it): runtime, model, parallel, config, data, superglue,
tasks (seqio registrations, from tasks/ in the repository), training, evaluation, inference,
tools, cli.
"""
