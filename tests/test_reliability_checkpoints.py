"""Checkpoint faults: a save killed half-way, an unwritable directory, a checkpoint of
another model config, and bit-identical reruns."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ernie3_jax.cli import preflight
from ernie3_jax.config import gin_utils
from ernie3_jax.model import Ernie3, Ernie3Config
from ernie3_jax.parallel import mesh as mesh_lib
from ernie3_jax.training import checkpoint_files, checkpointing, optimizer, partitioning
from tests import training_testing as tt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Saves step 1, then starts an asynchronous save of step 2 whose final rename (orbax's
# commit: arrays are written, the tmp directory is about to become "2") blocks, so the
# parent can SIGKILL the process in the middle of the save.
_KILLED_SAVE = r"""
import sys, time
import numpy as np
from orbax.checkpoint._src.path import atomicity
from ernie3_jax.training import checkpointing

original = atomicity.AtomicRenameTemporaryPath.finalize

async def finalize(self, *args, **kwargs):
  if self.get_final().name == "2":
    print("COMMITTING", flush=True)
    time.sleep(600)
  return await original(self, *args, **kwargs)

atomicity.AtomicRenameTemporaryPath.finalize = finalize
ckpt = checkpointing.Checkpointer(sys.argv[1], 1)
ckpt.save(1, {"w": np.full((256, 256), 1.0, np.float32)}, {"step": 1})
ckpt.wait()
ckpt.save(2, {"w": np.full((256, 256), 2.0, np.float32)}, {"step": 2})
print("SAVE STARTED", flush=True)
time.sleep(600)
"""

# Saves step 1, makes the directory unwritable or the disk "full", saves step 2; prints
# the error. Run in its own process: orbax's background threads wait minutes after a
# failed save, and this process leaves with os._exit as the entrypoint does.
_FAILED_SAVE = r"""
import os, resource, signal, subprocess, sys
import numpy as np
from ernie3_jax.training import checkpointing

directory, fault = sys.argv[1], sys.argv[2]
ckpt = checkpointing.Checkpointer(directory, 1)
ckpt.save(1, {"w": np.full((64, 64), 1.0, np.float32)}, {"step": 1})
ckpt.wait()
if fault == "full":
  # No room for the 16 KB array: every write past 1 KB fails with EFBIG, as a full
  # disk fails with ENOSPC (the signal would kill the process instead).
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
elif os.getuid() == 0:  # root ignores permission bits; the immutable attribute stops it
  subprocess.run(["chattr", "+i", directory], check=True)
else:
  os.chmod(directory, 0o555)
try:
  # Random values: a constant array compresses to almost nothing.
  ckpt.save(2, {"w": np.random.default_rng(0).random((64, 64), np.float32)}, {"step": 2})
  ckpt.wait()
  print("NO ERROR", flush=True)
except checkpointing.CheckpointSaveError as e:
  print("ERROR", e, flush=True)
finally:
  if fault == "full":
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
  elif os.getuid() == 0:
    subprocess.run(["chattr", "-i", directory], check=True)
  else:
    os.chmod(directory, 0o755)
