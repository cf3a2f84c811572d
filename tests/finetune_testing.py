"""A small seqio classification task with the SuperGLUE row features, for fine-tuning tests.

Rows are `[CLS] a b [SEP] c [SEP]` over a 96-token vocabulary; the label is a fixed
function of the first content token (its value mod NUM_CLASSES), so a model can
learn it. The test split is unlabeled (label −1), as in SuperGLUE.
"""

from __future__ import annotations

from ernie3_jax.runtime import tf_runtime  # noqa: F401  (first: hides GPUs from TensorFlow)
import numpy as np
import seqio

from ernie3_jax.runtime.tf_runtime import tf

TASK = "finetune_fixture_cls"
TASK_B = "finetune_fixture_pair"
MIXTURE = "finetune_fixture_mix"
NUM_CLASSES = {TASK: 3, TASK_B: 2}
LABEL_NAMES = {TASK: ["a", "b", "c"], TASK_B: ["no", "yes"]}
CLS, SEP = 2, 3
SIZES = {"train": 24, "validation": 12, "test": 6}


def _feature(dtype, rank):
  return seqio.Feature(seqio.PassThroughVocabulary(size=0), add_eos=False, required=True,
                       dtype=dtype, rank=rank)


FEATURES = {"input_ids": _feature(tf.int32, 1), "segment_ids": _feature(tf.int32, 1),
            "label": _feature(tf.int32, 0), "group": _feature(tf.int32, 0),
            "idx": _feature(tf.int32, 1)}


def rows(task: str, split: str) -> list[dict[str, np.ndarray]]:
  """The split's rows, deterministic per (task, split); lengths vary from 6 to 11."""
  rng = np.random.RandomState([len(task), list(SIZES).index(split)])
  out = []
  for i in range(SIZES[split]):
    a = rng.randint(6, 96, size=rng.randint(2, 5))
    b = rng.randint(6, 96, size=rng.randint(1, 5))
    ids = np.concatenate([[CLS], a, [SEP], b, [SEP]]).astype(np.int32)
    segs = np.concatenate([np.zeros(len(a) + 2), np.ones(len(b) + 1)]).astype(np.int32)
    label = int(a[0]) % NUM_CLASSES[task] if split != "test" else -1
    out.append({"input_ids": ids, "segment_ids": segs, "label": np.int32(label),
                "group": np.int32(i), "idx": np.array([i, -1, -1], np.int32)})
  return out


def _source(task):
  def fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    data = rows(task, split)
    return tf.data.Dataset.from_generator(
        lambda: iter(data), output_signature={
            "input_ids": tf.TensorSpec([None], tf.int32),
            "segment_ids": tf.TensorSpec([None], tf.int32),
            "label": tf.TensorSpec([], tf.int32), "group": tf.TensorSpec([], tf.int32),
            "idx": tf.TensorSpec([3], tf.int32)})
  return seqio.FunctionDataSource(fn, splits=list(SIZES))


def register() -> None:
  """Registers the two fixture tasks and their mixture (idempotent)."""
  if TASK in seqio.TaskRegistry.names():
    return
  for task in (TASK, TASK_B):
    seqio.TaskRegistry.add(task, _source(task), output_features=FEATURES)
  seqio.MixtureRegistry.add(MIXTURE, [(TASK, 2.0), (TASK_B, 1.0)])
