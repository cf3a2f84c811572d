"""What the entrypoint prints: the run's own lines, library warnings that say nothing to a
user held back, and user errors as one short message (the traceback with -v 1).
"""

from __future__ import annotations

import logging as std_logging
import re

# Warnings libraries print on every run that are harmless here.
HARMLESS_WARNINGS = re.compile(
    # seqio, for the in-memory FunctionDataSources of the embedded data and SuperGLUE:
    # they are shuffled per epoch with the run's seed, and resume at the exact position.
    r"Using an uncached FunctionDataset for training is not recommended"
    # orbax, opening a checkpoint written before it kept per-step metadata files.
    r"|Metadata file does not exist"
    # orbax, when evaluation and inference open the checkpoints to read only (as asked).
    r"|CheckpointManagerOptions.read_only=True|Given directory is read only"
    r"|Missing metrics for step"
    # gin, trying its package-resource reader for an include before the search paths
    # (which find it); a file found nowhere is gin's own error.
    r"|Path not found: .*\.gin$")
# What gin appends to an error raised inside a configurable: names a function, says
# nothing about the cause.
_GIN_CALL_NOTE = re.compile(r"\n\s*In call to configurable .*$", re.MULTILINE)


class _HoldBack(std_logging.Filter):

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not HARMLESS_WARNINGS.search(record.getMessage())


def hold_back_harmless_warnings() -> None:
  """Drops HARMLESS_WARNINGS from absl's (and Python's root) logging handlers."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  for logger in (logging.get_absl_logger(), std_logging.getLogger()):
    if not any(isinstance(f, _HoldBack) for f in logger.filters):
      logger.addFilter(_HoldBack())
  for handler in std_logging.getLogger().handlers + [logging.get_absl_handler()]:
    if not any(isinstance(f, _HoldBack) for f in handler.filters):
      handler.addFilter(_HoldBack())


def is_user_error(error: BaseException) -> bool:
  """Errors that describe bad input, a bad flag or config, or the environment (a file, a
  lock, a damaged checkpoint), as opposed to a failure of the program itself."""
  # pylint: disable=g-import-not-at-top
  from ernie3_jax.training.checkpointing import CheckpointCorruptError
  from ernie3_jax.training.run_lock import RunLockError
  # pylint: enable=g-import-not-at-top
  if isinstance(error, (ValueError, OSError, KeyError, RunLockError, CheckpointCorruptError,
                        FloatingPointError)):
    return True
  return type(error).__module__.startswith("tensorflow") and bool(_inner_error(error))


def _inner_error(error: BaseException) -> str | None:
  """The Python error a tf.data function raised, from TensorFlow's wrapped message."""
  found = re.findall(r"^\s*(\w+(?:Error|Exception)): (.+)$", str(error), re.MULTILINE)
  return f"{found[-1][0]}: {found[-1][1]}" if found else None


def error_line(error: BaseException) -> str:
  """One line naming the error: the innermost cause of a TensorFlow-wrapped one."""
  if type(error).__module__.startswith("tensorflow"):
    inner = _inner_error(error)
    if inner:
      return f"error: {inner}"
  return f"error: {type(error).__name__}: {_GIN_CALL_NOTE.sub('', str(error))}"
