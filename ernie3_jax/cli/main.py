r"""The entrypoint: train, evaluate or generate, configured by gin.

  python -m ernie3_jax.cli.main --gin_file=gin_configs/experiments/demo.gin \
      --gin.MODEL_DIR="'/tmp/run'" --run_mode=train

`--gin_file` repeats; `--gin.NAME=VALUE` is a gin binding (rewritten to
`--gin_bindings`); files and includes are searched in `--gin_search_paths`, then
the repository. The effective config is written to MODEL_DIR/config.gin.
Multi-host: `jax.distributed.initialize` runs automatically on TPU pods and under
SLURM, or with the explicit --coordinator_address/--num_processes/--process_id;
`--heartbeat_timeout_s` is how soon the processes notice that one of them died, and
`--compile_barrier_timeout_s` how long they wait for the slowest one to compile a step.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging

from ernie3_jax.config import gin_utils
from ernie3_jax.config.gin_utils import rewrite_gin_args
from ernie3_jax.runtime import compilation_cache
from ernie3_jax.runtime import storage

# --compilation_cache / --compilation_cache_dir (runtime/compilation_cache.py).
_COMPILATION_CACHE = compilation_cache.define_absl_flags()
_GIN_FILES = flags.DEFINE_multi_string("gin_file", [], "Gin config files (repeatable).")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings NAME=VALUE.")
_GIN_SEARCH_PATHS = flags.DEFINE_list("gin_search_paths", [], "Where gin files are looked up.")
_RUN_MODE = flags.DEFINE_enum("run_mode", "train", ["train", "eval", "infer"], "What to run.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (explicit multi-process launch).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_AUTO_DISTRIBUTED = flags.DEFINE_bool(
    "auto_distributed", None,
    "Call jax.distributed.initialize() with auto-detection (default: on TPU pods and SLURM).")
# See docs/RELIABILITY.md ("Multi-process runs") for how these two were chosen.
DEFAULT_HEARTBEAT_TIMEOUT_S = 20
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_s", DEFAULT_HEARTBEAT_TIMEOUT_S,
    "Multi-process runs: a process that sends no heartbeat to the coordination service for "
    "this many seconds is declared dead, and every other process then stops with an error. "
    "Heartbeats come from a background thread, so long compiles and slow steps do not "
    "delay them; raise it on networks that can stall for longer (JAX's own default is 100).")
_COMPILE_BARRIER_TIMEOUT = flags.DEFINE_float(
    "compile_barrier_timeout_s", 1800.0,  # multihost.DEFAULT_COMPILE_BARRIER_TIMEOUT_S
    "Multi-process runs: how long a process that has compiled a step waits for every other "
    "process to compile it too before any of them runs it (compile times differ when one "
    "process finds the step in JAX's compilation cache and another does not).")


def initialize_distributed() -> None:
  """Joins the multi-process JAX cluster when launched as one."""
  import jax  # pylint: disable=g-import-not-at-top
  from ernie3_jax.parallel import cluster_env  # pylint: disable=g-import-not-at-top
  from ernie3_jax.parallel import multihost  # pylint: disable=g-import-not-at-top
  multihost.set_compile_barrier_timeout(_COMPILE_BARRIER_TIMEOUT.value)
  timeouts = cluster_env.timeout_kwargs(_HEARTBEAT_TIMEOUT.value)
  if _COORDINATOR.value is not None:
    if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               **timeouts)
    return
  auto = _AUTO_DISTRIBUTED.value
  if auto is None:
    auto = "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    auto = auto or "TPU_WORKER_HOSTNAMES" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
  if auto:
    # JAX's own cluster detection (SLURM, TPU pods) finds the coordinator and process
    # index; under SLURM the GPUs each task uses come from the task's binding
    # (parallel/cluster_env.py), where JAX alone would pick GPU number SLURM_LOCALID.
    assignment = cluster_env.slurm_gpu_assignment(os.environ)
    if assignment is not None:
      print(assignment.describe(os.environ), flush=True)
    jax.distributed.initialize(**cluster_env.initialize_kwargs(os.environ), **timeouts)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _library_logs_wanted():
    os.environ["ERNIE3_LIBRARY_LOGS"] = "1"  # tf_runtime shows TensorFlow's import notices
  else:
    # Library INFO logs (checkpoint threads, data pipelines) and known-harmless warnings
    # drown the run's own progress lines; `--verbosity=1` (or -v 0) brings them back.
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    from ernie3_jax.cli import console  # pylint: disable=g-import-not-at-top
    console.hold_back_harmless_warnings()
  initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top
  from ernie3_jax.runtime import host_memory  # pylint: disable=g-import-not-at-top
  from ernie3_jax.cli import runs  # pylint: disable=g-import-not-at-top
  host_memory.warn_if_unset(jax.default_backend())
  compilation_cache.setup_from_absl_flags(_COMPILATION_CACHE)  # before the first compile
  gin_utils.parse_gin(_GIN_FILES.value, _GIN_BINDINGS.value, _GIN_SEARCH_PATHS.value)
  from ernie3_jax.parallel import multihost  # pylint: disable=g-import-not-at-top
  multihost.check_same_config(gin_utils.effective_config())
  model_dir = runs.model_dir()
  from ernie3_jax.cli import preflight  # pylint: disable=g-import-not-at-top
  if _RUN_MODE.value == "train":
    _refuse_if_held(model_dir)  # at once, not after minutes of checks
  preflight.check(_RUN_MODE.value, model_dir)  # fails before MODEL_DIR is touched
  lock = _lock_if_training(model_dir)
  try:
    if jax.process_index() == 0:
      storage.write_atomic(os.path.join(model_dir, "config.gin"),
                           gin_utils.effective_config())
    logging.info("run_mode=%s model_dir=%s processes=%d devices=%d", _RUN_MODE.value,
                 model_dir, jax.process_count(), jax.device_count())
    runs.run(_RUN_MODE.value, model_dir)
  finally:
    if lock is not None:
      lock.release()
  multihost.shutdown()  # after every process finished: process 0 hosts the service


def _refuse_if_held(model_dir: str) -> None:
  """Fails on every process when a live trainer holds MODEL_DIR (process 0 looks; writes
  nothing). The lock itself is taken after the checks, in `_lock_if_training`."""
  import jax  # pylint: disable=g-import-not-at-top
  from ernie3_jax.parallel import multihost  # pylint: disable=g-import-not-at-top
  from ernie3_jax.training import run_lock  # pylint: disable=g-import-not-at-top
  error = None
  if jax.process_index() == 0:
    try:
      run_lock.RunLock(model_dir).check()
    except run_lock.RunLockError as e:
      error = str(e)
  error = multihost.from_process_zero(error)
  if error is not None:
    raise run_lock.RunLockError(error)


def _lock_if_training(model_dir: str):
  """Creates MODEL_DIR and, for training, takes its trainer lock (process 0 holds it
  for the whole cluster); every process fails alike when another trainer holds it."""
  import jax  # pylint: disable=g-import-not-at-top
  from ernie3_jax.parallel import multihost  # pylint: disable=g-import-not-at-top
  from ernie3_jax.training import run_lock  # pylint: disable=g-import-not-at-top
  lock, error = None, None
  if jax.process_index() == 0:
    storage.makedirs(model_dir)
    if _RUN_MODE.value == "train":
      try:
        lock = run_lock.RunLock(model_dir).acquire()
      except run_lock.RunLockError as e:
        error = str(e)
      else:
        if lock.took_over:
          print(f"took over the trainer lock of {model_dir} from a process that no longer "
                f"runs ({run_lock.describe(lock.took_over)})", flush=True)
  error = multihost.from_process_zero(error)
  if error is not None:
    raise run_lock.RunLockError(error)
  return lock


def _library_logs_wanted() -> bool:
  """`--verbosity=1` (or higher): library logs, notices and tracebacks are shown."""
  return flags.FLAGS["verbosity"].present and flags.FLAGS.verbosity >= 1


def _main_and_exit(argv):
  """Runs main, then leaves without interpreter teardown.

  Checkpoints are closed and output flushed by then; TensorFlow's input-pipeline
  threads can otherwise hang or abort the interpreter's shutdown.
  """
  code = 0
  try:
    main(argv)
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, (app.UsageError,)):
      raise
    from ernie3_jax.cli import console  # pylint: disable=g-import-not-at-top
    if _library_logs_wanted() or not console.is_user_error(e):
      import traceback  # pylint: disable=g-import-not-at-top
      traceback.print_exc()
    print(console.error_line(e), file=sys.stderr)
    if not _library_logs_wanted() and console.is_user_error(e):
      print("(--verbosity=1 shows the traceback)", file=sys.stderr)
    code = 1
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def cli():
  app.run(_main_and_exit, argv=rewrite_gin_args(sys.argv))


if __name__ == "__main__":
  cli()