sys.stdout.flush()
os._exit(0)
"""


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _restore_w(directory, step):
  ckpt = checkpointing.Checkpointer(str(directory), 1, async_save=False)
  abstract = {"w": jax.ShapeDtypeStruct((256, 256), np.float32)}
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  state, data = ckpt.restore(step, abstract, {"w": sharding})
  ckpt.close()
  return np.asarray(state["w"]), data


def test_sigkill_during_async_save_leaves_the_previous_checkpoint_as_latest(tmp_path):
  directory = tmp_path / "checkpoints"
  proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(directory)], cwd=REPO,
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  lines = []
  deadline = time.time() + 240
  while time.time() < deadline:
    line = proc.stdout.readline().decode()
    lines.append(line)
    if line.startswith("COMMITTING") or not line:
      break
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert lines[-1].startswith("COMMITTING"), "".join(lines[-40:])
  entries = sorted(os.listdir(directory))
  partial = [e for e in entries if e.startswith("2") and e != "2"]
  # The killed save left its arrays in a temporary directory, never a "2".
  assert "2" not in entries and "1" in entries and partial, entries
  assert os.listdir(directory / partial[0])
  # Read-only lookup (used by init_from) and the trainer's manager both ignore it.
  state_dir, step = checkpoint_files.latest_checkpoint_dir(str(tmp_path))
  assert (state_dir, step) == (str(directory / "1" / "state"), 1)
  w, data = _restore_w(directory, 1)
  assert data == [{"step": 1}] and np.all(w == 1.0)
  ckpt = checkpointing.Checkpointer(str(directory), 1)
  assert ckpt.latest_step() == 1 and ckpt.manager.all_steps() == [1]
  ckpt.close()


@pytest.mark.parametrize("fault, reason", [
    ("unwritable", r"Operation not permitted|Permission denied"),
    ("full", r"File too large|No space left"),
])
def test_failed_save_names_the_dir_and_keeps_the_previous_checkpoint(tmp_path, fault, reason):
  directory = tmp_path / "checkpoints"
  out = subprocess.run([sys.executable, "-c", _FAILED_SAVE, str(directory), fault], cwd=REPO,
                       env=_env(), capture_output=True, timeout=300)
  text = out.stdout.decode()
  errors = [l for l in text.splitlines() if l.startswith("ERROR ")]
  assert out.returncode == 0 and errors, text + out.stderr.decode()[-3000:]
  message = errors[0]
  assert f"saving the checkpoint of step 2 into {str(directory)!r} failed" in message
  assert "the checkpoint of step 1 there is intact" in message
  assert re.search(reason, message), message
  # Nothing of the failed step is left behind; the earlier checkpoint is untouched.
  assert sorted(os.listdir(directory)) == ["1"]
  if fault == "full":
    assert "its partial files were removed (2.orbax-checkpoint-tmp)" in message
  ckpt = checkpointing.Checkpointer(str(directory), 1, async_save=False)
  abstract = {"w": jax.ShapeDtypeStruct((64, 64), np.float32)}
  state, data = ckpt.restore(1, abstract,
                             {"w": jax.sharding.SingleDeviceSharding(jax.devices()[0])})
  ckpt.close()
  assert data == [{"step": 1}] and np.all(np.asarray(state["w"]) == 1.0)


# ------------------------------------------------------------ checkpoint of another config


@pytest.fixture(scope="module", name="tiny_checkpoint")
def fixture_tiny_checkpoint(tmp_path_factory):
  """MODEL_DIR holding an initial-state checkpoint of the tiny test model (step 1)."""
  model_dir = tmp_path_factory.mktemp("tiny") / "run"
  gin_utils.parse_gin([], tt.TINY_BINDINGS)
  model = Ernie3(Ernie3Config())
  mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
  tx = optimizer.make_optimizer(optimizer.learning_rate_schedule(total_steps=10))
  state, _, _ = partitioning.create_train_state(model, tx, mesh, mesh_lib.logical_axis_rules(),
                                                4, 0)
  ckpt = checkpointing.Checkpointer(str(model_dir / "checkpoints"), 1, async_save=False)
  ckpt.save(1, state, {"step": 1}, force=True)
  ckpt.close()
  return model_dir


def _preflight(model_dir, extra):
  gin_utils.parse_gin(["gin_configs/runs/pretrain.gin"], tt.TINY_BINDINGS + [
      "import tests.synthetic_input", "train.input_builder = @SyntheticInput",
      f"MODEL_DIR = '{model_dir}'", "train.nlu_batch_size = 8", "train.nlg_batch_size = 4",
      "train.sequence_length = 16", "train.nlg_segment_length = 8", "make_mesh.num_devices = 1",
      *extra])
  preflight.check("train", str(model_dir))


def _tree(path):
  return sorted(os.path.relpath(os.path.join(d, f), path)
                for d, _, files in os.walk(path) for f in files)


def test_the_same_config_passes_the_resume_check(tiny_checkpoint):
  _preflight(tiny_checkpoint, [])


def test_resuming_with_another_model_config_names_the_parameters(tiny_checkpoint):
  before = _tree(tiny_checkpoint)
  with pytest.raises(checkpointing.CheckpointMismatchError) as info:
    _preflight(tiny_checkpoint, ["Ernie3Config.d_ff=48", "Ernie3Config.vocab_size=100"])
  message = str(info.value)
  assert "cannot resume from the checkpoint of step 1" in message
  assert ("params['embedder']['token']['embedding'] has shape (96, 32) in the checkpoint "
          "but (100, 32) in this model") in message
  # Every array of the d_ff change counts (parameters and optimizer moments alike).
  more = int(message.split("; and ")[1].split(" more")[0])
  assert more >= 8
  assert _tree(tiny_checkpoint) == before


def test_restoring_another_model_config_names_the_parameters(tiny_checkpoint):
  """The check on Checkpointer.restore, which eval and infer use."""
  gin_utils.parse_gin([], tt.TINY_BINDINGS + ["Ernie3Config.memory_len=4"])
  model = Ernie3(Ernie3Config())
  mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
  tx = optimizer.make_optimizer(optimizer.learning_rate_schedule(total_steps=10))
  abstract, shardings = partitioning.state_shardings(model, tx, mesh,
                                                     mesh_lib.logical_axis_rules(), 4)
  ckpt = checkpointing.Checkpointer(str(tiny_checkpoint / "checkpoints"), 1, async_save=False)
  with pytest.raises(checkpointing.CheckpointMismatchError, match=(
      r"memory\['nlg'\] has shape \(2, 4, 8, 32\) in the checkpoint but \(2, 4, 4, 32\)")):
    ckpt.restore(1, abstract, shardings)
  ckpt.close()


def test_init_from_another_model_config_fails_before_writing(tiny_checkpoint, tmp_path):
  fresh = tmp_path / "fine"
  with pytest.raises(checkpointing.CheckpointMismatchError, match=(
      r"train.init_from=.*params\['embedder'\]\['token'\]\['embedding'\] has shape "
      r"\(96, 32\) in the checkpoint but \(128, 32\)")):
    _preflight(fresh, ["Ernie3Config.vocab_size=128", f"train.init_from = '{tiny_checkpoint}'"])
  assert not fresh.exists()
  # A new head is not a mismatch: fine-tuning adds parameters.
  _preflight(fresh, ["Ernie3Config.num_labels=3", f"train.init_from = '{tiny_checkpoint}'"])
  assert not fresh.exists()


def test_missing_init_from_names_the_binding(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"train.init_from='/nonexistent/run'"):
    _preflight(tmp_path / "run", ["train.init_from = '/nonexistent/run'"])
  assert not (tmp_path / "run").exists()


def test_eval_without_a_checkpoint_names_model_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"--run_mode=eval.*model_dir.path.*no checkpoints"):
    preflight.check("eval", str(tmp_path / "never_trained"))
  assert not (tmp_path / "never_trained").exists()


# ------------------------------------------------------------ determinism


@pytest.mark.slow  # two compiles of the train step: minutes on a loaded 2-core machine
def test_same_seed_and_config_twice_gives_bit_identical_parameters(tmp_path):
  runs = [tt.run(tmp_path / name, 3, checkpoint_every=0, async_checkpoints=False)
          for name in ("a", "b")]
  a, b = (tt.params_of(r) for r in runs)
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
  assert runs[0].history[-1]["loss"] == runs[1].history[-1]["loss"]


# ------------------------------------------------------------ the trainer, killed mid-save

_TRAIN_KILLED_AT_COMMIT = r"""
import sys, time
from orbax.checkpoint._src.path import atomicity

