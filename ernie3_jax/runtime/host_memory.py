"""Host allocator settings that keep XLA:CPU's per-step buffers resident.

XLA:CPU gives each execution of a jitted function one block for all of its
temporaries and frees it when the execution ends. For the BERT-base-sized
training step at 2048 tokens that block is 3.8 GB. glibc serves a block that
large with a fresh `mmap` (worker threads allocate from their own arenas, which
map anything over 64 MB directly) and unmaps it on free, so every step faults
the whole block back in: about 780,000 page faults and 2.6 s of system time in
a 10 s step on the 2-core machine the benchmarks ran on.

`TUNABLES` make glibc serve every block from the one main heap and never hand
freed memory back to the kernel, so from the second step on the temporaries
reuse pages that are already mapped: the same step took 7.9 s, with no page
faults. The cost is that the process keeps its peak footprint, which a training
job does anyway. glibc reads the tunables once, at process start, so they are
set in the environment a process is started with (`launch/` scripts, the
Makefile, the benchmarks' workers); `warn_if_unset` says so on CPU runs.
"""

from __future__ import annotations

import os
import platform

from absl import logging

# arena_max=1: threads allocate from the main heap (arenas other than the main one
# map large blocks no matter the mmap settings); mmap_max=0: no block is mapped
# on its own; trim_threshold: freed memory at the top of the heap is kept.
TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
            "glibc.malloc.trim_threshold=1099511627776")
ENV_VAR = "GLIBC_TUNABLES"
_OURS = TUNABLES.split(":")


def environment(env: dict[str, str] | None = None) -> dict[str, str]:
  """`env` (default: this process's) with TUNABLES added to GLIBC_TUNABLES.

  Tunables already set there win: a user's own choice is kept, ours fill in the rest.
  """
  env = dict(os.environ if env is None else env)
  current = _settings(env)
  names = {t.split("=", 1)[0] for t in current}
  added = [t for t in _OURS if t.split("=", 1)[0] not in names]
  env[ENV_VAR] = ":".join(current + added)
  return env


def active(env: dict[str, str] | None = None) -> bool:
  """Whether every one of TUNABLES' settings is in GLIBC_TUNABLES (in any order)."""
  return set(_OURS) <= set(_settings(os.environ if env is None else env))


def _settings(env) -> list[str]:
  """The `name=value` items of env's GLIBC_TUNABLES, in order."""
  return [t for t in env.get(ENV_VAR, "").split(":") if t]


def warn_if_unset(backend: str) -> bool:
  """Logs how to start the process when a CPU run lacks TUNABLES; True if it warned."""
  if backend != "cpu" or platform.system() != "Linux" or active():
    return False
  logging.warning(
      "XLA:CPU re-maps each step's temporaries unless glibc keeps freed memory: start "
      "the process with %s=%s (launch/ scripts and `make demo` do) for a faster step; "
      "see ernie3_jax/runtime/host_memory.py.", ENV_VAR, TUNABLES)
  return True


if __name__ == "__main__":
  # `GLIBC_TUNABLES="$(python -m ernie3_jax.runtime.host_memory)" python ...` (Makefile, launch/).
  print(environment()[ENV_VAR])
