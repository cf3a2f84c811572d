"""Multi-process runs on the demo's real input: killed and restarted, stopped by SIGTERM
to one process, resumed on another process count, started with differing configs; and a
checkpoint decoded and evaluated by two processes.

Every run here trains the demo config for NUM_STEPS steps on 4 devices in all (one
process with 4, or two processes with 2 each, over localhost jax.distributed with gloo
collectives) and 2 data shards, and is compared with one uninterrupted 1-process run.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests import launch_testing as lt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 12
DEVICES = 4
TIMEOUT = 900  # seconds per run: two processes share 2 loaded CPU cores

pytestmark = pytest.mark.slow  # each run is a minute or two of two processes


def _flags(model_dir, extra=()):
  return ["--gin_file=gin_configs/experiments/demo.gin", f"--gin.MODEL_DIR='{model_dir}'",
          f"--gin.train.num_steps={NUM_STEPS}", "--gin.train.checkpoint_every=2",
          "--gin.train.keep_checkpoints=20", "--gin.train.log_every=1",
          "--gin.train.progress_bar=False", "--gin.PretrainInput.num_data_shards=2",
          # The demo's held-out evaluation is tested in test_eval_while_training.py.
          "--gin.train.eval_every=0", *extra]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


class Cluster:
  """`num_processes` trainer processes of one run, their output in log files."""

  def __init__(self, model_dir, num_processes, extra=(), extra_for=None,
               module="ernie3_jax.cli.main"):
    self.logs = [f"{model_dir}.{num_processes}p.{time.time_ns()}.process{i}.log"
                 for i in range(num_processes)]
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES // num_processes}")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    self.procs = []
    for i in range(num_processes):
      cmd = [sys.executable, "-m", module, *_flags(model_dir, extra)]
      cmd += list((extra_for or {}).get(i, ()))
      if num_processes > 1:
        cmd += [f"--coordinator_address=localhost:{port}",
                f"--num_processes={num_processes}", f"--process_id={i}"]
      with open(self.logs[i], "w") as log:
        self.procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                                           stderr=subprocess.STDOUT))

  def output(self, i):
    with open(self.logs[i], errors="replace") as f:
      return f.read()

  def wait(self, timeout=TIMEOUT):
    deadline = time.time() + timeout
    for p in self.procs:
      try:
        p.wait(timeout=max(1, deadline - time.time()))
      except subprocess.TimeoutExpired:
        self.kill()
        pytest.fail("a trainer process did not exit:\n" + self.tails())
    return [p.returncode for p in self.procs]

  def kill(self):
    lt.kill_all(self.procs)

  def tails(self):
    return "\n".join(f"--- process {i}:\n{self.output(i)[-3000:]}"
                     for i in range(len(self.procs)))

  def wait_until(self, predicate, what):
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
      if predicate():
        return
      if any(p.poll() is not None for p in self.procs):
        break
      time.sleep(0.2)
    self.kill()
    pytest.fail(f"never saw {what}:\n" + self.tails())


def _run(model_dir, num_processes, extra=()):
  cluster = Cluster(model_dir, num_processes, extra)
  codes = cluster.wait()
  assert codes == [0] * num_processes, cluster.tails()
  return cluster


def _committed(model_dir, step):
  return os.path.isfile(os.path.join(model_dir, "checkpoints", str(step),
                                     "commit_success.txt"))


# Resuming on another process count (docs/TRAINING.md, "Resuming on fewer or more hosts"):
# the steps and the data position (the same global batches, in the same order) are exact;
# losses and parameters agree to these tolerances, not bit for bit, because a sum over the
# devices of two processes goes through gloo's ring, and one over the devices of one process
# does not, in another order (float32 rounding). The same process count resumes bit for bit.
LOSS_RTOL = 1e-5
PARAM_ATOL = 1e-6


def _data_position(model_dir, step):
  """The data position saved with checkpoint `step`, whatever the process count that saved
  it: the shared counters, and every data shard's document stream."""
  with open(os.path.join(model_dir, "checkpoints", str(step), "data", "metadata")) as f:
    per_process = json.load(f)["per_process"]
  shared = [{k: p[k] for k in ("step", "stage", "consumed_per_shard", "num_data_shards")}
            for p in per_process]
  assert all(s == shared[0] for s in shared), shared
  return shared[0], {k: v for p in per_process for k, v in p["streams"].items()}


