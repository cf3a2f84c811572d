"""The one place the package imports TensorFlow.

TensorFlow is only used for input pipelines; it must never take accelerator memory
that JAX needs, so every module imports `tf` from here, which hides GPUs from it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")

__all__ = ["tf"]
