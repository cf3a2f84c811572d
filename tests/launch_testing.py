"""Helpers for the launch-script tests: a one-node SLURM cluster on localhost, and the
comparison of a run with a reference run (per-step losses, final parameters)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM_PACKAGES = ("slurm-wlm", "munge")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def kill_all(procs) -> None:
  """SIGKILLs every process still running and reaps them all (SIGTERM would be
  jax.distributed's preemption notice, which a trainer answers by saving, not exiting)."""
  for p in procs:
    if p.poll() is None:
      p.kill()
  for p in procs:
    p.wait()


def read_text(path) -> str:
  try:
    with open(path, errors="replace") as f:
      return f.read()
  except FileNotFoundError:
    return ""


# ----------------------------------------------------------------------------- runs


def history(model_dir) -> dict[int, dict]:
  with open(os.path.join(model_dir, "train_history.json")) as f:
    return {int(m["step"]): m for m in json.load(f)["history"]}


def params(model_dir, step):
  """A checkpoint's parameters as host numpy arrays (no device layout needed)."""
  import jax
  import orbax.checkpoint as ocp
  path = os.path.join(model_dir, "checkpoints", str(step), "state")
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  meta = getattr(meta, "tree", meta)
  args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
  return ckptr.restore(path, restore_args=args)["params"]


def assert_same_training(model_dir, reference, num_steps, tol=2e-5):
  """Every step 1..num_steps is in the history with the reference's losses, and the
  final parameters equal the reference's (to float tolerance)."""
  import jax
  got, want = history(model_dir), history(reference)
  assert sorted(got) == list(range(1, num_steps + 1)), sorted(got)
  for step in range(1, num_steps + 1):
    for key in [k for k in want[step] if k == "loss" or k.endswith("/loss")]:
      np.testing.assert_allclose(got[step][key], want[step][key], rtol=tol, atol=tol,
                                 err_msg=f"step {step} {key}")
  a, b = params(model_dir, num_steps), params(reference, num_steps)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol)


def saved_on_sigterm(output: str) -> list[int]:
  """The steps of the trainer's "SIGTERM: saved the checkpoint of step N" lines."""
  return [int(line.split("step ")[1].split(",")[0]) for line in output.splitlines()
          if line.startswith("SIGTERM: saved the checkpoint of step")]


# ---------------------------------------------------------------------------- SLURM


def slurm_unavailable() -> str | None:
  """Installs SLURM and munge with apt-get where they are missing and this is root;
  returns why SLURM cannot run here, or None once its commands are present."""
  needed = ("sbatch", "scancel", "squeue", "sinfo", "scontrol", "slurmctld", "slurmd",
            "munged")
  if os.geteuid() != 0:
    return "not root: installing SLURM with apt-get and starting its daemons need root"
  if all(_which(c) for c in needed):
    return None
  if not shutil.which("apt-get"):
    return "SLURM is not installed and there is no apt-get to install it with"
  env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
  for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *SLURM_PACKAGES]):
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:
      return f"`{' '.join(cmd)}` failed ({done.returncode}):\n{done.stdout[-2000:]}" \
             f"{done.stderr[-2000:]}"
  missing = [c for c in needed if not _which(c)]
  return f"installed {' '.join(SLURM_PACKAGES)} but {missing} are missing" if missing else None


def _which(command):
  # The daemons live in /usr/sbin, which a non-login PATH may lack.
  return shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")


