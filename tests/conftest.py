"""Test set-up: 8 simulated CPU devices, TensorFlow kept off accelerators."""

import os
import sys

# Must be set before JAX initialises its backends.
# Low XLA optimisation halves compile time, which dominates these small tests.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# JAX's persistent compilation cache (on by default for every command) stays off in the
# suite, subprocesses included: a test must compile what it runs, whatever ran before it
# or in the user's own runs (tests/test_compilation_cache.py turns it on where it is the
# subject).
os.environ.setdefault("ERNIE3_COMPILATION_CACHE", "0")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)


import itertools  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def vocab():
  """The shipped SentencePiece vocabulary."""
  from ernie3_jax.data.vocabulary import Vocabulary
  return Vocabulary()


@pytest.fixture(scope="session")
def texts():
  """The first 120 articles of the embedded corpus."""
  from ernie3_jax.data.corpus_readers import EMBEDDED_CORPUS, read_documents
  return [d.text for d in itertools.islice(read_documents(EMBEDDED_CORPUS), 120)]


@pytest.fixture(autouse=True)
def _fresh_gin_config():
  """Gin bindings are process-global: no test may leak them into the next one."""
  import gin
  gin.clear_config()
  yield
  gin.clear_config()
