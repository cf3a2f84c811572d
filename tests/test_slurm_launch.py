"""launch/slurm_multigpu.sbatch on a real SLURM, and the GPUs a SLURM task hands JAX.

The mapping tests use job environments as SLURM 22.05 set them in tasks here (recorded
from `srun` steps of jobs asking for GPUs of a gres) and hand-written variants of them.
The slow test installs SLURM (Debian's slurm-wlm and munge) where it is missing, starts a
one-node cluster on localhost and submits the script itself with sbatch.
"""

import os
import sys
import time

import pytest

from ernie3_jax.parallel import cluster_env
from tests import launch_testing as lt

SCRIPT = "launch/slurm_multigpu.sbatch"


def _task(procid, localid, **more):
  """A task of a one-node, 2-task SLURM job step (what every task gets)."""
  env = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "gpu01", "SLURM_NTASKS": "2",
         "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(localid), "SLURM_NODEID": "0",
         "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_TASKS_PER_NODE": "2"}
  env.update(more)
  return env


def _ids(env):
  assignment = cluster_env.slurm_gpu_assignment(env)
  return None if assignment is None else assignment.local_device_ids


def test_gpus_per_task_each_task_uses_the_one_gpu_it_sees():
  """--gpus-per-task=1 (the script's request), as SLURM 22.05 set it here: task 1 sees
  GPU 1 alone, which is GPU 0 inside the process. JAX alone would ask for GPU 1."""
  for procid in range(2):
    env = _task(procid, procid, CUDA_VISIBLE_DEVICES=str(procid), SLURM_STEP_GPUS=str(procid),
                GPU_DEVICE_ORDINAL=str(procid), SLURM_GPUS_PER_TASK="1", SLURM_GPUS_ON_NODE="2",
                SLURM_JOB_GPUS="0,1")
    assert _ids(env) == [0]
    assert cluster_env.initialize_kwargs(env) == {"local_device_ids": [0]}
  # With device cgroups (ConstrainDevices=yes) the one GPU is renumbered 0 by SLURM too.
  env = _task(1, 1, CUDA_VISIBLE_DEVICES="0", SLURM_GPUS_PER_TASK="1", SLURM_GPUS_ON_NODE="2")
  assert _ids(env) == [0]
  # Two GPUs per task, on a node of 8 tasks.
  env = _task(5, 5, CUDA_VISIBLE_DEVICES="10,11", SLURM_GPUS_PER_TASK="2",
              SLURM_GPUS_ON_NODE="16", SLURM_STEP_TASKS_PER_NODE="8")
  assert _ids(env) == [0, 1]
  # No SLURM_GPUS_PER_TASK (another --gpu-bind): fewer GPUs seen than the node has.
  env = _task(1, 1, CUDA_VISIBLE_DEVICES="1", SLURM_GPUS_ON_NODE="2")
  assert _ids(env) == [0]
  assignment = cluster_env.slurm_gpu_assignment(env)
  assert assignment.describe(env) == (
      "SLURM task 1 (local 1): CUDA_VISIBLE_DEVICES=1 -> jax local_device_ids=[0] "
      "(the task's own GPUs)")


def test_gpus_shared_by_the_tasks_of_a_node_are_split_by_local_id():
  """--gres=gpu:2 with 2 tasks (as SLURM 22.05 set it here): both tasks see both GPUs;
  task k takes GPU k (what JAX does alone). Larger shares and several nodes too."""
  for procid in range(2):
    env = _task(procid, procid, CUDA_VISIBLE_DEVICES="0,1", SLURM_STEP_GPUS="0,1",
                SLURM_GPUS_ON_NODE="2", SLURM_JOB_GPUS="0,1")
    assert _ids(env) == [procid]
  # 8 GPUs, 4 tasks on each of 2 nodes: task 6 is local task 2 of node 1.
  env = _task(6, 2, CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7", SLURM_GPUS_ON_NODE="8",
              SLURM_NODEID="1", SLURM_NTASKS="8", SLURM_STEP_TASKS_PER_NODE="4(x2)")
  assert _ids(env) == [4, 5]
  # --gpus-per-task=1 with --gpu-bind=none: every task sees the node's 2 GPUs.
  env = _task(1, 1, CUDA_VISIBLE_DEVICES="0,1", SLURM_GPUS_PER_TASK="1")
  assert _ids(env) == [1]
  # AMD GPUs: SLURM names them in ROCR_VISIBLE_DEVICES.
  env = _task(1, 1, ROCR_VISIBLE_DEVICES="0,1", SLURM_GPUS_ON_NODE="2")
  assert _ids(env) == [1]


