"""host_memory: the glibc settings that keep XLA:CPU's temporaries mapped between steps."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
from absl import flags

from ernie3_jax.runtime import host_memory
from tests.conftest import REPO_ROOT

if os.path.join(REPO_ROOT, "benchmarks") not in sys.path:
  sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
import bench_common  # noqa: E402  pylint: disable=g-import-not-at-top

# A jitted function whose temporaries (two cumulative sums of a 64 MB array) XLA
# puts in one block of about 200 MB; prints the fewest page faults of a call after
# warm-up. (The fewest: a call may start before the previous one's block is freed.)
_FAULTS_SCRIPT = """
import resource, time, jax, jax.numpy as jnp
x = jnp.ones((1 << 18, 64), jnp.float32)
def g(x):
  a = jnp.cumsum(x, axis=1)
  return (a * jnp.cumsum(a[:, ::-1], axis=1)).sum()
f = jax.jit(g)
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
faults = []
for _ in range(10):
  time.sleep(0.05)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(temp, min(faults[2:]))  # the quietest of 8 steady-state calls
"""


def test_environment_adds_the_tunables_and_keeps_the_users_own():
  env = host_memory.environment({"PATH": "/bin"})
  assert env["PATH"] == "/bin"
  assert env[host_memory.ENV_VAR] == host_memory.TUNABLES
  assert host_memory.active(env)

  mine = host_memory.environment({host_memory.ENV_VAR: "glibc.malloc.arena_max=4:x.y=1"})
  parts = mine[host_memory.ENV_VAR].split(":")
  assert parts[:2] == ["glibc.malloc.arena_max=4", "x.y=1"]  # the user's, first and unchanged
  assert "glibc.malloc.mmap_max=0" in parts
  assert not any(p == "glibc.malloc.arena_max=1" for p in parts)
  assert not host_memory.active(mine)  # arena_max=4 is not ours: warn_if_unset would warn
  assert not host_memory.active({})


def test_warn_if_unset_only_for_cpu_runs_without_the_tunables(monkeypatch):
  monkeypatch.setenv(host_memory.ENV_VAR, "")
  assert not host_memory.warn_if_unset("gpu")
  assert host_memory.warn_if_unset("cpu") == (platform.system() == "Linux")
  monkeypatch.setenv(host_memory.ENV_VAR, host_memory.TUNABLES)
  assert not host_memory.warn_if_unset("cpu")


def _faults(env: dict[str, str]) -> tuple[int, int]:
  out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], env=env, cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=300, check=True)
  temp, faults = out.stdout.split()
  return int(temp), int(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc tunables")
def test_tunables_stop_each_call_faulting_its_temporaries_in_again():
  env = {k: v for k, v in os.environ.items() if k != host_memory.ENV_VAR}
  temp, faults_without = _faults(env)
  pages = temp // 4096
  assert temp > 100 << 20
  # Without the settings the freed block is unmapped, so the call faults it in again.
  assert faults_without > pages // 2, (faults_without, pages)
  _, faults_with = _faults(host_memory.environment(env))
  assert faults_with < pages // 20, (faults_with, pages)


class _EnvironmentProbe:
  """Served by a benchmark worker: reports the environment the worker started with."""

  def tunables(self) -> str:
    return os.environ.get(host_memory.ENV_VAR, "")


def test_benchmark_workers_start_with_the_tunables_and_leave_ours_alone():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # the worker reads --host_memory_tunables (default: on)
  before = dict(os.environ)
  worker = bench_common.Worker(_EnvironmentProbe, ["probe"])
  try:
    assert host_memory.active({host_memory.ENV_VAR: worker.call("tunables")})
  finally:
    worker.close()
  assert dict(os.environ) == before
