"""What the processes of a multi-process run must agree on, and how they agree.

Every function here is a no-op (or trivially local) in a single-process run, and a
collective in a multi-process one: every process must call it, in the same order.
Values travel as small host arrays through `multihost_utils.process_allgather`, so
no private runtime API is needed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from typing import Any

import jax
import numpy as np


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def allgather_bytes(data: bytes) -> list[bytes]:
  """Every process's `data`, in process order (a collective)."""
  if not is_multiprocess():
    return [data]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  lengths = np.asarray(multihost_utils.process_allgather(np.int32(len(data)))).reshape(-1)
  padded = np.zeros(int(lengths.max()) or 1, np.uint8)
  padded[:len(data)] = np.frombuffer(data, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [gathered[i, :int(n)].tobytes() for i, n in enumerate(lengths)]


def allgather_json(value: Any) -> list[Any]:
  """Every process's JSON-serialisable `value`, in process order (a collective)."""
  return [json.loads(b.decode("utf-8"))
          for b in allgather_bytes(json.dumps(value, sort_keys=True).encode("utf-8"))]


def from_process_zero(value: Any) -> Any:
  """Process 0's JSON-serialisable `value` on every process (a collective)."""
  return allgather_json(value)[0]


def all_agree(flag: bool) -> bool:
  """True when `flag` is true on every process (a collective)."""
  return all(allgather_json(bool(flag)))


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name`."""
  if is_multiprocess():
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


class ConfigMismatchError(ValueError):
  """The processes of one run were started with different configurations."""


def check_same_config(config_text: str) -> None:
  """Refuses to go on unless every process parsed the same effective gin config.

  Processes compare a fingerprint first; when they differ, each process names the
  lines in which its config differs from process 0's (a silent divergence would
  otherwise train a model no config describes).
  """
  if not is_multiprocess():
    return
  digest = hashlib.sha256(config_text.encode("utf-8")).hexdigest()
  digests = allgather_json(digest)
  if len(set(digests)) == 1:
    return
  texts = [b.decode("utf-8") for b in allgather_bytes(config_text.encode("utf-8"))]
  reference = texts[0].splitlines()
  lines = []
  for index, text in enumerate(texts[1:], 1):
    if digests[index] == digests[0]:
      continue
    diff = [l for l in difflib.unified_diff(reference, text.splitlines(), lineterm="", n=0)
            if l[:1] in "+-" and not l.startswith(("+++", "---"))]
    lines.append(f"process {index} differs from process 0 in: "
                 + "; ".join(f"{'process 0 has' if l[0] == '-' else f'process {index} has'} "
                             f"{l[1:].strip()!r}" for l in diff[:12])
                 + (f"; and {len(diff) - 12} more lines" if len(diff) > 12 else ""))
  raise ConfigMismatchError(
      "the processes of this run were started with different gin configs (check each "
      "process's --gin_file and --gin.NAME=VALUE flags): " + " | ".join(lines))


def preemption_requested(step: int) -> bool:
  """Whether every process has reached the step at which a preemption notice
  (SIGTERM to any one process) is to be honoured.

  jax.distributed's preemption service propagates the notice to all processes and
  picks one step after the largest step any of them has reached, so every process
  stops, and saves, at the same step. Must be called at every step by every process.
  """
  if not is_multiprocess():
    return False
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.reached_preemption_sync_point(step)


def shutdown() -> None:
  """Leaves the cluster once every process got here: process 0 hosts the coordination
  service, so it must not go while another process still needs it."""
  if not is_multiprocess():
    return
  barrier("ernie3_jax_shutdown")
  jax.distributed.shutdown()
