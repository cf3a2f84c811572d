"""Stopping at a preemption notice (SIGTERM) between steps, at one step on every process.

One process: a Python handler turns SIGTERM into a flag the loop reads after each
step. Several processes: jax.distributed's preemption service owns SIGTERM; a notice
to any one process reaches all of them, and they agree on the step at which to stop,
so all save the same step (a process that stopped alone would leave the others
blocked in the next collective).
"""

from __future__ import annotations

import signal

from ernie3_jax.parallel import multihost


class StopRequest:
  """`with StopRequest() as stop: ... if stop.requested(step): save and leave`."""

  def __init__(self):
    self._raised = False
    self._previous = None
    self._installed = False

  def __enter__(self) -> "StopRequest":
    if not multihost.is_multiprocess():
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        self._installed = True
      except ValueError:  # not the main thread: no handler, no preemption support
        pass
    return self

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self._raised = True

  def requested(self, step: int) -> bool:
    """Whether to save and stop after `step`. Every process calls it at every step."""
    if multihost.is_multiprocess():
      return multihost.preemption_requested(step)
    return self._raised

  def __exit__(self, *exc) -> None:
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
