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
          "--gin.train.progress_bar=False", "--gin.PretrainInput.num_data_shards=2", *extra]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


class Cluster:
  """`num_processes` trainer processes of one run, their output in log files."""

  def __init__(self, model_dir, num_processes, extra=(), extra_for=None):
    self.logs = [f"{model_dir}.{num_processes}p.{time.time_ns()}.process{i}.log"
                 for i in range(num_processes)]
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES // num_processes}")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    self.procs = []
    for i in range(num_processes):
      cmd = [sys.executable, "-m", "ernie3_jax.cli.main", *_flags(model_dir, extra)]
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
    for p in self.procs:
      if p.poll() is None:
        p.kill()
    for p in self.procs:
      p.wait()

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


def _assert_same_training(model_dir, reference, first_step=1):
  """Per-step losses from `first_step` on, and the final parameters, equal the
  reference run's (to float tolerance: gloo and in-process reductions differ in order)."""
  got, want = lt.history(model_dir), lt.history(reference)
  assert sorted(got) == list(range(1, NUM_STEPS + 1)), sorted(got)
  for step in range(first_step, NUM_STEPS + 1):
    for key in [k for k in want[step] if k == "loss" or k.endswith("/loss")]:
      np.testing.assert_allclose(got[step][key], want[step][key], rtol=2e-5, atol=2e-5,
                                 err_msg=f"step {step} {key}")
  a, b = lt.params(model_dir, NUM_STEPS), lt.params(reference, NUM_STEPS)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-5)


@pytest.fixture(scope="module", name="reference")
def fixture_reference(tmp_path_factory):
  """NUM_STEPS uninterrupted steps on one process (4 devices, 2 data shards)."""
  model_dir = tmp_path_factory.mktemp("reference") / "run"
  _run(model_dir, 1)
  return model_dir


def test_killing_either_process_and_restarting_continues_like_an_uninterrupted_run(
    tmp_path, reference):
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
  _assert_same_training(model_dir, reference)


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
