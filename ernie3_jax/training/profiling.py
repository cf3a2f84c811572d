"""Step profiling and host-side data wait, as hooks of the training loop.

`train.profile_steps = (a, b)` traces steps a..b (1-based, inclusive) with
`jax.profiler` into MODEL_DIR/profile (TensorBoard's profile plugin, or Perfetto via the
trace.json.gz beside it, reads it). `DataWait` times the host's wait for each batch, so
the log can tell a slow input pipeline from a slow step.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax

from ernie3_jax.runtime import storage


def check_profile_steps(profile_steps: tuple[int, int] | None, num_steps: int) -> None:
  """Refuses a window that is not 1 <= a <= b (naming the gin binding)."""
  if profile_steps is None:
    return
  try:
    first, last = (int(s) for s in profile_steps)
  except (TypeError, ValueError):
    raise ValueError(f"train.profile_steps={profile_steps!r}: expected two step numbers "
                     "(first, last), e.g. (10, 12)") from None
  if not 1 <= first <= last:
    raise ValueError(f"train.profile_steps={profile_steps!r}: expected 1 <= first <= last")
  if first > num_steps:
    raise ValueError(f"train.profile_steps={profile_steps!r} starts after the run's last step "
                     f"(train.num_steps={num_steps}): nothing would be traced")


class StepProfiler:
  """Starts a trace before step `first` and stops it once step `last` has finished."""

  def __init__(self, model_dir: str, profile_steps: tuple[int, int] | None):
    self.directory = os.path.join(model_dir, "profile")
    # The profiler writes local files only: for an object-store MODEL_DIR it traces into
    # a local folder that is copied to MODEL_DIR/profile when the trace stops.
    self.trace_dir = self.directory
    if storage.is_uri(self.directory):
      import tempfile  # pylint: disable=g-import-not-at-top
      self.trace_dir = tempfile.mkdtemp(prefix="ernie3_profile_")
    self.window = None if profile_steps is None else tuple(int(s) for s in profile_steps)
    self.active = False

  def before_step(self, step: int) -> None:
    """`step` is the number of the step about to run (1-based)."""
    if self.window is not None and step == self.window[0] and not self.active:
      jax.profiler.start_trace(self.trace_dir)
      self.active = True

  def after_step(self, step: int, outputs: Any) -> None:
    if self.active and step >= self.window[1]:
      jax.block_until_ready(outputs)  # the traced steps' device work is in the trace
      self.stop()
      print(f"profile of steps {self.window[0]}-{self.window[1]} written to {self.directory}",
            flush=True)

  def stop(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      if self.trace_dir != self.directory:
        storage.upload_tree(self.trace_dir, self.directory)


class DataWait:
  """Seconds the host spent waiting for batches since the last `take()`."""

  def __init__(self):
    self.seconds = 0.0

  def timed(self, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    self.seconds += time.perf_counter() - start
    return out

  def take(self) -> float:
    seconds, self.seconds = self.seconds, 0.0
    return seconds
