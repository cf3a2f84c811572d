"""JAX's persistent compilation cache (ernie3_jax/runtime/compilation_cache.py): on by
default for every command, in the folder the user names, off with one flag.

The suite runs with the cache off (tests/conftest.py); these tests turn it on for
themselves only: in subprocesses, or in this process with every JAX setting restored.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from ernie3_jax.runtime import compilation_cache as cc
from tests import training_testing as tt
from tests.conftest import REPO_ROOT


# ------------------------------------------------------------------ settings and folders


def test_default_folder_is_the_users_cache_folder_unless_the_environment_names_one():
  assert cc.default_dir({"HOME": "/h"}).startswith(os.path.expanduser("~"))
  assert cc.default_dir({"XDG_CACHE_HOME": "/x"}) == "/x/ernie3-jax/jax_compilation_cache"
  assert cc.default_dir({"XDG_CACHE_HOME": "/x", "JAX_COMPILATION_CACHE_DIR": "/j"}) == "/j"
  assert cc.default_dir({"JAX_COMPILATION_CACHE_DIR": "/j", cc.ENV_DIR: "/e"}) == "/e"


def test_on_by_default_and_off_through_the_environment():
  assert cc.default_enabled({}) is True
  assert cc.default_enabled({cc.ENV_ENABLED: "1"}) is True
  for off in ("0", "false", "OFF", "no"):
    assert cc.default_enabled({cc.ENV_ENABLED: off}) is False
  with pytest.raises(cc.CompilationCacheError, match=cc.ENV_ENABLED):
    cc.default_enabled({cc.ENV_ENABLED: "maybe"})


def test_a_folder_that_cannot_be_one_is_refused_naming_the_flag(tmp_path):
  with pytest.raises(cc.CompilationCacheError, match="--compilation_cache_dir: empty"):
    cc.resolve_dir("  ")
  with pytest.raises(cc.CompilationCacheError, match="--compilation_cache_dir='gs:/b/c'"):
    cc.resolve_dir("gs:/b/c")
  a_file = tmp_path / "f"
  a_file.write_text("")
  with pytest.raises(cc.CompilationCacheError, match="is a file, not a folder"):
    cc.resolve_dir(str(a_file))
  assert cc.resolve_dir("gs://bucket/cache/") == "gs://bucket/cache"
  assert cc.resolve_dir(str(tmp_path / "new")) == str(tmp_path / "new")


def test_each_cpu_model_gets_its_own_sub_folder():
  x86 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
         "cpu MHz\t\t: 2000.0\nflags\t\t: fpu sse2 avx2 fma\n")
  # Another core of the same machine, another clock: the same programs apply.
  same = x86.replace("2000.0", "3100.5") + "processor\t: 1\nflags\t\t: fpu\n"
  # One instruction-set extension more: programs compiled for it may not run elsewhere.
  wider = x86.replace("fma", "fma avx512f")
  assert cc._cpu_fingerprint(x86) == cc._cpu_fingerprint(same)
  assert cc._cpu_fingerprint(x86) != cc._cpu_fingerprint(wider)
  assert re.fullmatch(r"cpu-\w+-[0-9a-f]{12}", cc.host_tag("cpu"))
  assert cc.host_tag("cpu") == cc.host_tag("cpu")
  # GPU and TPU keys already carry the platform version and device kinds.
  assert cc.host_tag("gpu") == "gpu"


# ------------------------------------------------------------------ in this process


@pytest.fixture(name="restored_jax_cache_settings")
def fixture_restored_jax_cache_settings():
  """The test may turn the cache on in this process; every setting is put back."""
  import jax
  from jax._src import compilation_cache as jax_cache
  names = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
           "jax_persistent_cache_min_compile_time_secs")
  saved = {n: getattr(jax.config, n) for n in names}
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  jax_cache.reset_cache()


def _cache_hits():
  """A counter of JAX's persistent-cache hits while the returned list is alive."""
  import jax
  hits = []

  def listener(event, **_):
    if event == "/jax/compilation_cache/cache_hits":
      hits.append(event)

  jax.monitoring.register_event_listener(listener)
  return hits, listener


def test_setup_caches_even_a_sub_second_program_and_loads_it_back(
    tmp_path, restored_jax_cache_settings):
  import jax
  import jax.numpy as jnp
  folder = cc.setup(True, str(tmp_path / "cache"))
  assert folder == str(tmp_path / "cache" / cc.host_tag(jax.default_backend()))

  def affine(x):
    return x * 3.0 + 1.0

  x = jnp.arange(5.0)
  first = jax.jit(affine)(x)
  entries = os.listdir(folder)
  assert [e for e in entries if e.startswith("jit_affine-") and e.endswith("-cache")], entries
  jax.clear_caches()  # only the persistent cache can answer now
  hits, listener = _cache_hits()
  try:
    again = jax.jit(affine)(x)
  finally:
    from jax._src import monitoring
    monitoring.unregister_event_listener(listener)
  assert hits, "the second compilation of the same program did not load it from the cache"
  np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
  assert sorted(os.listdir(folder)) == sorted(entries)  # nothing new written