original = atomicity.AtomicRenameTemporaryPath.finalize

async def finalize(self, *args, **kwargs):
  if self.get_final().name == "4":
    print("COMMITTING", flush=True)
    time.sleep(600)
  return await original(self, *args, **kwargs)

atomicity.AtomicRenameTemporaryPath.finalize = finalize
from ernie3_jax.cli import main
sys.argv = ["ernie3_jax.cli.main"] + sys.argv[1:]
main.cli()
"""


def _train_flags(model_dir, num_steps):
  bindings = ["import tests.synthetic_input"] + tt.TINY_BINDINGS + [
      f"model_dir.path = '{model_dir}'", "train.input_builder = @SyntheticInput",
      f"train.num_steps = {num_steps}", "train.nlu_batch_size = 8", "train.nlg_batch_size = 4",
      "train.sequence_length = 16", "train.nlg_segment_length = 8", "train.log_every = 1",
      "train.checkpoint_every = 2", "train.progress_bar = False"]
  return (["--gin_file=gin_configs/runs/pretrain.gin"] +
          [f"--gin_bindings={b}" for b in bindings])


@pytest.mark.slow  # two trainer processes: a few minutes on a loaded 2-core machine
def test_trainer_killed_mid_save_resumes_from_the_last_complete_checkpoint(tmp_path):
  model_dir = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, "-c", _TRAIN_KILLED_AT_COMMIT,
                           *_train_flags(model_dir, 1000)], cwd=REPO, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  lines = []
  deadline = time.time() + 600
  while time.time() < deadline:
    line = proc.stdout.readline().decode()
    lines.append(line)
    if line.startswith("COMMITTING") or not line:
      break
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert lines[-1].startswith("COMMITTING"), "".join(lines[-40:])
  entries = os.listdir(model_dir / "checkpoints")
  assert "2" in entries and "4" not in entries
  assert any(e.startswith("4.") for e in entries), entries  # the partial save
  out = subprocess.run([sys.executable, "-m", "ernie3_jax.cli.main", *_train_flags(model_dir, 5)],
                       cwd=REPO, env=_env(), capture_output=True, timeout=600)
  text = out.stdout.decode()
  assert out.returncode == 0, text[-3000:] + out.stderr.decode()[-3000:]
  assert "resumed from step 2 (" in text
  assert "step 3:" in text and "step 5:" in text and "step 2:" not in text
  assert "5" in os.listdir(model_dir / "checkpoints")
