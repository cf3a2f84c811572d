"""Start to first step: how long a training process takes to log its first step, with
JAX's persistent compilation cache empty (cold) and filled (warm).

Each case runs `python -m ernie3_jax.cli.main` in fresh processes: first with an empty
cache folder (it compiles everything and fills the folder), then again with that folder.
A run is timed from just before the process is started to the moment its first
`step N:` line reaches the parent (train.log_every=1); the process is then killed (its
MODEL_DIR is a throwaway copy). Cases:

- demo_resume: `make demo`'s config resumed from a checkpoint (a MODEL_DIR trained for
  --demo_steps steps beforehand, copied afresh for every timed run), one more step.
- base_step: the base model (gin_configs/models/base.gin, 12 x 768 with 12 + 12 task
  layers) started in a fresh MODEL_DIR on the demo's data, with a tiny batch so that its
  step fits a CPU.

Prints one JSON line per case: cold and warm seconds, warm / cold, the cache's entries.
Goal: a warm start reaches its first step in under a quarter of the cold time.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags

import bench_common
from bench_common import REPO_ROOT

CASES = ("demo_resume", "base_step")
_CASES = flags.DEFINE_list("cases", list(CASES), f"Which cases to run, of {CASES}.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Cold/warm pairs per case (medians reported); "
                                "each pair starts from an empty cache folder.")
_DEMO_STEPS = flags.DEFINE_integer("demo_steps", 2, "demo_resume: steps trained (and "
                                   "checkpointed) before the timed resumes.")
_DEMO_GIN = flags.DEFINE_multi_string("demo_gin", [], "demo_resume: extra gin bindings "
                                      "(NAME=VALUE) for the prepared run and the resumes.")
_BASE_NLU = flags.DEFINE_integer("base_nlu_batch", 2, "base_step: NLU rows per step.")
_BASE_NLG = flags.DEFINE_integer("base_nlg_batch", 1, "base_step: NLG rows per step.")
_BASE_LENGTH = flags.DEFINE_integer("base_length", 32, "base_step: NLU sequence length.")
_BASE_SEGMENT = flags.DEFINE_integer("base_segment", 16, "base_step: NLG segment length.")
_TIMEOUT = flags.DEFINE_integer("timeout_s", 1800, "Longest a single run may take.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where MODEL_DIRs and cache folders go "
                               "(default: a temporary folder, removed at the end).")
_OUTPUT = flags.DEFINE_string("output", None, "Append the JSON lines to this file.")

FIRST_STEP = re.compile(r"^step (\d+):")


def time_to_first_step(command: list[str], env: dict[str, str], timeout_s: float,
                       log_path: str) -> tuple[float, int]:
  """Seconds from starting `command` until it prints its first `step N:` line, and N.
  The process (and any child it started) is killed then; its output is kept in
  `log_path` (stdout lines prefixed with the seconds since the start). Raises RuntimeError with the output's tail if it exits or times out first."""
  lines: queue.Queue = queue.Queue()
  timed_out = False
  with open(log_path, "w") as log:
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=log, text=True, bufsize=1, start_new_session=True)
    reader = threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout] + [
        lines.put(None)], daemon=True)
    reader.start()
    try:
      while True:
        remaining = start + timeout_s - time.perf_counter()
        try:
          line = lines.get(timeout=max(remaining, 0.01))
        except queue.Empty:
          timed_out = True
          break
        if line is None:
          break  # the process closed its output (exited)
        log.write(f"[{time.perf_counter() - start:7.1f} s] {line}")  # stdout, timed
        match = FIRST_STEP.match(line)
        if match:
          return time.perf_counter() - start, int(match.group(1))
    finally:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
      reader.join(timeout=10)
  with open(log_path) as f:
    tail = f.read()[-3000:]
  why = f"timed out after {timeout_s:g} s" if timed_out else f"exit {proc.returncode}"
  raise RuntimeError(f"{' '.join(command[:6])}... logged no step ({why}); output:\n{tail}")


def _cli(bindings: list[str], model_dir: str, cache_dir: str | None,
         gin_files: list[str]) -> list[str]:
  command = [sys.executable, "-m", "ernie3_jax.cli.main", "--run_mode=train"]
  command += [f"--gin_file={g}" for g in gin_files]
  command += [f"--gin_bindings={b}" for b in bindings + [f"MODEL_DIR = '{model_dir}'"]]
  if cache_dir is None:
    command.append("--nocompilation_cache")
  else:
    command.append(f"--compilation_cache_dir={cache_dir}")
  return command