class SlurmCluster:
  """munged, slurmctld and slurmd on localhost, configured by a slurm.conf of its own
  (SLURM_CONF; /etc/slurm is not read or written): one node with this machine's CPUs,
  no cgroups (proctrack/linuxproc, task/none), no accounting.

  The node offers `fake_gpus` GPUs as a gres whose device files are character devices
  aliasing /dev/null (made with mknod; 0 where that fails), so that SLURM allocates and
  binds GPUs and sets CUDA_VISIBLE_DEVICES in each task as on a GPU node; nothing can run
  on them, so jobs use JAX's CPU devices.
  """

  def __init__(self, root, fake_gpus=2, kill_wait=60):
    self.root = str(root)
    self.kill_wait = kill_wait
    os.makedirs(self.root, exist_ok=True)
    for sub in ("spool", "state"):
      os.makedirs(os.path.join(self.root, sub), exist_ok=True)
    self.host = socket.gethostname().split(".")[0]
    self.gpus = self._make_fake_gpus(fake_gpus)
    self.conf = os.path.join(self.root, "slurm.conf")
    self.munge_socket = os.path.join(self.root, "munge.socket")
    self.pid_files = {name: os.path.join(self.root, f"{name}.pid")
                      for name in ("munged", "slurmctld", "slurmd")}
    self._procs = []
    self._write_config()

  # -- set-up

  def _make_fake_gpus(self, count) -> int:
    for i in range(count):
      path = os.path.join(self.root, f"fakegpu{i}")
      try:
        if not os.path.exists(path):
          os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
      except OSError:
        return 0
    return count

  def _write_config(self):
    r = self.root
    lines = [
        "ClusterName=launchtest", f"SlurmctldHost={self.host}",
        f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", f"AuthInfo=socket={self.munge_socket}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "MpiDefault=none",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        f"SlurmdSpoolDir={r}/spool", f"StateSaveLocation={r}/state",
        f"SlurmctldPidFile={self.pid_files['slurmctld']}",
        f"SlurmdPidFile={self.pid_files['slurmd']}",
        f"SlurmctldLogFile={r}/slurmctld.log", f"SlurmdLogFile={r}/slurmd.log",
        "ReturnToService=2", f"KillWait={self.kill_wait}",
        "MinJobAge=3600",  # finished jobs stay visible to scontrol for the test
    ]
    gres = ""
    if self.gpus:
      lines.append("GresTypes=gpu")
      gres = f" Gres=gpu:{self.gpus}"
      with open(os.path.join(r, "gres.conf"), "w") as f:
        f.write(f"NodeName={self.host} Name=gpu File={r}/fakegpu[0-{self.gpus - 1}]\n")
    lines += [f"NodeName={self.host} CPUs={os.cpu_count()} RealMemory=1000{gres} State=UNKNOWN",
              "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"]
    with open(self.conf, "w") as f:
      f.write("\n".join(lines) + "\n")

  @property
  def env(self) -> dict[str, str]:
    """The environment SLURM's commands need to reach this cluster."""
    env = dict(os.environ, SLURM_CONF=self.conf)
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
    return env

  def start(self, timeout=60):
    key = os.path.join(self.root, "munge.key")
    with open(key, "wb") as f:
      f.write(os.urandom(1024))
    os.chmod(key, 0o400)
    subprocess.run(
        [_which("munged"), "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
         f"--pid-file={self.pid_files['munged']}", f"--log-file={self.root}/munged.log",
         f"--seed-file={self.root}/munged.seed"],
        check=True, capture_output=True, timeout=30)
    for daemon in ("slurmctld", "slurmd"):
      with open(os.path.join(self.root, f"{daemon}.out"), "w") as out:
        self._procs.append(subprocess.Popen([_which(daemon), "-D"], env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True))
      time.sleep(1)
    deadline = time.time() + timeout
    state = ""
    while time.time() < deadline:
      done = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True,
                            text=True, timeout=30)
      state = done.stdout.strip()
      if state == "idle":
        return self
      if any(p.poll() is not None for p in self._procs):
        break
      time.sleep(0.5)
    raise RuntimeError(f"the SLURM node never became idle (sinfo: {state!r}):\n" + self.logs())

  def stop(self):
    """Stops the daemons by their pid files (slurmd, slurmctld, munged)."""
    for name in ("slurmd", "slurmctld", "munged"):
      try:
        with open(self.pid_files[name]) as f:
          pid = int(f.read().strip())
      except (OSError, ValueError):
        continue
      try:
        os.kill(pid, signal.SIGTERM)
      except ProcessLookupError:
        continue
      deadline = time.time() + 20
      while time.time() < deadline and _alive(pid):
        time.sleep(0.2)
      if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    for p in self._procs:  # reap the ones started here
      try:
        p.wait(timeout=20)
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()

  def logs(self) -> str:
    return "\n".join(f"--- {name}:\n{read_text(os.path.join(self.root, name))[-3000:]}"
                     for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"))

  # -- jobs

  def sbatch(self, args, env, cwd=REPO) -> int:
    done = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return int(done.stdout.strip().split(";")[0])

  def job(self, job_id) -> dict[str, str]:
    """`scontrol show job`'s fields for the job ({} once SLURM forgot it)."""
    done = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], env=self.env,
                          capture_output=True, text=True, timeout=30)
    fields = {}
    for item in done.stdout.split():
      name, sep, value = item.partition("=")
      if sep:
        fields.setdefault(name, value)
    return fields

  def wait_until_finished(self, job_id, timeout) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
      fields = self.job(job_id)
      if fields.get("JobState") not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING",
                                        "SUSPENDED"):
        return fields
      time.sleep(0.5)
    subprocess.run(["scancel", "--signal=KILL", str(job_id)], env=self.env, timeout=30)
    raise AssertionError(f"job {job_id} still {self.job(job_id).get('JobState')} after "
                         f"{timeout} s")

  def scancel(self, job_id):
    subprocess.run(["scancel", str(job_id)], env=self.env, check=True, timeout=30)


def _alive(pid) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  try:  # a zombie (a child of ours not yet reaped) counts as gone
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split(") ")[-1][:1] != "Z"
  except OSError:
    return False
