"""The one place the package imports TensorFlow.

TensorFlow is only used for input pipelines; it must never take accelerator memory
that JAX needs, so every module imports `tf` from here, which hides GPUs from it.

Importing TensorFlow prints notices from native code before its logging is set up
(oneDNN, "Could not find cuda drivers", CPU instruction sets), which a user reads as
failure. They are held back here, at their source: the process's stderr is captured
while TensorFlow loads and every line but those notices is written back. Set
ERNIE3_LIBRARY_LOGS=1 (the entrypoint does for `--verbosity=1`) to see them all.
"""

import contextlib
import os
import re
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Notices of native libraries at import: informational, on every machine.
IMPORT_NOTICES = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|failed call to cuInit"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .* rebuild TensorFlow")


def library_logs_wanted() -> bool:
  return os.environ.get("ERNIE3_LIBRARY_LOGS", "") not in ("", "0")


@contextlib.contextmanager
def held_back_stderr(noise: re.Pattern = IMPORT_NOTICES):
  """Captures file descriptor 2 (native code writes there directly); on exit writes back
  every captured line that `noise` does not match."""
  if library_logs_wanted():
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [l for l in captured.read().decode("utf-8", "replace").splitlines(True)
              if not noise.search(l)]
      if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


def _machine_has_gpu() -> bool:
  """Whether a GPU driver's device files exist. Without one TensorFlow cannot take GPU
  memory, and asking it to hide GPUs would only make it probe CUDA and log an error."""
  return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd"))


with held_back_stderr():
  import tensorflow as tf  # noqa: E402

if _machine_has_gpu():
  tf.config.set_visible_devices([], "GPU")

__all__ = ["tf"]