def _env() -> dict[str, str]:
  env = dict(os.environ, PYTHONUNBUFFERED="1", ERNIE3_COMPILATION_CACHE="1")
  settings = bench_common.host_memory_settings()["host_memory_tunables"]
  if settings:
    env["GLIBC_TUNABLES"] = settings
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _cache_contents(cache_dir: str) -> tuple[int, int]:
  entries, size = 0, 0
  for root, _, files in os.walk(cache_dir):
    for name in files:
      if name.endswith("-cache"):
        entries += 1
        size += os.path.getsize(os.path.join(root, name))
  return entries, size


def run_case(case: str, workdir: str) -> dict:
  """Cold and warm start-to-first-step of one case (medians over --repeats pairs)."""
  env = _env()
  demo = ["gin_configs/experiments/demo.gin"]
  if case == "demo_resume":
    prepared = os.path.join(workdir, "demo_prepared")
    common = list(_DEMO_GIN.value) + ["train.log_every = 1", "train.progress_bar = False"]
    if not os.path.isdir(prepared):
      subprocess.run(_cli(common + [f"train.num_steps = {_DEMO_STEPS.value}",
                                    f"train.checkpoint_every = {_DEMO_STEPS.value}"],
                          prepared, None, demo),
                     cwd=REPO_ROOT, env=env, check=True, capture_output=True,
                     timeout=_TIMEOUT.value)
    bindings = common + [f"train.num_steps = {_DEMO_STEPS.value + 1}"]
    gin_files = demo
  elif case == "base_step":
    prepared = None
    bindings = [f"NLU_BATCH = {_BASE_NLU.value}", f"NLG_BATCH = {_BASE_NLG.value}",
                f"SEQUENCE_LENGTH = {_BASE_LENGTH.value}",
                f"NLG_SEGMENT_LENGTH = {_BASE_SEGMENT.value}", "train.progressive = None",
                "train.eval_every = 0", "train.log_every = 1", "train.num_steps = 1",
                "train.progress_bar = False"]
    gin_files = demo + ["gin_configs/models/base.gin"]
  else:
    raise ValueError(f"--cases: unknown case {case!r}; expected some of {CASES}")

  cold, warm, entries = [], [], []
  first_step = None
  for repeat in range(_REPEATS.value):
    cache_dir = os.path.join(workdir, f"{case}_cache_{repeat}")
    shutil.rmtree(cache_dir, ignore_errors=True)
    for kind, times in (("cold", cold), ("warm", warm)):
      model_dir = os.path.join(workdir, f"{case}_{kind}_{repeat}")
      shutil.rmtree(model_dir, ignore_errors=True)
      if prepared:
        shutil.copytree(prepared, model_dir)
      seconds, first_step = time_to_first_step(
          _cli(bindings, model_dir, cache_dir, gin_files), env, _TIMEOUT.value,
          os.path.join(workdir, f"{case}_{kind}_{repeat}.log"))
      times.append(seconds)
      if kind == "cold":
        entries.append(_cache_contents(cache_dir))
      shutil.rmtree(model_dir, ignore_errors=True)
  cold_s, warm_s = statistics.median(cold), statistics.median(warm)
  return {"benchmark": "start_to_first_step", "case": case, "machine": bench_common.machine(),
          "cold_s": round(cold_s, 2), "warm_s": round(warm_s, 2),
          "warm_over_cold": round(warm_s / cold_s, 3), "goal_warm_under_quarter": warm_s < cold_s / 4,
          "first_step": first_step, "cold_runs_s": [round(t, 2) for t in cold],
          "warm_runs_s": [round(t, 2) for t in warm],
          "cache_entries": entries[-1][0], "cache_bytes": entries[-1][1],
          "gin_files": gin_files, "bindings": bindings,
          "resumed_from_step": _DEMO_STEPS.value if prepared else None,
          "repeats": _REPEATS.value, **bench_common.host_memory_settings()}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  bad = [c for c in _CASES.value if c not in CASES]
  if bad or not _CASES.value:
    raise app.UsageError(f"--cases={','.join(_CASES.value)}: expected some of {CASES}")
  if _REPEATS.value < 1 or _DEMO_STEPS.value < 1:
    raise app.UsageError("--repeats and --demo_steps must be >= 1")
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="start_to_first_step_")
  os.makedirs(workdir, exist_ok=True)
  try:
    for case in _CASES.value:
      bench_common.emit(run_case(case, workdir), _OUTPUT.value)
  finally:
    if _WORKDIR.value is None:
      shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
