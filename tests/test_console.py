"""What a user reads: no library noise in a run's output, user errors in one line."""

import os
import re
import subprocess
import sys

import pytest

from ernie3_jax.cli import console
from ernie3_jax.runtime import tf_runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every line a user used to read as failure (issue list: CUDA probe, oneDNN, seqio and
# orbax warnings, TensorFlow's import notices, NaN losses of absent tasks).
NOISE = re.compile("|".join([tf_runtime.IMPORT_NOTICES.pattern,
                             console.HARMLESS_WARNINGS.pattern,
                             r"cuInit|CUDA error|=nan|\bnan\b|Traceback"]))


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _main(*flags, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "ernie3_jax.cli.main", *flags], cwd=cwd,
                        env=_env(), capture_output=True, timeout=900)


def test_tensorflow_wrapped_errors_are_named_by_their_inner_error():
  import tensorflow as tf
  wrapped = tf.errors.InvalidArgumentError(None, None, (
      "ValueError: /data/kg.tsv:31: expected 3 tab-separated fields\nTraceback (most recent "
      "call last):\n  File ...\nValueError: /data/kg.tsv:31: expected 3 tab-separated fields"
      "\n\t [[{{node PyFunc}}]]"))
  assert console.error_line(wrapped) == ("error: ValueError: /data/kg.tsv:31: expected 3 "
                                         "tab-separated fields")
  assert console.is_user_error(wrapped)
  assert console.is_user_error(FileNotFoundError("x")) and not console.is_user_error(
      TypeError("a bug"))


def test_the_error_line_drops_the_notes_gin_appends():
  import gin

  @gin.configurable
  def fails_inside_gin():
    raise ValueError("train.num_steps=0 must be positive")

  with pytest.raises(ValueError) as raised:
    fails_inside_gin()
  assert "In call to configurable" in str(raised.value)  # what gin does
  assert console.error_line(raised.value) == (
      "error: ValueError: train.num_steps=0 must be positive")


def test_a_bad_input_line_ends_the_run_in_one_short_message(tmp_path):
  kg = tmp_path / "kg.tsv"
  kg.write_text("A\tborn_in\tB\nOnly\ttwo\n")
  flags = ["--gin_file=gin_configs/experiments/demo.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
           f"--gin.DataConfig.kg='{kg}'"]
  # Run from elsewhere than the checkout, as an installed user does: gin looks for the
  # includes in several places before its search paths find them.
  out = _main(*flags, cwd=tmp_path)
  err = out.stderr.decode()
  assert out.returncode == 1
  lines = err.splitlines()
  assert lines[-2].startswith(f"error: KnowledgeGraphError: {kg}:2: expected 3 tab-separated")
  assert lines[-1] == "(--verbosity=1 shows the traceback)"
  assert "Traceback" not in err and "In call to configurable" not in err
  assert "Path not found" not in err and len(err.splitlines()) <= 3, err
  assert not (tmp_path / "run").exists()
  verbose = _main(*flags, "--verbosity=1").stderr.decode()
  assert "Traceback" in verbose and f"{kg}:2:" in verbose


@pytest.mark.slow  # a short demo run, then its evaluation: about two minutes
def test_a_demo_run_and_its_evaluation_print_no_library_noise(tmp_path):
  common = ["--gin_file=gin_configs/experiments/demo.gin", f"--gin.MODEL_DIR='{tmp_path}'"]
  train = _main(*common, "--gin.train.num_steps=2", "--gin.train.log_every=1",
                "--gin.train.progress_bar=False")
  evaluate = _main(*common, "--run_mode=eval", "--gin.evaluate.num_batches=1")
  for run in (train, evaluate):
    text = run.stdout.decode() + run.stderr.decode()
    assert run.returncode == 0, text[-3000:]
    noisy = [line for line in text.splitlines() if NOISE.search(line)]
    assert not noisy, noisy
  assert "step 2:" in train.stdout.decode() and "evaluation:" in evaluate.stdout.decode()