def test_off_writes_nothing(tmp_path, restored_jax_cache_settings):
  import jax
  import jax.numpy as jnp
  assert cc.setup(False, str(tmp_path / "cache")) is None
  jax.jit(lambda x: x - 7.0)(jnp.arange(3.0))
  assert not (tmp_path / "cache").exists()


def test_the_commands_refuse_a_bad_folder_naming_the_flag(capsys):
  from ernie3_jax.inference import generate
  assert generate.main(["generate", "--compilation_cache_dir=gs:/bucket", "--checkpoint=/x",
                        "--prompt=a"]) == 1
  assert "--compilation_cache_dir='gs:/bucket'" in capsys.readouterr().err
  from ernie3_jax.evaluation import zero_shot_command
  with pytest.raises(cc.CompilationCacheError, match="--compilation_cache_dir: empty"):
    zero_shot_command.main(["--model_dir=/x", "--compilation_cache_dir="])


# ------------------------------------------------------------------ the CLI, end to end


def _cli(model_dir, *flags):
  bindings = ["import tests.synthetic_input"] + tt.TINY_BINDINGS + [
      f"model_dir.path = '{model_dir}'", "train.input_builder = @SyntheticInput",
      "train.num_steps = 2", "train.nlu_batch_size = 8", "train.nlg_batch_size = 4",
      "train.sequence_length = 16", "train.nlg_segment_length = 8", "train.log_every = 1",
      "train.checkpoint_every = 2", "train.progress_bar = False"]
  return ([sys.executable, "-m", "ernie3_jax.cli.main", "--gin_file=gin_configs/runs/pretrain.gin"]
          + [f"--gin_bindings={b}" for b in bindings] + list(flags))


def _run(command, xdg, **env):
  full = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", XDG_CACHE_HOME=str(xdg),
              XLA_FLAGS="--xla_force_host_platform_device_count=1", **env)
  full.pop(cc.ENV_ENABLED)  # the conftest's "off": these runs see the user's default
  full.pop(cc.ENV_DIR, None)
  full.pop("JAX_COMPILATION_CACHE_DIR", None)
  full["PYTHONPATH"] = REPO_ROOT + os.pathsep + full.get("PYTHONPATH", "")
  done = subprocess.run(command, cwd=REPO_ROOT, env=full, capture_output=True, text=True,
                        timeout=900)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  return done


def _entries(xdg):
  root = os.path.join(xdg, "ernie3-jax", "jax_compilation_cache")
  found = set()
  for folder, _, files in os.walk(root):
    found |= {os.path.join(os.path.relpath(folder, root), f) for f in files}
  return found


_TIMINGS = ("tokens_per_second", "step_seconds", "data_wait_fraction", "mfu")


def _losses(model_dir):
  """Every step's losses, gradient norm and the rest of its history, timings left out."""
  with open(os.path.join(model_dir, "train_history.json")) as f:
    history = json.load(f)["history"]
  assert [h["step"] for h in history] == [1, 2]
  return [{k: v for k, v in h.items() if k not in _TIMINGS} for h in history]


@pytest.mark.slow
def test_the_cli_caches_by_default_and_a_second_run_loads_and_matches_it(tmp_path):
  """Two fresh runs of the same tiny config: the first writes the train step (and the
  small programs around it) under the default folder, the second loads them instead of
  compiling and trains to the same losses, bit for bit."""
  xdg = tmp_path / "xdg"
  _run(_cli(tmp_path / "first"), xdg)
  written = _entries(xdg)
  assert any(re.fullmatch(r"cpu-\w+-[0-9a-f]{12}/jit_step-\w+-cache", e) for e in written), \
      sorted(written)
  second = _run(_cli(tmp_path / "second"), xdg, JAX_LOG_COMPILES="1")
  assert "Persistent compilation cache hit for 'jit_step'" in second.stderr, \
      second.stderr[-3000:]
  assert _entries(xdg) == written  # every program came from the cache
  assert _losses(tmp_path / "second") == _losses(tmp_path / "first")


@pytest.mark.slow
def test_the_cli_flag_turns_the_cache_off(tmp_path):
  xdg = tmp_path / "xdg"
  done = _run(_cli(tmp_path / "run", "--compilation_cache=false"), xdg, JAX_LOG_COMPILES="1")
  assert "step 2:" in done.stdout
  assert "Persistent compilation cache" not in done.stderr
  assert not (xdg / "ernie3-jax").exists()


def test_the_settings_are_documented():
  with open(os.path.join(REPO_ROOT, "docs", "TRAINING.md"), encoding="utf-8") as f:
    training = f.read()
  for name in ("--compilation_cache_dir", "--compilation_cache=false", cc.ENV_ENABLED,
               cc.ENV_DIR, "~/.cache/ernie3-jax/jax_compilation_cache"):
    assert name in training, name
  with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
    assert "compilation cache" in f.read()
