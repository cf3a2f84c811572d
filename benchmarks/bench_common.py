"""Helpers shared by the benchmark scripts: thread pinning, timing, peaks, output.

Each benchmark prints one JSON line (settings + results) and, with --output,
appends the same line to a file, so `make bench` collects .jsonl files.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any, Callable

from absl import flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

from ernie3_jax.runtime import host_memory  # noqa: E402  pylint: disable=g-import-not-at-top

_HOST_MEMORY = flags.DEFINE_boolean(
    "host_memory_tunables", True, "Start worker processes with ernie3_jax.runtime.host_memory's glibc "
    "settings (freed memory stays mapped), as `make demo` and launch/ start the trainer.")


def pin_threads(threads: int) -> int:
  """Restricts this process to `threads` cores, before JAX or PyTorch start.

  XLA's CPU thread pool sizes itself from the process's CPU affinity, so pinning
  the process is what gives JAX and PyTorch (torch.set_num_threads) the same
  number of threads. Returns the number of cores the process may use.
  """
  available = sorted(os.sched_getaffinity(0))
  if threads <= 0 or threads >= len(available):
    return len(available)
  os.sched_setaffinity(0, available[:threads])
  return threads


def machine() -> str:
  """Architecture, cores, CPU model and last-level cache: figures measured on
  machines that differ in these are not comparable."""
  model, cache = platform.processor() or "unknown", ""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      info = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in f)}
    model = info.get("model name", model)
    levels = glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")
    read = lambda d, name: pathlib.Path(d, name).read_text(encoding="utf-8").strip()
    cache = read(max(levels, key=lambda d: int(read(d, "level"))), "size")
  except (OSError, ValueError):  # not Linux: keep what platform says
    pass
  return f"{platform.machine()} {os.cpu_count()} cpus ({model}{', LLC ' + cache if cache else ''})"


def median_time(fn: Callable[[], Any], repeats: int) -> float:
  """Median wall seconds of `fn()` over `repeats` calls (fn must block until done)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def jax_matmul_peak(size: int = 1024, repeats: int = 10) -> float:
  """Best fp32 FLOP/s of a jitted size^3 matmul (the measured CPU peak for MFU)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = min(_timed(lambda: f(a, b).block_until_ready()) for _ in range(repeats))
  return 2 * size ** 3 / best


def torch_matmul_peak(size: int = 1024, repeats: int = 10) -> float:
  """Best fp32 FLOP/s of a torch size^3 matmul (same threads as the model run)."""
  import torch  # pylint: disable=g-import-not-at-top
  a, b = torch.randn(size, size), torch.randn(size, size)
  with torch.no_grad():
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
  return 2 * size ** 3 / best


def jax_read_bandwidth(nbytes: int = 1 << 30, repeats: int = 3) -> float:
  """Best bytes/s of a jitted sum over an fp32 array of `nbytes` (the memory roofline)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jnp.ones((nbytes // 4,), jnp.float32)
  f = jax.jit(jnp.sum)
  f(a).block_until_ready()
  best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(repeats))
  return a.nbytes / best


class PeakMeter:
  """The best of repeated peak measurements, sampled between a benchmark's repeats.

  One burst of background load during a single measurement would understate the
  peak and so overstate MFU; sampling at several points of the run and keeping
  the best gives the machine's peak as the run saw it.
  """

  def __init__(self, measure: Callable[[], float]):
    self._measure = measure
    self.best = 0.0
    self.samples: list[float] = []

  def sample(self) -> float:
    value = self._measure()
    self.samples.append(value)
    self.best = max(self.best, value)
    return value


def _timed(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


class Worker:
  """One side of a comparison, served from its own process.

  Alternating two frameworks inside one process let one slow the other: with
  PyTorch loaded beside it, the JAX training step here took about 40% longer
  than alone. Each side now lives in a spawned process that sleeps on its pipe
  while the other runs, and the parent alternates their calls.

  `factory` (a module-level callable of a benchmark script) builds the served
  object in the child, after the child parses `argv` as absl flags; `call` runs
  one of its methods there and returns the (picklable) result. Both sides start
  with the same environment: this one's, plus host_memory's glibc settings
  unless --host_memory_tunables=false.
  """

  def __init__(self, factory: Callable[..., Any], argv: list[str], *args: Any):
    import multiprocessing  # pylint: disable=g-import-not-at-top
    ctx = multiprocessing.get_context("spawn")
    self._conn, child = ctx.Pipe()
    self._process = ctx.Process(target=_serve, args=(child, factory, list(argv), args),
                                daemon=True)
    saved = dict(os.environ)
    if _HOST_MEMORY.value:  # glibc reads them at start-up: the child's environment
      os.environ.update(host_memory.environment())
    try:
      self._process.start()
    finally:
      os.environ.clear()
      os.environ.update(saved)
    child.close()
    self._receive("start-up")  # the object is built, or its error is raised here

  def call(self, method: str, *args: Any) -> Any:
    self._conn.send((method, args))
    return self._receive(method)

  def _receive(self, what: str) -> Any:
    try:
      ok, value = self._conn.recv()
    except EOFError as e:
      raise RuntimeError(f"benchmark worker died (exit code {self._process.exitcode})") from e
    if not ok:
      raise RuntimeError(f"benchmark worker failed in {what}:\n{value}")
    return value

  def close(self) -> None:
    self._conn.send(None)
    self._process.join(timeout=60)


def _serve(conn, factory, argv, args) -> None:
  import traceback  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    flags.FLAGS(argv)
    served = factory(*args)
  except Exception:  # pylint: disable=broad-except
    conn.send((False, traceback.format_exc()))
    return
  conn.send((True, None))
  while True:
    message = conn.recv()
    if message is None:
      return
    method, call_args = message
    try:
      conn.send((True, getattr(served, method)(*call_args)))
    except Exception:  # pylint: disable=broad-except
      conn.send((False, traceback.format_exc()))


def host_memory_settings() -> dict[str, Any]:
  """What the workers start with, for a benchmark's settings."""
  return {"host_memory_tunables": host_memory.environment()[host_memory.ENV_VAR]
          if _HOST_MEMORY.value else os.environ.get(host_memory.ENV_VAR)}


def torch_available() -> tuple[bool, str]:
  """(whether torch and transformers import, why not)."""
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import transformers  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    return False, f"{e} (install the [bench] extra: pip install -e '.[bench]')"
  return True, ""


def emit(record: dict[str, Any], output: str | None) -> None:
  """Prints the record as one JSON line and appends it to `output` if given."""
  line = json.dumps(record, sort_keys=False)
  print(line, flush=True)
  if output:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "a") as f:
      f.write(line + "\n")


def bert_train_flops(layers: int, d: int, d_ff: int, vocab: int, rows: int,
                     length: int) -> float:
  """Model FLOPs of a BERT-style MLM training step (matmuls x3, as flops.py)."""
  tokens = rows * length
  dense = 2 * tokens * layers * (4 * d * d + 2 * d * d_ff)
  attention = 2 * tokens * layers * d * 2 * length  # scores + value mixing
  head = 2 * tokens * (d * d + d * vocab)
  return 3.0 * (dense + attention + head)


def jax_weight_bytes_per_step(params) -> int:
  """Bytes of the weights one NLG decoding step reads: the universal and NLG stacks
  (without W_R, projected once per generation), the LM head and the tied token table."""
  import jax  # pylint: disable=g-import-not-at-top
  read = {"universal": params["universal"], "nlg": params["nlg"],
          "lm_head": params["lm_head"], "token": params["embedder"]["token"]}
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(read):
    if "position" not in jax.tree_util.keystr(path):
      total += leaf.size * leaf.dtype.itemsize
  return int(total)


def simulate_cpu_devices(count: int, fast_compile: bool = False) -> None:
  """Sets XLA_FLAGS for `count` simulated CPU devices (before JAX is imported), keeping
  the caller's other flags. `fast_compile` skips LLVM optimisation: the HLO passes and
  buffer assignment, which set memory figures, are unchanged; compiles run ~2x faster."""
  flags_env = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                       if not f.startswith("--xla_force_host_platform_device_count"))
  flags_env += f" --xla_force_host_platform_device_count={count}"
  if fast_compile:
    flags_env += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  os.environ["XLA_FLAGS"] = flags_env.strip()