def test_the_only_task_on_a_node_uses_all_its_gpus():
  """--ntasks=1 --gpus=2 (as SLURM 22.05 set it here): JAX alone would keep GPU 0."""
  env = _task(0, 0, CUDA_VISIBLE_DEVICES="0,1", SLURM_STEP_GPUS="0,1", SLURM_GPUS="2",
              SLURM_GPUS_ON_NODE="2", SLURM_NTASKS="1", SLURM_STEP_TASKS_PER_NODE="1")
  assert _ids(env) == [0, 1]
  env = _task(3, 0, CUDA_VISIBLE_DEVICES="0,1,2,3", SLURM_NTASKS="4", SLURM_NODEID="3",
              SLURM_STEP_TASKS_PER_NODE="1(x4)")
  assert _ids(env) == [0, 1, 2, 3]


def test_uneven_shares_are_refused_with_the_request_that_fixes_them():
  env = _task(1, 1, CUDA_VISIBLE_DEVICES="0,1,2", SLURM_GPUS_ON_NODE="3")
  with pytest.raises(ValueError, match="--gpus-per-task"):
    cluster_env.slurm_gpu_assignment(env)


def test_nothing_to_decide_without_gpus_or_outside_slurm():
  # A CPU-only job (as SLURM 22.05 set --gpus-per-task=0 here): JAX's own choice stands.
  cpu_job = _task(1, 1, SLURM_GPUS_PER_TASK="0")
  assert _ids(cpu_job) is None and cluster_env.initialize_kwargs(cpu_job) == {}
  assert _ids(_task(1, 1, CUDA_VISIBLE_DEVICES="")) is None
  assert _ids(_task(1, 1, CUDA_VISIBLE_DEVICES="NoDevFiles")) is None
  # The user's own JAX_LOCAL_DEVICE_IDS wins (JAX reads it).
  assert _ids(_task(1, 1, CUDA_VISIBLE_DEVICES="1", SLURM_GPUS_PER_TASK="1",
                    JAX_LOCAL_DEVICE_IDS="0")) is None
  # Not a task of a job step (the batch script's own shell, or no SLURM at all).
  batch_shell = _task(0, 0, CUDA_VISIBLE_DEVICES="0,1")
  del batch_shell["SLURM_STEP_NODELIST"]
  assert _ids(batch_shell) is None
  assert _ids({"CUDA_VISIBLE_DEVICES": "0,1"}) is None


def test_tasks_per_node_lists():
  assert cluster_env.tasks_on_this_node({"SLURM_STEP_TASKS_PER_NODE": "2(x3),1",
                                         "SLURM_NODEID": "3"}) == 1
  assert cluster_env.tasks_on_this_node({"SLURM_TASKS_PER_NODE": "2(x3),1",
                                         "SLURM_NODEID": "2"}) == 2
  assert cluster_env.tasks_on_this_node({"SLURM_NTASKS_PER_NODE": "4"}) == 4
  assert cluster_env.tasks_on_this_node({}) == 1


