"""The command line: the entrypoint (`python -m ernie3_jax.cli.main`), its run modes, the
checks before anything is written, and the console."""
