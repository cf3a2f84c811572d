"""How the processes of a multi-process run wait for each other and notice each other's
death: the compile barrier (`--compile_barrier_timeout_s`) and the heartbeat timeout
(`--heartbeat_timeout_s`).

Each test starts two processes of tests/multihost_worker.py on localhost (2 CPU devices
each, gloo collectives), which join the cluster through the trainer's own
`initialize_distributed` and run a jitted all-reduce over the 4 devices.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests import launch_testing as lt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Workers:
  """Two processes of tests/multihost_worker.py, their output in log files."""

  def __init__(self, tmp_path, *flags):
    port = lt.free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    self.logs = [tmp_path / f"process{i}.log" for i in range(2)]
    self.procs = []
    for i in range(2):
      cmd = [sys.executable, "-m", "tests.multihost_worker",
             f"--coordinator_address=localhost:{port}", "--num_processes=2",
             f"--process_id={i}", *flags]
      with open(self.logs[i], "w") as log:
        self.procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                                           stderr=subprocess.STDOUT))

  def output(self, i):
    return lt.read_text(self.logs[i])

  def tails(self):
    return "\n".join(f"--- process {i}:\n{self.output(i)[-3000:]}" for i in range(2))

  def wait_for(self, i, text, timeout):
    """Seconds until process i printed `text` (fails after `timeout`)."""
    start = time.monotonic()
    while text not in self.output(i):
      if time.monotonic() - start > timeout:
        self.kill()
        pytest.fail(f"process {i} never printed {text!r}:\n" + self.tails())
      time.sleep(0.1)
    return time.monotonic() - start

  def wait_exit(self, i, timeout):
    """(exit code, seconds until process i exited)."""
    start = time.monotonic()
    try:
      code = self.procs[i].wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(f"process {i} did not exit within {timeout} s:\n" + self.tails())
    return code, time.monotonic() - start

  def kill(self):
    lt.kill_all(self.procs)


@pytest.fixture(name="workers")
def fixture_workers(tmp_path):
  started = []
  yield lambda *flags: started.append(Workers(tmp_path, *flags)) or started[-1]
  for w in started:
    w.kill()


@pytest.mark.slow  # 60 s of deliberate delay
def test_a_process_compiling_60s_longer_is_waited_for_before_the_first_collective(workers):
  w = workers("--steps=2", "--slow_process=1", "--compile_delay_s=60")
  for i in range(2):
    code, _ = w.wait_exit(i, timeout=400)
    assert code == 0, w.tails()
    out = w.output(i)
    assert "step 1: 6\n" in out and "step 2: 12\n" in out, w.tails()  # all 4 devices summed
  waited = [l for l in w.output(0).splitlines() if l.startswith("process 0 waited")]
  assert waited and "finish compiling the all reduce step" in waited[0], w.tails()
  assert int(waited[0].split()[3]) >= 40, waited


@pytest.mark.slow  # 30 s of gloo's timeout
def test_without_the_compile_barrier_the_same_skew_fails_the_first_collective(workers):
  """What the barrier prevents: gloo's fixed 30 s rendezvous of the first collective."""
  w = workers("--steps=2", "--slow_process=1", "--compile_delay_s=60",
              "--compile_barrier=false")
  w.wait_for(0, "Gloo context initialization failed", timeout=300)
  assert "DEADLINE_EXCEEDED" in w.output(0), w.tails()
  assert "step 1:" not in w.output(0)


def test_an_expired_compile_barrier_names_its_flag_on_every_process(workers):
  w = workers("--steps=2", "--slow_process=1", "--compile_delay_s=15",
              "--compile_barrier_timeout_s=4")
  # Process 0 compiles at once, then gives up on process 1 after the 4 s; process 1
  # finds the barrier expired when it gets there.
  for i in range(2):
    code, _ = w.wait_exit(i, timeout=200)
    assert code != 0, w.tails()
    out = w.output(i)
    assert "CompileBarrierTimeoutError" in out, w.tails()
    assert "(--compile_barrier_timeout_s=4); raise --compile_barrier_timeout_s" in out, out
    assert "step 1:" not in out
  assert ("process 0 finished compiling the all reduce step but waited"
          in w.output(0)), w.tails()
  assert ("process 1 finished compiling the all reduce step after another process had "
          "given up waiting for it" in w.output(1)), w.tails()


@pytest.mark.parametrize("victim", [1, 0])
def test_a_sigkilled_process_stops_the_other_within_the_heartbeat_timeout(workers, victim):
  """Process 1 killed: the coordination service (in process 0) misses its heartbeats for
  --heartbeat_timeout_s and stops process 0. Process 0 killed: the service goes with it,
  and process 1 stops at once."""
  heartbeat = 6
  w = workers("--steps=100000", "--step_sleep_s=0.2", f"--heartbeat_timeout_s={heartbeat}")
  w.wait_for(victim, "step 3:", timeout=240)
  w.procs[victim].send_signal(signal.SIGKILL)
  survivor = 1 - victim
  code, seconds = w.wait_exit(survivor, timeout=120)
  out = w.output(survivor)
  assert code != 0, w.tails()
  assert "another task died" in out, w.tails()
  if victim == 1:
    assert "stopped sending heartbeats" in out, w.tails()
    assert heartbeat - 1 <= seconds <= heartbeat + 10, seconds
  else:
    assert seconds <= 10, seconds


def test_the_timeout_settings_refuse_values_that_cannot_work_naming_the_flag():
  from ernie3_jax.parallel import cluster_env, multihost
  assert cluster_env.timeout_kwargs(20) == {"heartbeat_timeout_seconds": 20}
  with pytest.raises(ValueError, match="--heartbeat_timeout_s must be at least 1 second, got 0"):
    cluster_env.timeout_kwargs(0)
  with pytest.raises(ValueError, match="--compile_barrier_timeout_s must be positive, got -1"):
    multihost.set_compile_barrier_timeout(-1)
  assert multihost.compile_barrier_timeout() == multihost.DEFAULT_COMPILE_BARRIER_TIMEOUT_S
