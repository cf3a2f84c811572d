"""A whole run on gs://, against a GCS JSON-API emulator: MODEL_DIR, corpus, knowledge
graph, aliases, vocabulary and SuperGLUE files all in the bucket, every command run as
a user runs it (`python -m ...` in a scratch working directory).

What is checked: training on gs:// survives SIGKILL and resumes to the same losses and
the same state (every array's checksum) as an uninterrupted run; a flipped byte in a
checkpoint object falls back to the previous step as on local disk; a second trainer is
refused; eval, infer, zero-shot scoring and fine-tuning (train, eval, submission files)
write their files into the bucket; nothing named `gs:` appears on local disk.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from ernie3_jax.runtime import storage
from tests import gcs_emulator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED = os.path.join(REPO, "ernie3_jax", "data", "embedded")
SUPERGLUE_FIXTURE = os.path.join(REPO, "tests", "fixtures", "superglue")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
  """The emulator with the demo's data and the SuperGLUE fixture uploaded, its
  environment applied to this process too (to read the bucket through `storage`)."""
  gcs_emulator.require()
  with gcs_emulator.GcsEmulator() as emulator, emulator.applied():
    root = f"gs://{emulator.bucket}"
    for name in ("corpus.jsonl", "kg.tsv", "aliases.tsv", "spm.model"):
      with open(os.path.join(EMBEDDED, name), "rb") as f:
        storage.write_atomic(f"{root}/data/{name}", f.read())
    for folder, _, files in os.walk(SUPERGLUE_FIXTURE):
      for name in files:
        local = os.path.join(folder, name)
        with open(local, "rb") as f:
          storage.write_atomic(
              f"{root}/superglue/{os.path.relpath(local, SUPERGLUE_FIXTURE)}", f.read())
    emulator.root = root
    emulator.workdir = tmp_path_factory.mktemp("workdir")  # every command runs here
    yield emulator


def _env(emulator) -> dict:
  return dict(os.environ, **emulator.env, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
              XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _pretrain_command(emulator, model_dir: str, num_steps: int, mode: str = "train") -> list:
  root = emulator.root
  bindings = [
      f"MODEL_DIR='{model_dir}'", f"DataConfig.corpus='{root}/data/corpus.jsonl'",
      f"DataConfig.kg='{root}/data/kg.tsv'", f"DataConfig.aliases='{root}/data/aliases.tsv'",
      f"DataConfig.vocabulary='{root}/data/spm.model'", f"NUM_STEPS={num_steps}",
      "learning_rate_schedule.warmup_steps=2",
      "SEQUENCE_LENGTH=32", "NLG_SEGMENT_LENGTH=16", "NLU_BATCH=4", "NLG_BATCH=2",
      # Synchronous saves: a checkpoint is complete before the next step runs, so the
      # kill below always lands after step 2's checkpoint.
      "ProgressiveSchedule.steps=0", "train.checkpoint_every=2", "train.log_every=1",
      "train.async_checkpoints=False",
      "train.progress_bar=False", "make_mesh.num_devices=1", "evaluate.num_batches=1",
      "run.max_new_tokens=4"]
  return ([sys.executable, "-m", "ernie3_jax.cli.main",
           "--gin_file=gin_configs/experiments/demo.gin", f"--run_mode={mode}"]
          + [f"--gin.{b}" for b in bindings])


def _run(emulator, command: list, expect_ok: bool = True) -> str:
  proc = subprocess.run(command, cwd=emulator.workdir, env=_env(emulator), text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
  if expect_ok:
    assert proc.returncode == 0, proc.stdout[-4000:]
  else:
    assert proc.returncode != 0, proc.stdout[-4000:]
  return proc.stdout


def _step_lines(output: str) -> dict[int, str]:
  """{step: its loss figures} of a training log (timings dropped)."""
  lines = {}
  for line in output.splitlines():
    if line.startswith("step ") and ": loss=" in line:
      step, rest = line[len("step "):].split(":", 1)
      lines[int(step)] = rest.split(" lr=")[0]
  return lines


def _integrity(model_dir: str, step: int) -> dict:
  """The per-array checksums saved with a checkpoint (equal iff the arrays are)."""
  record = json.loads(storage.read_text(f"{model_dir}/checkpoints/{step}/integrity/metadata"))
  return record["arrays"]


@pytest.fixture(scope="module")
def trained(bucket):
  """A straight 8-step run and the same run SIGKILLed after step 3, then resumed."""
  straight, resumed = f"{bucket.root}/straight", f"{bucket.root}/resumed"
  straight_log = _run(bucket, _pretrain_command(bucket, straight, 8))
  proc = subprocess.Popen(_pretrain_command(bucket, resumed, 8), cwd=bucket.workdir,
                          env=_env(bucket), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  killed_log = []
  for line in proc.stdout:
    killed_log.append(line)
    if line.startswith("step 3:"):  # steps 4-8 and their saves are still to come
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait(timeout=300)
  assert proc.returncode == -signal.SIGKILL, "".join(killed_log[-40:])
  resumed_log = _run(bucket, _pretrain_command(bucket, resumed, 8))
  return {"straight": straight, "resumed": resumed, "straight_log": straight_log,
          "killed_log": "".join(killed_log), "resumed_log": resumed_log}


def test_a_killed_run_on_gcs_resumes_to_the_losses_and_state_of_a_straight_run(trained):
  log = trained["resumed_log"]
  assert "resumed from step 2 " in log, log[-3000:]
  straight, killed = _step_lines(trained["straight_log"]), _step_lines(trained["killed_log"])
  resumed = _step_lines(log)
  assert sorted(killed) == [1, 2, 3] and sorted(resumed) == list(range(3, 9))
  assert {s: straight[s] for s in killed} == killed
  assert {s: straight[s] for s in resumed} == resumed
  assert _integrity(trained["resumed"], 8) == _integrity(trained["straight"], 8)
  # The history spans the kill: every step 1..8 once, the redone ones from the resume.
  history = json.loads(storage.read_text(f"{trained['resumed']}/train_history.json"))
  assert [int(m["step"]) for m in history["history"]] == list(range(1, 9))
  names = storage.listdir(trained["resumed"])
  assert {"config.gin", "checkpoints", "tensorboard", "train_history.json"} <= set(names)
  assert "trainer.lock" not in names  # released at the end of the resumed run
  events = storage.glob(f"{trained['resumed']}/tensorboard/events.out.tfevents.*")
  assert events and all(storage.read_bytes(e) for e in events)


def test_a_flipped_byte_in_a_gcs_checkpoint_falls_back_to_the_previous_step(bucket, trained):
  # A copy of the resumed run, so the other tests keep reading the intact one.
  import gcsfs
  damaged = f"{bucket.root}/damaged"
  gcsfs.GCSFileSystem().copy(trained["resumed"] + "/", damaged + "/", recursive=True)
  data = storage.glob(f"{damaged}/checkpoints/8/state/ocdbt.process_0/d/*")
  biggest = max(data, key=lambda p: len(storage.read_bytes(p)))
  raw = bytearray(storage.read_bytes(biggest))
  raw[len(raw) // 2] ^= 0x40
  storage.write_atomic(biggest, bytes(raw))
  log = _run(bucket, _pretrain_command(bucket, damaged, 9))
  assert "restored the checkpoint of step 6 instead" in log, log[-3000:]  # 8 is damaged
  assert "step 7:" in log and "step 9:" in log  # steps 7 and 8 redone from step 6
  rejected = storage.read_text(f"{damaged}/rejected_checkpoints/8/REJECTED.txt")
  assert "step 8" in rejected


def test_a_second_trainer_on_a_gcs_model_dir_is_refused(bucket, trained):
  from ernie3_jax.training import run_lock
  model_dir = f"{bucket.root}/locked"
  # A live trainer on this host holds the lock: the emulator's process stands in for it.
  holder = {"host": __import__("socket").gethostname(), "pid": bucket.process.pid,
            "started": 0, "start_ticks": run_lock._process_start_ticks(bucket.process.pid)}  # pylint: disable=protected-access
  assert storage.create_exclusive(f"{model_dir}/{run_lock.LOCK_NAME}", json.dumps(holder))
  log = _run(bucket, _pretrain_command(bucket, model_dir, 8), expect_ok=False)
  assert f"another trainer holds '{model_dir}': pid {bucket.process.pid}" in log, log[-3000:]
  assert storage.listdir(model_dir) == [run_lock.LOCK_NAME]  # nothing else was written


def test_eval_infer_and_zero_shot_write_into_the_bucket(bucket, trained):
  model_dir = trained["resumed"]
  log = _run(bucket, _pretrain_command(bucket, model_dir, 8, mode="eval"))
  metrics = json.loads(storage.read_text(f"{model_dir}/eval_metrics.json"))
  assert metrics["step"] == 8 and "evaluation: " in log
  log = _run(bucket, _pretrain_command(bucket, model_dir, 8, mode="infer"))
  assert "continuation: " in log
  _run(bucket, [sys.executable, "-m", "ernie3_jax.evaluation.zero_shot",
                f"--model_dir={model_dir}", f"--source={bucket.root}/superglue",
                "--tasks=cb", "--max_length=64", "--batch_size=8"])
  out = storage.listdir(f"{model_dir}/zero_shot")
  assert len(out) == 1
  results = f"{model_dir}/zero_shot/{out[0]}"
  assert set(json.loads(storage.read_text(f"{results}/metrics.json"))["tasks"]) == {"cb"}
  assert storage.read_text(f"{results}/cb.validation.jsonl").count("\n") > 0


def test_finetuning_reads_and_writes_gcs(bucket, trained):
  model_dir = f"{bucket.root}/finetuned"
  command = [sys.executable, "-m", "ernie3_jax.cli.main",
             "--gin_file=gin_configs/experiments/finetune_demo.gin",
             f"--gin.MODEL_DIR='{model_dir}'", f"--gin.PRETRAINED_DIR='{trained['resumed']}'",
             f"--gin.SUPERGLUE_DATA='{bucket.root}/superglue'", "--gin.NUM_STEPS=2",
             "--gin.finetune.checkpoint_every=2", "--gin.BATCH=4", "--gin.SEQUENCE_LENGTH=32",
             "--gin.learning_rate_schedule.warmup_steps=1", "--gin.make_mesh.num_devices=1",
             "--gin.finetune.progress_bar=False"]
  for mode in ("train", "eval", "infer"):
    _run(bucket, command + [f"--run_mode={mode}"])
  tasks = json.loads(storage.read_text(f"{model_dir}/eval_metrics.json"))["tasks"]
  assert "superglue_rte" in tasks
  assert storage.listdir(f"{model_dir}/eval_predictions")
  assert "RTE.jsonl" in storage.listdir(f"{model_dir}/submission")
  assert storage.read_text(f"{model_dir}/submission/RTE.jsonl").count("\n") > 0


def test_nothing_named_gs_appears_on_local_disk(bucket, trained):
  for top in (str(bucket.workdir), REPO):
    for folder, dirs, files in os.walk(top):
      dirs[:] = [d for d in dirs if d not in (".git", ".venv")]
      assert not [n for n in dirs + files if n.lower().startswith("gs:")], folder