def _assert_same_training(model_dir, reference, exact=False):
  """Every step is in the history; the final data position equals the reference's; the
  per-step losses and the final parameters equal the reference's, bit for bit if `exact`,
  else to LOSS_RTOL and PARAM_ATOL (different process counts)."""
  got, want = lt.history(model_dir), lt.history(reference)
  assert sorted(got) == list(range(1, NUM_STEPS + 1)), sorted(got)
  assert _data_position(model_dir, NUM_STEPS) == _data_position(reference, NUM_STEPS)
  loss_diff = 0.0
  for step in range(1, NUM_STEPS + 1):
    # A task with no rows in a step's batch logs NaN as its loss, in both runs alike.
    for key in [k for k in want[step] if k == "loss" or k.endswith("/loss")]:
      if np.isfinite(want[step][key]):
        loss_diff = max(loss_diff, abs(got[step][key] - want[step][key]) / abs(want[step][key]))
      if exact:
        np.testing.assert_array_equal(got[step][key], want[step][key], f"step {step} {key}")
      np.testing.assert_allclose(got[step][key], want[step][key], rtol=LOSS_RTOL, atol=0,
                                 err_msg=f"step {step} {key}")
  a, b = lt.params(model_dir, NUM_STEPS), lt.params(reference, NUM_STEPS)
  param_diff = 0.0
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    x, y = np.asarray(x), np.asarray(y)
    param_diff = max(param_diff, float(np.max(np.abs(x - y))))
    if exact:
      np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(x, y, rtol=0, atol=PARAM_ATOL)
  print(f"largest differences from the reference: losses {loss_diff:.2g} (relative), "
        f"parameters {param_diff:.2g}")


@pytest.fixture(scope="module", name="reference")
def fixture_reference(tmp_path_factory):
  """NUM_STEPS uninterrupted steps on one process (4 devices, 2 data shards)."""
  model_dir = tmp_path_factory.mktemp("reference") / "run"
  _run(model_dir, 1)
  return model_dir


@pytest.fixture(scope="module", name="reference_2p")
def fixture_reference_2p(tmp_path_factory):
  """NUM_STEPS uninterrupted steps on two processes (2 devices each, 2 data shards)."""
  model_dir = tmp_path_factory.mktemp("reference_2p") / "run"
  _run(model_dir, 2)
  return model_dir


def test_killing_either_process_and_restarting_continues_like_an_uninterrupted_run(
    tmp_path, reference_2p):
  """Same process count: bit for bit what an uninterrupted 2-process run gives."""
  model_dir = tmp_path / "run"
  resumed = []
  for victim, after_step in ((1, 2), (0, 6)):
    cluster = Cluster(model_dir, 2)
    if resumed:
      cluster.wait_until(lambda: f"resumed from step {resumed[-1]}" in cluster.output(0),
                         "the restart resume")
    cluster.wait_until(lambda s=after_step: _committed(model_dir, s),
                       f"the checkpoint of step {after_step}")
    cluster.procs[victim].send_signal(signal.SIGKILL)
    # The other process leaves on its own (its next collective fails).
    codes = cluster.wait(timeout=300)
    assert codes[victim] == -signal.SIGKILL and codes[1 - victim] != 0, cluster.tails()
    steps = [int(n) for n in os.listdir(model_dir / "checkpoints") if n.isdigit()]
    assert max(steps) < NUM_STEPS, "the run finished before the kill"
    resumed.append(max(s for s in steps if _committed(model_dir, s)))
  cluster = _run(model_dir, 2)
  out = cluster.output(0)
  assert f"resumed from step {resumed[-1]}" in out, cluster.tails()
  assert "took over the trainer lock" in out  # process 0 was killed holding it
  assert "resumed from step" in cluster.output(1)
  _assert_same_training(model_dir, reference_2p, exact=True)


