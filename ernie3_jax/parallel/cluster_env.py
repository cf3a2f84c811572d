"""Which GPUs a SLURM task gives JAX, read from the task's environment.

`jax.distributed.initialize()` detects SLURM by itself (coordinator, process count and
index), and then restricts each process to the one GPU numbered SLURM_LOCALID. That
holds only when every task on a node sees all of the node's GPUs. Two common requests
break it:

- `--gpus-per-task=N` (what launch/slurm_multigpu.sbatch asks for): SLURM binds each task
  to its own GPUs, so task 3 on a node sees one GPU, numbered 0 inside the process
  (CUDA_VISIBLE_DEVICES=3 without device cgroups, =0 with them). JAX asks for GPU 3 of
  that one and fails (jax-ml/jax issues 28194 and 23452).
- One task per node with all of the node's GPUs: JAX keeps GPU 0 and leaves the rest idle.

`slurm_gpu_assignment` maps the environment to the process-local GPU numbers the task
should use, and `initialize_kwargs` turns that into `local_device_ids` for
`jax.distributed.initialize`; the rest is still JAX's own SLURM detection. These are pure
functions of an environment mapping so that hand-written job environments test them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

# The variables through which SLURM's gres/gpu plugin names a task's GPUs, in order of
# preference (NVIDIA, then AMD). Inside the process the listed GPUs are numbered 0..n-1.
VISIBLE_DEVICES_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
# What SLURM writes there when a step asked for GPUs but the node has no device files.
_NO_DEVICES = {"", "NoDevFiles"}


@dataclasses.dataclass(frozen=True)
class GpuAssignment:
  """The process-local GPUs a SLURM task uses, and why."""
  local_device_ids: list[int]
  visible: str  # e.g. "CUDA_VISIBLE_DEVICES=3"
  reason: str

  def describe(self, env: Mapping[str, str]) -> str:
    return (f"SLURM task {env.get('SLURM_PROCID', '?')} (local {env.get('SLURM_LOCALID', '?')}"
            f"): {self.visible} -> jax local_device_ids={self.local_device_ids} ({self.reason})")


def in_slurm_step(env: Mapping[str, str]) -> bool:
  """Whether `env` is a task of a SLURM job step (what JAX's SLURM detection needs)."""
  return all(k in env for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                                "SLURM_PROCID", "SLURM_LOCALID"))


def tasks_on_this_node(env: Mapping[str, str]) -> int:
  """The step's task count on this task's node.

  SLURM_STEP_TASKS_PER_NODE (or the job's SLURM_TASKS_PER_NODE) is a compressed list
  like "8(x3),4": node i's count is the i-th entry once expanded; SLURM_NODEID is i.
  """
  spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
  if spec:
    counts: list[int] = []
    for part in spec.split(","):
      m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
      if not m:
        raise ValueError(f"cannot read a tasks-per-node list: {spec!r}")
      counts += [int(m.group(1))] * int(m.group(2) or 1)
    node = int(env.get("SLURM_NODEID", "0"))
    if node < len(counts):
      return counts[node]
  if env.get("SLURM_NTASKS_PER_NODE"):
    return int(env["SLURM_NTASKS_PER_NODE"])
  return 1


def _visible_gpus(env: Mapping[str, str]) -> tuple[str, list[str]] | None:
  for var in VISIBLE_DEVICES_VARS:
    if var in env:
      value = env[var].strip()
      if value in _NO_DEVICES:
        return None
      return var, [d.strip() for d in value.split(",") if d.strip()]
  return None


def slurm_gpu_assignment(env: Mapping[str, str]) -> GpuAssignment | None:
  """The GPUs (numbered inside this process) a SLURM task should use.

  None where there is nothing to decide: not a SLURM step, a CPU-only job (no GPU is
  visible), or JAX_LOCAL_DEVICE_IDS set by the user (JAX reads it and it wins).

  - The node's only task: it uses every GPU it sees.
  - Bound to its own GPUs (--gpus-per-task, which implies --gpu-bind=per_task since
    SLURM 21.08; or another --gpu-bind): the task sees SLURM_GPUS_PER_TASK GPUs, or fewer
    than the job has on the node (SLURM_GPUS_ON_NODE): it uses every GPU it sees.
  - Sharing the node's GPUs with the other tasks on the node: task SLURM_LOCALID takes
    its equal share, the contiguous block [k * n/t, (k+1) * n/t); one task takes all.
    Shares that do not divide evenly are refused with the request that fixes it.
  """
  if not in_slurm_step(env) or env.get("JAX_LOCAL_DEVICE_IDS"):
    return None
  found = _visible_gpus(env)
  if found is None:
    return None
  var, visible = found
  count = len(visible)
  shown = f"{var}={','.join(visible)}"
  if not count:
    return None
  local_tasks = tasks_on_this_node(env)
  local_id = int(env["SLURM_LOCALID"])
  on_node = int(env["SLURM_GPUS_ON_NODE"]) if env.get("SLURM_GPUS_ON_NODE") else None
  per_task = int(env["SLURM_GPUS_PER_TASK"]) if env.get("SLURM_GPUS_PER_TASK") else None
  if local_tasks == 1:
    return GpuAssignment(list(range(count)), shown, "the node's only task: all of its GPUs")
  if per_task and count == per_task:
    bound = True
  elif per_task and count == per_task * local_tasks:
    bound = False
  else:
    bound = on_node is not None and count < on_node
  if bound:
    return GpuAssignment(list(range(count)), shown, "the task's own GPUs")
  if count % local_tasks:
    raise ValueError(
        f"{shown}: {count} GPUs shared by the {local_tasks} tasks on this node do not "
        f"divide evenly; ask SLURM for --gpus-per-task (or one task per GPU)")
  share = count // local_tasks
  if local_id >= local_tasks:
    raise ValueError(f"SLURM_LOCALID={local_id} but {local_tasks} tasks on this node")
  ids = list(range(local_id * share, (local_id + 1) * share))
  return GpuAssignment(ids, shown, f"share {local_id} of {local_tasks} of the node's GPUs")


def initialize_kwargs(env: Mapping[str, str]) -> dict:
  """Arguments for `jax.distributed.initialize` beyond JAX's own cluster detection:
  `local_device_ids` for a SLURM GPU task, nothing otherwise."""
  assignment = slurm_gpu_assignment(env)
  return {} if assignment is None else {"local_device_ids": assignment.local_device_ids}


def timeout_kwargs(heartbeat_timeout_s: int) -> dict:
  """`jax.distributed.initialize`'s heartbeat setting from `--heartbeat_timeout_s`.

  The coordination service declares a process dead once it has sent no heartbeat for
  this long, and then stops every other process with an error ("another task died");
  the heartbeats come from a thread of their own, so a long compile does not hold them
  up. JAX's default is 100 s.
  """
  if heartbeat_timeout_s < 1:
    raise ValueError(f"--heartbeat_timeout_s must be at least 1 second, got "
                     f"{heartbeat_timeout_s}")
  return {"heartbeat_timeout_seconds": int(heartbeat_timeout_s)}
