"""JAX's persistent compilation cache, on for every command that compiles.

A restart (a resume, each `--run_mode=eval`/`infer` run, zero-shot scoring, `generate`)
would otherwise compile every program again. With the cache on, a program compiled once
is written to a folder and the next process that builds the same program (same HLO, JAX
version, XLA flags, compile options and devices) loads it instead of compiling it.

Settings (the same names on every command):
- `--compilation_cache_dir=PATH`: the folder; default `$ERNIE3_COMPILATION_CACHE_DIR`,
  else `$JAX_COMPILATION_CACHE_DIR`, else `$XDG_CACHE_HOME/ernie3-jax/jax_compilation_cache`
  (`~/.cache/...` without XDG_CACHE_HOME). `gs://bucket/prefix` works too (JAX reads and
  writes it through etils.epath, the client storage.py uses).
- `--nocompilation_cache` (or `--compilation_cache=false`, or the environment's
  `ERNIE3_COMPILATION_CACHE=0`): off.

Why the user's cache folder and not MODEL_DIR: entries are keyed by the program, not the
run, so every run of the same model and mesh on this machine shares them (a fresh
MODEL_DIR with a known config starts warm too); a local folder costs one file read per
program where a `gs://` MODEL_DIR costs a round trip; and a cache is trusted code (JAX
runs what it loads), so it belongs in a folder only its user writes, not in a bucket
that collaborators share. Runs whose processes share no file system (a TPU pod's workers)
should name a shared folder: JAX writes entries from process 0 only, so the other hosts'
local folders would stay empty.

On a local folder every program is cached however quickly it compiled (JAX's default
skips programs under 1 s): besides the step a start compiles about a dozen small programs
(seeds, conversions, the initialisation), and whether one took over a second depends on the
machine's load at the time; without a threshold a warm start finds all of them, and a
small entry costs kilobytes and a millisecond's read. On an object store each read is a
network round trip, as slow as compiling a small program, so there JAX's 1 s stays.

Machines: JAX's key holds the platform and its version, the device kinds and the XLA
flags, which tells GPU and TPU generations apart, but on CPU the platform version is just
"cpu": XLA:CPU compiles for the host processor's instruction set, and an executable built
on a newer processor and loaded on an older one can fail or compute differently (other
vector widths, FMA). So each CPU model gets its own sub-folder, named by the processor's
architecture and a hash of its model name and feature flags (`cpu-x86_64-<hash>`); a home
folder shared by a cluster's unlike nodes is then safe.
"""

from __future__ import annotations

import hashlib
import os
import platform

from absl import logging

from ernie3_jax.runtime import storage

ENV_DIR = "ERNIE3_COMPILATION_CACHE_DIR"
ENV_ENABLED = "ERNIE3_COMPILATION_CACHE"
FLAG_DIR = "compilation_cache_dir"
FLAG_ENABLED = "compilation_cache"
# Local folders: every program is written (see the module docstring).
LOCAL_MIN_COMPILE_TIME_S = 0.0
# Object stores: JAX's own default; a read is a network round trip.
REMOTE_MIN_COMPILE_TIME_S = 1.0

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class CompilationCacheError(ValueError):
  """A compilation-cache setting that cannot be used (named in the message)."""


def default_dir(environ=None) -> str:
  """The folder used when `--compilation_cache_dir` is not given."""
  environ = os.environ if environ is None else environ
  for var in (ENV_DIR, "JAX_COMPILATION_CACHE_DIR"):
    if environ.get(var):
      return environ[var]
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "ernie3-jax", "jax_compilation_cache")


def default_enabled(environ=None) -> bool:
  """On, unless the environment's ERNIE3_COMPILATION_CACHE says off."""
  environ = os.environ if environ is None else environ
  value = environ.get(ENV_ENABLED, "").strip().lower()
  if not value or value in _TRUE:
    return True
  if value in _FALSE:
    return False
  raise CompilationCacheError(f"{ENV_ENABLED}={environ[ENV_ENABLED]!r}: expected one of "
                              f"{'/'.join(_TRUE)} or {'/'.join(_FALSE)}")


def host_tag(backend: str) -> str:
  """The sub-folder for this machine's programs: the backend's name, and on CPU the
  processor's architecture and a hash of its model and feature flags."""
  if backend != "cpu":
    return backend
  return f"cpu-{platform.machine() or 'unknown'}-{_cpu_fingerprint()}"


def _cpu_fingerprint(cpuinfo: str | None = None) -> str:
  """A hash of the processor's identity and instruction-set flags, from `cpuinfo` (the
  text of /proc/cpuinfo, read when None)."""
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        cpuinfo = f.read()
    except OSError:
      cpuinfo = ""
  described = {}
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(":")
    key = key.strip()
    # The first processor's identity and flags (x86 "flags", Arm "Features"); per-core
    # lines (MHz, ids, bogomips) are left out: they differ between cores and boots.
    if key in _CPU_IDENTITY and key not in described:
      described[key] = " ".join(sorted(value.split()))
  if not described:  # not Linux: what the platform module knows
    described = {"processor": platform.processor(), "system": platform.system()}
  text = "\n".join(f"{k}={v}" for k, v in sorted(described.items()))
  return hashlib.sha256(text.encode()).hexdigest()[:12]


_CPU_IDENTITY = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags",
                 "Features", "CPU implementer", "CPU architecture", "CPU variant", "CPU part")