def test_sigterm_to_one_process_stops_both_at_one_saved_step_and_resumes_on_one_process(
    tmp_path, reference):
  """Preemption of process 1 alone; then the run goes on as 1 process (2 -> 1)."""
  model_dir = tmp_path / "run"
  cluster = Cluster(model_dir, 2, extra=["--gin.train.checkpoint_every=1000"])
  cluster.wait_until(lambda: "step 3:" in cluster.output(0), "step 3")
  cluster.procs[1].send_signal(signal.SIGTERM)
  assert cluster.wait() == [0, 0], cluster.tails()
  saved = []
  for i in range(2):
    lines = [l for l in cluster.output(i).splitlines()
             if l.startswith("SIGTERM: saved the checkpoint of step")]
    assert lines, cluster.tails()
    saved.append(int(lines[0].split("step ")[1].split(",")[0]))
  assert saved[0] == saved[1] < NUM_STEPS, saved
  assert _committed(model_dir, saved[0])
  after = _run(model_dir, 1, extra=["--gin.train.checkpoint_every=1000"])
  assert f"resumed from step {saved[0]}" in after.output(0)
  _assert_same_training(model_dir, reference)


def test_one_process_checkpoint_resumes_on_two_processes(tmp_path, reference):
  """1 -> 2: the reference's step-6 checkpoint continued by two processes."""
  model_dir = tmp_path / "run"
  shutil.copytree(reference, model_dir)
  for name in os.listdir(model_dir / "checkpoints"):
    if int(name) > 6:
      shutil.rmtree(model_dir / "checkpoints" / name)
  cluster = _run(model_dir, 2)
  assert "resumed from step 6" in cluster.output(0)
  _assert_same_training(model_dir, reference)


def test_a_process_compiling_the_train_step_60s_longer_is_waited_for(tmp_path):
  """Compile-time skew (one process hit JAX's compilation cache, another compiled under
  load): without the compile barrier, process 0 entered the step's first collective alone
  and gloo gave up after 30 s (tests/test_multihost_timeouts.py shows that failure)."""
  model_dir = tmp_path / "run"
  slow = ["--trainer", "--slow_process=1", "--compile_delay_s=60", "--slow_step=jit_step"]
  cluster = Cluster(model_dir, 2, extra=["--gin.train.num_steps=3", *slow],
                    module="tests.multihost_worker")
  assert cluster.wait() == [0, 0], cluster.tails()
  assert "compiling jit_step slowly" in cluster.output(1)
  waited = [l for l in cluster.output(0).splitlines() if l.startswith("process 0 waited")]
  assert waited and "finish compiling the train step" in waited[0], cluster.tails()
  assert int(waited[0].split()[3]) >= 30, waited  # 60 s less process 0's own compile
  assert sorted(lt.history(model_dir)) == [1, 2, 3]


def test_processes_with_different_configs_are_refused_before_anything_is_written(tmp_path):
  model_dir = tmp_path / "run"
  cluster = Cluster(model_dir, 2, extra_for={1: ["--gin.SEED=7"]})
  codes = cluster.wait(timeout=300)
  assert codes[0] != 0 and codes[1] != 0, cluster.tails()
  for i in range(2):
    out = cluster.output(i)
    assert "were started with different gin configs" in out, cluster.tails()
    assert "process 0 has 'SEED = 0'; process 1 has 'SEED = 7'" in out, cluster.tails()
  assert not model_dir.exists()


def test_two_processes_decode_and_evaluate_a_checkpoint(tmp_path, reference):
  """Inference on the cluster: both processes decode on one mesh (tensor-parallel here)
  and give one process's tokens; evaluation runs on both; process 0 alone prints and
  writes."""
  model_dir = tmp_path / "run"
  shutil.copytree(reference, model_dir)
  one = _run(model_dir, 1, ["--run_mode=infer"]).output(0)
  two = _run(model_dir, 2, ["--run_mode=infer", "--gin.make_mesh.tensor=2"])
  continuation = [line for line in one.splitlines() if line.startswith("continuation:")]
  assert len(continuation) == 1, one
  assert continuation[0] in two.output(0).splitlines(), two.tails()
  assert "continuation:" not in two.output(1)
  evaluation = _run(model_dir, 2, ["--run_mode=eval", "--gin.make_mesh.tensor=2"])
  assert "evaluation:" in evaluation.output(0) and "evaluation:" not in evaluation.output(1)
  metrics = json.loads((model_dir / "eval_metrics.json").read_text())
  assert metrics and all(np.isfinite(v) for v in metrics.values())
