"""Configuration checks that run before the entrypoint writes anything to MODEL_DIR.

A run that cannot work (a mesh that does not fit the devices, an unregistered task,
a missing data file, a length a task cannot take, a checkpoint from another model
config) fails here with a non-zero exit, before `config.gin` or `checkpoints/` exist.
"""

from __future__ import annotations

import os

from ernie3_jax.runtime import storage


def check(run_mode: str, model_dir: str) -> None:
  """Raises the first configuration error of `run_mode`, writing nothing to `model_dir`."""
  from ernie3_jax.cli import runs  # pylint: disable=g-import-not-at-top
  if run_mode == "train" and runs.configured_job() == "finetune":
    from ernie3_jax.training import finetune  # pylint: disable=g-import-not-at-top
    from ernie3_jax.evaluation import seqio_eval  # pylint: disable=g-import-not-at-top
    finetune.finetune(model_dir, evaluator_factory=seqio_eval.ValidationEvaluator,
                      dry_run=True)
  elif run_mode == "train":
    from ernie3_jax.training import train as train_lib  # pylint: disable=g-import-not-at-top
    # The trainer's own checks, with the gin-bound arguments of the real run, stop
    # before the checkpoint directory is created.
    train_lib.train(model_dir, dry_run=True)
  elif run_mode in ("eval", "infer"):
    from ernie3_jax.training import checkpoint_files  # pylint: disable=g-import-not-at-top
    if not storage.isdir(os.path.join(model_dir, "checkpoints")):
      raise FileNotFoundError(
          f"--run_mode={run_mode} needs a trained MODEL_DIR, but {model_dir!r} (model_dir.path) "
          "has no checkpoints/ directory; train first with the same MODEL_DIR")
    try:
      checkpoint_files.latest_checkpoint_dir(model_dir)
    except FileNotFoundError as e:
      raise FileNotFoundError(f"--run_mode={run_mode}, MODEL_DIR {model_dir!r}: {e}") from None
