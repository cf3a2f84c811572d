"""Process-level behaviour: a 2-process jax.distributed run, SIGTERM, the entrypoint."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import launch_testing as lt
from tests import training_testing as tt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bindings(model_dir, num_steps, checkpoint_every=4):
  return ["import tests.synthetic_input"] + tt.TINY_BINDINGS + [
      f"model_dir.path = '{model_dir}'", "train.input_builder = @SyntheticInput",
      f"train.num_steps = {num_steps}", f"train.schedule_steps = {max(num_steps, 6)}",
      "train.nlu_batch_size = 8", "train.nlg_batch_size = 4",
      "train.sequence_length = 16", "train.nlg_segment_length = 8", "train.log_every = 1",
      f"train.checkpoint_every = {checkpoint_every}", "train.progress_bar = False"]


def _command(model_dir, num_steps, extra=(), checkpoint_every=4):
  cmd = [sys.executable, "-m", "ernie3_jax.cli.main", "--gin_file=gin_configs/runs/pretrain.gin"]
  cmd += [f"--gin_bindings={b}" for b in _bindings(model_dir, num_steps, checkpoint_every)]
  return cmd + list(extra)


def _env(devices):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _free_port():
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one_process_with_four_devices(tmp_path):
  one = tmp_path / "one"
  subprocess.run(_command(one, 4), cwd=REPO, env=_env(4), check=True, capture_output=True,
                 timeout=600)
  two = tmp_path / "two"
  port = _free_port()
  procs = [subprocess.Popen(
      _command(two, 4, [f"--coordinator_address=localhost:{port}", "--num_processes=2",
                        f"--process_id={i}"]),
      cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
      for i in range(2)]
  outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  a, b = lt.params(one, 4), lt.params(two, 4)
  import jax
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)


def test_sigterm_saves_and_the_next_start_resumes(tmp_path):
  model_dir = tmp_path / "run"
  proc = subprocess.Popen(_command(model_dir, 10_000, checkpoint_every=1000), cwd=REPO,
                          env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  lines = []
  deadline = time.time() + 300
  while time.time() < deadline:
    line = proc.stdout.readline().decode()
    lines.append(line)
    if line.startswith("step 3:") or not line:  # "" is the end of the output
      break
  if not lines[-1].startswith("step 3:"):
    proc.kill()
    pytest.fail("training never reached step 3:\n" + "".join(lines[-50:]))
  proc.send_signal(signal.SIGTERM)
  rest = proc.communicate(timeout=300)[0].decode()
  assert proc.returncode == 0, rest[-3000:]
  saved = [l for l in rest.splitlines() if l.startswith("SIGTERM: saved the checkpoint of step")]
  assert saved, rest[-3000:]
  step = int(saved[0].split("step ")[1].split(",")[0])
  assert step >= 3
  assert str(step) in os.listdir(model_dir / "checkpoints")
  out = subprocess.run(_command(model_dir, step + 2, checkpoint_every=1000), cwd=REPO,
                       env=_env(1), check=True, capture_output=True, timeout=600).stdout.decode()
  assert f"resumed from step {step}" in out
  assert f"step {step + 2}:" in out
  with open(model_dir / "config.gin") as f:
    assert "train.num_steps" in f.read()
