r"""One process of a small multi-process JAX program, for the tests of how the processes
of a run wait for each other and notice each other's death.

It joins the cluster through the trainer's own `initialize_distributed` (so the
trainer's --heartbeat_timeout_s and --compile_barrier_timeout_s flags apply as they do
to a run), then runs `--steps` steps of a jitted all-reduce over every device of every
process (the same gloo collectives the train step uses), wrapped like the train step
in `multihost.CompiledEverywhere` unless --compile_barrier=false. `--slow_process`
sleeps `--compile_delay_s` inside XLA's compile of that step, as a process that misses
JAX's compilation cache and compiles under load would.

  python -m tests.multihost_worker --coordinator_address=localhost:PORT \
      --num_processes=2 --process_id=0 --steps=3

With --trainer it runs the trainer's CLI (ernie3_jax.cli.main, with every flag it
takes) instead, the slow process's compile of `--slow_step` delayed the same way.
"""

from __future__ import annotations

import sys
import time

from absl import app
from absl import flags

from ernie3_jax.cli import main as cli_main

_STEPS = flags.DEFINE_integer("steps", 3, "Steps of the all-reduce to run.")
_STEP_SLEEP = flags.DEFINE_float("step_sleep_s", 0.0, "Pause after every step.")
_SLOW_PROCESS = flags.DEFINE_integer("slow_process", None, "The process that compiles slowly.")
_COMPILE_DELAY = flags.DEFINE_float("compile_delay_s", 0.0,
                                    "How much longer the slow process takes to compile.")
_TRAINER = flags.DEFINE_bool("trainer", False, "Run ernie3_jax.cli.main instead.")
_SLOW_STEP = flags.DEFINE_string("slow_step", "jit_all_reduce_step",
                                 "The XLA module whose compile is delayed.")
_COMPILE_BARRIER = flags.DEFINE_bool("compile_barrier", True,
                                     "Wrap the step in multihost.CompiledEverywhere.")

STEP_NAME = "all_reduce_step"


def _slow_compiles(seconds: float) -> None:
  """Makes XLA's compile of `--slow_step` (not of anything else) take `seconds` longer."""
  from jax._src import compiler  # pylint: disable=g-import-not-at-top
  from jax._src.lib.mlir import ir  # pylint: disable=g-import-not-at-top
  compile_or_get_cached = compiler.compile_or_get_cached

  def slow(backend, computation, *args, **kwargs):
    name = ir.StringAttr(computation.operation.attributes["sym_name"]).value
    if name == _SLOW_STEP.value:
      print(f"compiling {name} slowly: sleeping {seconds:g} s", flush=True)
      time.sleep(seconds)
    return compile_or_get_cached(backend, computation, *args, **kwargs)

  compiler.compile_or_get_cached = slow


def _is_slow_process() -> bool:
  return bool(_COMPILE_DELAY.value) and flags.FLAGS.process_id == _SLOW_PROCESS.value


def main(argv):
  if _TRAINER.value:
    if _is_slow_process():
      _slow_compiles(_COMPILE_DELAY.value)
    return cli_main._main_and_exit(argv)  # pylint: disable=protected-access
  del argv
  cli_main.initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  from ernie3_jax.parallel import multihost  # pylint: disable=g-import-not-at-top

  me = jax.process_index()
  if _is_slow_process():
    _slow_compiles(_COMPILE_DELAY.value)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  rows = NamedSharding(mesh, PartitionSpec("data"))
  replicated = NamedSharding(mesh, PartitionSpec())

  def all_reduce_step(x):
    return jnp.sum(x)

  step = jax.jit(all_reduce_step, in_shardings=rows, out_shardings=replicated)
  if _COMPILE_BARRIER.value:
    step = multihost.CompiledEverywhere(step, STEP_NAME)
  local = jax.local_device_count()
  for i in range(1, _STEPS.value + 1):
    # Process p contributes rows of value i * (p + 1); the sum shows every process took part.
    x = jax.make_array_from_process_local_data(rows, np.full((local,), i * (me + 1), np.float32))
    total = float(jax.device_get(step(x)))
    print(f"step {i}: {total:g}", flush=True)
    time.sleep(_STEP_SLEEP.value)
  print("done", flush=True)
  multihost.shutdown()


if __name__ == "__main__":
  app.run(main, argv=cli_main.rewrite_gin_args(sys.argv))
