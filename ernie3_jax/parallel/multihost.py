"""What the processes of a multi-process run must agree on, and how they agree.

Every function here is a no-op (or trivially local) in a single-process run, and a
collective in a multi-process one: every process must call it, in the same order.
Values travel as small host arrays through `multihost_utils.process_allgather`. The
one exception is `CompiledEverywhere`, whose barrier is the coordination service's own
(`jax._src.distributed.global_state.client.wait_at_barrier`): a barrier made of
collectives would itself be the first collective it is meant to protect.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import time
from typing import Any, Callable

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


# How long a process that has compiled a step waits for the others to compile it too
# (`--compile_barrier_timeout_s`). Compile times differ between processes: one loads the
# step from JAX's compilation cache in seconds while another compiles it for minutes
# under load. Without the wait, the fast process enters the step's first collective
# alone, and gloo gives up setting up that collective after a fixed 30 s
# ("Gloo context initialization failed: DEADLINE_EXCEEDED"; gloo's store timeout, which
# no JAX or XLA option changes).
DEFAULT_COMPILE_BARRIER_TIMEOUT_S = 1800.0
_compile_barrier_timeout_s = DEFAULT_COMPILE_BARRIER_TIMEOUT_S
_COMPILE_BARRIERS = itertools.count(1)


def set_compile_barrier_timeout(seconds: float) -> None:
  """Sets how long `CompiledEverywhere` waits for the slowest process (the CLI's
  `--compile_barrier_timeout_s`)."""
  if not seconds > 0:
    raise ValueError(f"--compile_barrier_timeout_s must be positive, got {seconds}")
  global _compile_barrier_timeout_s
  _compile_barrier_timeout_s = float(seconds)


def compile_barrier_timeout() -> float:
  return _compile_barrier_timeout_s


class CompileBarrierTimeoutError(TimeoutError):
  """Another process did not finish compiling a step within --compile_barrier_timeout_s
  (a TimeoutError, so the CLI reports it in one line)."""


def _signature(args: Any) -> tuple:
  """What decides whether a jitted function compiles again: the arguments' tree, shapes,
  dtypes and shardings (weak types included)."""
  leaves, tree = jax.tree_util.tree_flatten(args)
  return (tree, tuple((getattr(x, "shape", None), str(getattr(x, "dtype", type(x))),
                       getattr(x, "weak_type", None), getattr(x, "sharding", None))
                      for x in leaves))


class CompiledEverywhere:
  """A jitted step that no process runs before every process has compiled it.

  On the first call with each new argument signature (shapes, dtypes, shardings), the
  step is compiled ahead of time (`lower(...).compile()`, which the ordinary call then
  reuses), and every process waits at a coordination-service barrier, for at most
  `--compile_barrier_timeout_s`, before entering the step's collectives together. A
  single-process run calls the jitted function directly.
  """

  def __init__(self, jitted: Callable, name: str):
    self._jitted = jitted
    self._name = name
    self._compiled: set = set()

  def __call__(self, *args):
    if is_multiprocess():
      key = _signature(args)
      if key not in self._compiled:
        self._jitted.lower(*args).compile()
        self._compiled.add(key)
        # Every process compiles the same signatures in the same order, so the count
        # names the same barrier everywhere, and no barrier id is used twice.
        wait_for_all(f"ernie3_jax_compiled_{self._name}_{next(_COMPILE_BARRIERS)}",
                     f"compiling the {self._name.replace('_', ' ')}")
    return self._jitted(*args)

  def __getattr__(self, name):
    return getattr(self._jitted, name)


def wait_for_all(barrier_id: str, what: str, timeout_s: float | None = None) -> float:
  """Waits at the coordination service's barrier `barrier_id` until every process has
  finished `what`; returns the seconds waited. Fails after `timeout_s` (default:
  --compile_barrier_timeout_s), naming the flag."""
  if not is_multiprocess():
    return 0.0
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  timeout_s = compile_barrier_timeout() if timeout_s is None else timeout_s
  start = time.monotonic()
  try:
    distributed.global_state.client.wait_at_barrier(barrier_id, int(timeout_s * 1000))
  except Exception as e:  # pylint: disable=broad-except
    if "DEADLINE_EXCEEDED" not in str(e) and "timed out" not in str(e).lower():
      raise
    waited = time.monotonic() - start
    if waited < 0.9 * timeout_s:  # it came late: another process had given up already
      how = (f"finished {what} after another process had given up waiting for it at the "
             f"barrier")
    else:
      how = (f"finished {what} but waited {waited:.0f} s for the other processes of the "
             f"run to finish it")
    raise CompileBarrierTimeoutError(
        f"process {jax.process_index()} {how} (--compile_barrier_timeout_s={timeout_s:g}); "
        f"raise --compile_barrier_timeout_s if a process compiles this slowly, or look in "
        f"the other processes' logs for why they did not get there") from None
  waited = time.monotonic() - start
  if waited >= 10:
    print(f"process {jax.process_index()} waited {waited:.0f} s for the other processes "
          f"to finish {what}", flush=True)
  return waited


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
