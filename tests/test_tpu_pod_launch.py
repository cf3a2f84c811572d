"""launch/tpu_pod.sh run through a stand-in `gcloud` (tests/fixtures/fake_gcloud/gcloud)
that runs the command it receives once per worker of a pretend 2-worker slice on
localhost. No TPU is involved: the workers compute on CPU devices.

The stand-in gives each worker what JAX's TPU cluster detection reads on a pod: the
script passes --auto_distributed and `jax.distributed.initialize()` finds the 2 workers
by itself. On a machine without TPU chips JAX skips the metadata server's worker number
and endpoints (its GCE TPU-VM path), so the stand-in passes them as environment variables
instead (TPU_WORKER_ID, TPU_WORKER_HOSTNAMES: JAX's GKE path), with JAX_FORCE_TPU_INIT=1
in place of libtpu and the chips, a metadata server answering `tpu-env`, and a free
JAX_COORDINATOR_PORT; see the stand-in's docstring.
"""

import json
import os
import subprocess
import sys

import pytest

from ernie3_jax.runtime import host_memory
from tests import launch_testing as lt

SCRIPT = os.path.join(lt.REPO, "launch", "tpu_pod.sh")
FAKE_GCLOUD = os.path.join(lt.REPO, "tests", "fixtures", "fake_gcloud")
WORKERS = 2


def _env(home, log_dir, **more):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_", "JAX_"))}
  env.pop("REPO_DIR", None)
  env.pop("PYTHON", None)
  env.update(PATH=FAKE_GCLOUD + os.pathsep + env.get("PATH", ""), HOME=str(home),
             FAKE_GCLOUD_LOG_DIR=str(log_dir), FAKE_TPU_WORKERS=str(WORKERS), **more)
  return env


def _pod(args, env, timeout):
  return subprocess.run(["bash", SCRIPT, "my-tpu", "us-central2-b", *args], env=env,
                        capture_output=True, text=True, timeout=timeout)


def _worker_log(log_dir, i):
  return lt.read_text(os.path.join(log_dir, f"worker{i}.log"))


def _invocation(log_dir):
  with open(os.path.join(log_dir, "invocation.json")) as f:
    return json.load(f)


def test_every_worker_gets_the_command_word_for_word(tmp_path):
  """The flags reach the entrypoint on every worker exactly as given (spaces, quotes,
  $, backquotes, backslashes, a newline, an empty word), in REPO_DIR: the worker's
  ~/ernie3-jax by default, or a path with a space."""
  printer = tmp_path / "print argv"
  printer.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                     "print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(),"
                     " 'worker': os.environ['TPU_WORKER_ID']}))\n")
  printer.chmod(0o755)
  extra = ["--gin.train.num_steps=4", "--gin.DataConfig.corpus='/data/my corpus/*.jsonl'",
           '--gin_bindings=train.note = "it\'s $HOME `id`"', "back\\slash", "two\nlines", ""]
  home = tmp_path / "home"
  (home / "ernie3-jax").mkdir(parents=True)
  other = tmp_path / "a repo"
  other.mkdir()
  for repo_dir, cwd in ((None, home / "ernie3-jax"), (str(other), other)):
    log_dir = tmp_path / f"logs-{cwd.name}"
    env = _env(home, log_dir, PYTHON=str(printer))
    if repo_dir:
      env["REPO_DIR"] = repo_dir
    done = _pod(["gin_configs/experiments/demo.gin", "/runs/pod run", *extra], env, 120)
    assert done.returncode == 0, done.stdout + done.stderr
    invocation = _invocation(log_dir)
    assert invocation["name"] == "my-tpu" and invocation["zone"] == "us-central2-b"
    assert invocation["worker"] == "all"
    for i in range(WORKERS):
      got = json.loads(_worker_log(log_dir, i))
      assert got == {"argv": ["-m", "ernie3_jax.cli.main",
                              "--gin_file=gin_configs/experiments/demo.gin",
                              "--gin.MODEL_DIR='/runs/pod run'", "--auto_distributed", *extra],
                     "cwd": str(cwd), "worker": str(i)}


@pytest.mark.slow  # a minute of two trainer processes on 2 CPU cores
def test_the_pod_command_trains_on_two_workers_as_one_jax_cluster(tmp_path):
  """The script's own command on 2 stand-in workers: JAX's auto-detection joins them into
  one 2-process cluster (gloo collectives between them), which trains the tiny model 4
  steps on synthetic input and checkpoints into a gs:// MODEL_DIR (a GCS emulator; on a
  pod there is no shared local disk), as the README's command does."""
  from ernie3_jax.runtime import storage
  from tests import gcs_emulator
  from tests.training_testing import TINY_BINDINGS
  gcs_emulator.require()
  emulator = gcs_emulator.GcsEmulator()
  with emulator:
    _train_on_the_pod(tmp_path, TINY_BINDINGS, emulator, storage)


def _train_on_the_pod(tmp_path, tiny_bindings, emulator, storage):
  home = tmp_path / "home"
  home.mkdir()
  (home / "ernie3-jax").symlink_to(lt.REPO)  # the default REPO_DIR on the worker
  log_dir = tmp_path / "logs"
  model_dir = f"gs://{emulator.bucket}/pod run"
  env = _env(home, log_dir, **emulator.env, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             XLA_FLAGS="--xla_force_host_platform_device_count=1 "
                       "--xla_backend_optimization_level=0", PYTHONUNBUFFERED="1",
             GLIBC_TUNABLES=host_memory.TUNABLES)
  if not os.path.exists(os.path.join(lt.REPO, ".venv", "bin", "python")):
    env["PYTHON"] = sys.executable
  bindings = ["import tests.synthetic_input", *tiny_bindings,
              "train.input_builder = @SyntheticInput", "train.num_steps = 4",
              "train.schedule_steps = 6", "train.nlu_batch_size = 8", "train.nlg_batch_size = 4",
              "train.sequence_length = 16", "train.nlg_segment_length = 8",
              "train.log_every = 1", "train.checkpoint_every = 2", "train.progress_bar = False"]
  done = _pod(["gin_configs/runs/pretrain.gin", model_dir,
               *[f"--gin_bindings={b}" for b in bindings]], env, 600)
  logs = [_worker_log(log_dir, i) for i in range(WORKERS)]
  tails = "\n".join(f"--- worker {i}:\n{log[-3000:]}" for i, log in enumerate(logs))
  assert done.returncode == 0, done.stdout + done.stderr + tails
  for i, log in enumerate(logs):
    assert f"[Gloo] Rank {i} is connected to 1 peer ranks" in log, tails
    assert "step 4:" in log, tails
  with emulator.applied():
    history = json.loads(storage.read_text(f"{model_dir}/train_history.json"))["history"]
    assert [int(m["step"]) for m in history] == [1, 2, 3, 4]
    assert {"2", "4"} <= set(storage.listdir(f"{model_dir}/checkpoints"))
    # Both processes wrote their shards of the checkpoint into the bucket.
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(
        storage.listdir(f"{model_dir}/checkpoints/4/state"))
    assert "SyntheticInput" in storage.read_text(f"{model_dir}/config.gin")
  assert not any(p.name.startswith("gs:") for p in tmp_path.rglob("*"))