def test_the_entrypoint_hands_jax_the_task_gpus(monkeypatch, capsys):
  """initialize_distributed passes the mapping to jax.distributed.initialize, which
  still detects the rest (coordinator, process count and index) itself."""
  import jax
  from absl import flags
  from absl.testing import flagsaver
  from ernie3_jax.cli import main
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  for name in list(os.environ):
    if name.startswith("SLURM_") or name.endswith("VISIBLE_DEVICES"):
      monkeypatch.delenv(name)
  for name, value in _task(1, 1, CUDA_VISIBLE_DEVICES="1", SLURM_GPUS_PER_TASK="1",
                           SLURM_GPUS_ON_NODE="2").items():
    monkeypatch.setenv(name, value)
  with flagsaver.flagsaver(auto_distributed=None, coordinator_address=None):
    main.initialize_distributed()
  heartbeat = {"heartbeat_timeout_seconds": main.DEFAULT_HEARTBEAT_TIMEOUT_S}
  assert calls == [{"local_device_ids": [0], **heartbeat}]
  assert "CUDA_VISIBLE_DEVICES=1 -> jax local_device_ids=[0]" in capsys.readouterr().out
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a CPU-only job
  with flagsaver.flagsaver(auto_distributed=None, coordinator_address=None,
                           heartbeat_timeout_s=45):
    main.initialize_distributed()
  assert calls[-1] == {"heartbeat_timeout_seconds": 45}


# ------------------------------------------------------------------ on a real SLURM

SCHEDULE_STEPS = 10_000  # every job's learning-rate schedule; the cancelled job's length
TIMEOUT = 600  # seconds per job: two trainer processes on 2 loaded CPU cores


def _ci() -> bool:
  return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module", name="slurm")
def fixture_slurm(tmp_path_factory):
  """A one-node SLURM cluster on localhost (installed with apt-get where missing)."""
  reason = lt.slurm_unavailable()
  if reason:
    if _ci():
      pytest.fail(f"CI is set, so SLURM must run here: {reason}")
    pytest.skip(f"no SLURM: {reason}")
  cluster = lt.SlurmCluster(tmp_path_factory.mktemp("slurm"))
  try:
    cluster.start()
    yield cluster
  finally:
    cluster.stop()


def _trainer_args(num_steps):
  """The entrypoint's extra flags: the tiny model on synthetic input."""
  from tests.training_testing import TINY_BINDINGS
  bindings = ["import tests.synthetic_input", *TINY_BINDINGS,
              "train.input_builder = @SyntheticInput", f"train.num_steps = {num_steps}",
              f"train.schedule_steps = {SCHEDULE_STEPS}", "train.nlu_batch_size = 8",
              "train.nlg_batch_size = 4", "train.sequence_length = 16",
              "train.nlg_segment_length = 8", "train.log_every = 1",
              "train.checkpoint_every = 1000", "train.progress_bar = False"]
  return [f"--gin_bindings={b}" for b in bindings]


class Job:
  """One submission of the script: 2 tasks on the one node, JAX on CPU devices."""

  def __init__(self, slurm, workdir, model_dir, num_steps):
    self.slurm = slurm
    self.workdir = str(workdir)
    env = dict(slurm.env, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               XLA_FLAGS="--xla_force_host_platform_device_count=1 "
                         "--xla_backend_optimization_level=0", PYTHONUNBUFFERED="1",
               LOG_DIR=self.workdir)
    env.pop("CUDA_VISIBLE_DEVICES", None)  # SLURM sets each task's
    if not os.path.exists(os.path.join(lt.REPO, ".venv", "bin", "python")):
      env["PYTHON"] = sys.executable
    # Only what this machine lacks differs from the script's request: 2 tasks on 1 node,
    # 1 CPU each (GPUs: the node's fake ones, or none where they could not be made).
    resources = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1"]
    if slurm.gpus < 2:
      resources.append("--gpus-per-task=0")
    self.id = slurm.sbatch(
        [*resources, f"--output={self.workdir}/slurm-%j.out", "--export=ALL", SCRIPT,
         "gin_configs/runs/pretrain.gin", str(model_dir), *_trainer_args(num_steps)], env)

  def output(self, task=0) -> str:
    name = f"slurm-{self.id}.out" if task == 0 else f"slurm-{self.id}.task{task}.log"
    return lt.read_text(os.path.join(self.workdir, name))

  def tails(self) -> str:
    return "\n".join(f"--- job {self.id} task {t}:\n{self.output(t)[-4000:]}" for t in (0, 1))

  def wait(self, timeout=TIMEOUT) -> dict[str, str]:
    try:
      return self.slurm.wait_until_finished(self.id, timeout)
    except AssertionError as e:
      raise AssertionError(f"{e}\n{self.tails()}") from None


