"""Fine-tuning input: fixed-shape batches of classification rows from a seqio task or mixture.

Every task yields rows with `input_ids` [L], `segment_ids` [L] and a scalar `label`
(−1 when unlabeled). Rows are truncated and zero-padded to one fixed length (so the
step compiles once), tagged with their task's index in the head layout, sampled
across a mixture's tasks by its rates, and batched in tf.data. The position is the
number of batches handed out: the pipeline is deterministic for a seed, so a
restore rebuilds it and skips them.
"""

from __future__ import annotations

import gc
from typing import Sequence

from ernie3_jax.runtime import tf_runtime  # noqa: F401  (first: hides GPUs from TensorFlow)
import numpy as np
import seqio

from ernie3_jax.runtime.tf_runtime import tf
from ernie3_jax.training.pretrain_input import mixture_rates

ROW_KEYS = ("input_ids", "segment_ids", "label", "task_index")


def pad_or_truncate(x: tf.Tensor, length: int) -> tf.Tensor:
  """A rank-1 tensor cut or zero-padded (pad id 0) to exactly `length`."""
  x = x[:length]
  return tf.pad(x, [[0, length - tf.shape(x)[0]]])


def classification_rows(dataset: tf.data.Dataset, sequence_length: int,
                        task_index: int) -> tf.data.Dataset:
  """Task rows -> {input_ids, segment_ids [L], label, task_index} of fixed shape."""

  def convert(ex):
    return {"input_ids": tf.ensure_shape(pad_or_truncate(ex["input_ids"], sequence_length),
                                         [sequence_length]),
            "segment_ids": tf.ensure_shape(pad_or_truncate(ex["segment_ids"], sequence_length),
                                           [sequence_length]),
            "label": tf.cast(ex["label"], tf.int32),
            "task_index": tf.constant(task_index, tf.int32)}

  return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


class FinetuneInput:
  """Per-step numpy batches of one process's rows.

  Args:
    task_names: the tasks in head-layout order (a row's `task_index` is its
      position here).
    rates: {task: sampling rate}; default: the mixture's rates or equal.
    drop_unlabeled: skip rows with label −1 (they carry no training signal).
  """

  def __init__(self, task_names: Sequence[str], *, batch_size: int, sequence_length: int,
               seed: int, shard_index: int = 0, num_shards: int = 1, split: str = "train",
               rates: dict[str, float] | None = None, drop_unlabeled: bool = True):
    self.task_names = list(task_names)
    self.rates = dict(rates) if rates else {name: 1.0 for name in self.task_names}
    unknown = sorted(set(self.rates) - set(self.task_names))
    if unknown:
      raise ValueError(f"rates name tasks {unknown} that are not in {self.task_names}")
    self.batch_size, self.sequence_length = batch_size, sequence_length
    self.seed, self.split, self.drop_unlabeled = seed, split, drop_unlabeled
    self.shard = seqio.ShardInfo(shard_index, num_shards)
    self.step = 0
    self._batches = None

  def _open(self, skip_batches: int) -> None:
    datasets, weights = [], []
    length = {"input_ids": self.sequence_length, "segment_ids": self.sequence_length}
    for index, name in enumerate(self.task_names):
      if self.rates.get(name, 0.0) <= 0:
        continue
      ds = seqio.get_mixture_or_task(name).get_dataset(
          length, split=self.split, shuffle=True, seed=self.seed + index,
          shard_info=self.shard, num_epochs=None, use_cached=False)
      if self.drop_unlabeled:
        ds = ds.filter(lambda ex: ex["label"] >= 0)
      datasets.append(classification_rows(ds, self.sequence_length, index))
      weights.append(self.rates[name])
    if len(datasets) == 1:
      rows = datasets[0]
    else:
      rows = tf.data.Dataset.sample_from_datasets(datasets, weights=weights,
                                                  seed=self.seed + 7)
    batches = rows.batch(self.batch_size, drop_remainder=True).skip(skip_batches)
    self._batches = batches.prefetch(2).as_numpy_iterator()

  def next_batch(self) -> dict[str, np.ndarray]:
    if self._batches is None:
      self._open(self.step)
    batch = next(self._batches)
    self.step += 1
    return {k: batch[k] for k in ROW_KEYS}

  def state(self) -> dict:
    return {"step": self.step}

  def restore(self, states: list[dict]) -> None:
    """Continues from the saved positions of every process (all hold the same step)."""
    self.step = int(states[0]["step"])
    self._batches = None  # reopened (and skipped to `step`) on the next batch

  def close(self) -> None:
    """Releases the tf.data iterator (a live one can hang the interpreter at exit)."""
    self._batches = None
    gc.collect()


def task_rates(mixture_or_task: str) -> dict[str, float]:
  """{task: rate} of a mixture ({task: 1.0} for a task), in a fixed (sorted) order."""
  return dict(sorted(mixture_rates(mixture_or_task).items()))