def resolve_dir(directory: str | None, flag: str = FLAG_DIR) -> str:
  """The configured folder, checked: a clear error naming `flag` when it cannot be one."""
  if directory is None:
    directory = default_dir()
  if not str(directory).strip():
    raise CompilationCacheError(f"--{flag}: empty; give a folder, or turn the cache off "
                                f"with --no{FLAG_ENABLED}")
  try:
    directory = storage.check(directory, f"--{flag}")
  except storage.StoragePathError as e:
    raise CompilationCacheError(str(e)) from e
  if storage.is_uri(directory):
    return directory.rstrip("/")
  directory = os.path.abspath(os.path.expanduser(directory))
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise CompilationCacheError(f"--{flag}={directory!r} is a file, not a folder")
  return directory


def setup(enabled: bool | None = None, directory: str | None = None,
          backend: str | None = None) -> str | None:
  """Turns JAX's persistent compilation cache on (in `directory`, or the default) or off;
  the folder programs are written to, or None when off. Call it before the first
  compilation and after `jax.distributed.initialize` (it asks for the backend)."""
  import jax  # pylint: disable=g-import-not-at-top
  if enabled is None:
    enabled = default_enabled()
  if directory is not None:  # named, so checked even when the cache is off
    resolve_dir(directory)
  if not enabled:
    jax.config.update("jax_enable_compilation_cache", False)
    _forget_initialised_cache()
    logging.info("compilation cache: off")
    return None
  base = resolve_dir(directory)
  folder = f"{base}/{host_tag(backend or jax.default_backend())}"
  if not storage.is_uri(folder):
    try:
      os.makedirs(folder, exist_ok=True)
    except OSError as e:
      raise CompilationCacheError(
          f"--{FLAG_DIR}={base!r}: cannot create the cache folder ({e.strerror}); name "
          f"another with --{FLAG_DIR}, or turn the cache off with --no{FLAG_ENABLED}") from e
    if not os.access(folder, os.W_OK | os.X_OK):
      raise CompilationCacheError(f"--{FLAG_DIR}={base!r}: {folder} is not writable; name "
                                  f"another with --{FLAG_DIR}, or turn the cache off with "
                                  f"--no{FLAG_ENABLED}")
  _forget_initialised_cache(unless_dir=folder)
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", folder)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      REMOTE_MIN_COMPILE_TIME_S if storage.is_uri(folder)
                      else LOCAL_MIN_COMPILE_TIME_S)
  logging.info("compilation cache: %s", folder)
  return folder


def _forget_initialised_cache(unless_dir: str | None = None) -> None:
  """JAX opens its cache once per process, at the first compile: a second `setup` in the
  same process (a test, a notebook) with another folder or turned off must reset it."""
  try:
    from jax._src import compilation_cache as jax_cache  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  current = getattr(jax_cache, "_cache", None)
  if current is None and not getattr(jax_cache, "_cache_checked", False):
    return
  path = getattr(current, "_path", None)
  if unless_dir is not None and path is not None and str(path) == unless_dir:
    return
  if hasattr(jax_cache, "reset_cache"):
    jax_cache.reset_cache()


# ---------------------------------------------------------------- command-line flags


def define_absl_flags(flag_values=None):
  """Defines --compilation_cache and --compilation_cache_dir; returns their holders."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS if flag_values is None else flag_values
  enabled = flags.DEFINE_bool(
      FLAG_ENABLED, None,
      "JAX's persistent compilation cache: a restart loads the programs an earlier run "
      f"compiled instead of compiling them (default: on, unless {ENV_ENABLED}=0; "
      f"--no{FLAG_ENABLED} turns it off).", flag_values=flag_values)
  directory = flags.DEFINE_string(
      FLAG_DIR, None,
      f"The compilation cache's folder, local or gs:// (default: ${ENV_DIR}, else "
      "$JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME or ~/.cache, then "
      "ernie3-jax/jax_compilation_cache).", flag_values=flag_values)
  return enabled, directory


def setup_from_absl_flags(holders, backend: str | None = None) -> str | None:
  enabled, directory = holders
  return setup(enabled.value, directory.value, backend)


def add_arguments(parser) -> None:
  """The same two settings on an argparse parser (`--nocompilation_cache` included)."""
  parser.add_argument(f"--{FLAG_ENABLED}", type=_parse_bool, default=None,
                      metavar="true|false",
                      help="JAX's persistent compilation cache (default: on, unless "
                      f"{ENV_ENABLED}=0)")
  parser.add_argument(f"--no{FLAG_ENABLED}", dest=FLAG_ENABLED, action="store_false",
                      default=None, help="turn the compilation cache off")
  parser.add_argument(f"--{FLAG_DIR}", default=None,
                      help=f"the compilation cache's folder, local or gs:// (default: "
                      f"${ENV_DIR}, else ~/.cache/ernie3-jax/jax_compilation_cache)")


def setup_from_args(args, backend: str | None = None) -> str | None:
  return setup(getattr(args, FLAG_ENABLED), getattr(args, FLAG_DIR), backend)


def _parse_bool(value: str) -> bool:
  lowered = value.strip().lower()
  if lowered in _TRUE:
    return True
  if lowered in _FALSE:
    return False
  import argparse  # pylint: disable=g-import-not-at-top
  raise argparse.ArgumentTypeError(f"--{FLAG_ENABLED}={value!r}: expected true or false")