def _processes_naming(text) -> list[str]:
  found = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
      continue
    if text in cmdline and int(pid) != os.getpid():
      found.append(f"{pid}: {cmdline}")
  return found


@pytest.mark.slow
def test_the_sbatch_script_trains_stops_on_scancel_and_resumes_like_a_straight_run(
    slurm, tmp_path):
  """Three submissions of the script: a run cancelled with scancel after step 3 (every
  task saves one step S and exits before SLURM's kill); a straight run of S + 4 steps;
  the cancelled run's resubmission, which resumes at S and ends with the straight run's
  per-step losses and final parameters. Each log line is in the job's output once, and
  each task hands JAX the GPU SLURM bound it to."""
  model_dir = tmp_path / "run"
  job = Job(slurm, tmp_path, model_dir, SCHEDULE_STEPS)
  deadline = time.time() + TIMEOUT
  while "step 3:" not in job.output(0):
    assert time.time() < deadline and slurm.job(job.id).get("JobState") in (
        "PENDING", "CONFIGURING", "RUNNING"), f"never saw step 3\n{job.tails()}"
    time.sleep(0.2)
  slurm.scancel(job.id)
  cancelled = time.time()
  fields = job.wait()
  took = time.time() - cancelled
  assert fields.get("JobState") == "CANCELLED", f"{fields}\n{job.tails()}"
  saved = [lt.saved_on_sigterm(job.output(t)) for t in (0, 1)]
  assert saved[0] and saved[0] == saved[1], f"{saved}\n{job.tails()}"
  step = saved[0][0]
  assert step >= 3, job.tails()
  assert took < slurm.kill_wait, f"the tasks took {took:.0f} s: SLURM killed them"
  assert os.path.isfile(model_dir / "checkpoints" / str(step) / "commit_success.txt")
  assert _processes_naming(str(model_dir)) == []
  num_steps = step + 4

  reference = tmp_path / "reference"
  straight = Job(slurm, tmp_path, reference, num_steps)
  fields = straight.wait()
  assert fields.get("JobState") == "COMPLETED" and fields.get("ExitCode") == "0:0", (
      f"{fields}\n{straight.tails()}")
  out, task1 = straight.output(0), straight.output(1)
  steps_logged = [l.split(":")[0] for l in out.splitlines() if l.startswith("step ")]
  assert steps_logged == [f"step {s}" for s in range(1, num_steps + 1)], straight.tails()
  assert task1.strip() and "[Gloo] Rank 1" not in out, straight.tails()  # task 1: its own log
  if slurm.gpus == 2:  # each task sees its own (fake) GPU, and JAX gets process-local GPU 0
    assert ("SLURM task 0 (local 0): CUDA_VISIBLE_DEVICES=0 -> jax local_device_ids=[0]"
            in out), straight.tails()
    assert ("SLURM task 1 (local 1): CUDA_VISIBLE_DEVICES=1 -> jax local_device_ids=[0]"
            in task1), straight.tails()

  again = Job(slurm, tmp_path, model_dir, num_steps)
  fields = again.wait()
  assert fields.get("JobState") == "COMPLETED" and fields.get("ExitCode") == "0:0", (
      f"{fields}\n{again.tails()}")
  for task in (0, 1):
    assert f"resumed from step {step}" in again.output(task), again.tails()
  lt.assert_same_training(model_dir, reference, num_steps)
