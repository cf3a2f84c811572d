"""One classification head per fine-tuning task, packed into `Ernie3.classify`'s output.

`Ernie3.classify` has one dense layer of `num_labels` outputs on the pooled [CLS]
feature. For a mixture, each task owns a disjoint slice of those outputs (CB
columns 0-2, RTE columns 3-4, ...), and a row's softmax runs over its own task's
slice only. That is exactly one linear head per task: a row never produces a
gradient for another task's columns, and a task's labels never compete with
another task's (BoolQ "True" and COPA "this candidate" mean different things, so
a shared head with class masks would tie unrelated label semantics to one weight
vector). Packing the heads keeps the model and its checkpoint layout unchanged:
the head is `classifier` with `num_labels` = the sum of the tasks' class counts.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
NEG_INF = -1e9


@dataclasses.dataclass(frozen=True)
class HeadLayout:
  """Each task's slice [offset, offset + num_classes) of the packed classifier."""

  task_names: tuple[str, ...]
  num_classes: tuple[int, ...]

  def __post_init__(self):
    if len(self.task_names) != len(self.num_classes) or not self.task_names:
      raise ValueError(f"HeadLayout needs one class count per task, got {self.task_names} "
                       f"and {self.num_classes}")
    for name, n in zip(self.task_names, self.num_classes):
      if n < 2:
        raise ValueError(f"task {name!r} has {n} classes; classification needs at least 2")

  @classmethod
  def for_tasks(cls, task_names: Sequence[str], num_classes: Mapping[str, int]) -> "HeadLayout":
    missing = [t for t in task_names if t not in num_classes]
    if missing:
      raise ValueError(f"no class count for tasks {missing}: add them to "
                       "finetune.num_classes (or tasks.superglue.NUM_CLASSES)")
    return cls(tuple(task_names), tuple(int(num_classes[t]) for t in task_names))

  @property
  def offsets(self) -> tuple[int, ...]:
    return tuple(int(x) for x in np.cumsum((0,) + self.num_classes[:-1]))

  @property
  def total(self) -> int:
    """`Ernie3Config.num_labels` of the packed heads."""
    return int(sum(self.num_classes))

  def index(self, task_name: str) -> int:
    return self.task_names.index(task_name)

  def task_log_probs(self, logits: Array, task_index: Array) -> Array:
    """[B, total] logits -> [B, max classes] log-probabilities over each row's own head.

    Column c of row b is class c of the row's task; columns past its class count
    are −inf-like (never predicted, never a target).
    """
    width = max(self.num_classes)
    offsets = jnp.asarray(self.offsets, jnp.int32)[task_index]
    counts = jnp.asarray(self.num_classes, jnp.int32)[task_index]
    cols = offsets[:, None] + jnp.arange(width)[None, :]
    own = jnp.take_along_axis(logits.astype(jnp.float32),
                              jnp.minimum(cols, self.total - 1), axis=-1)
    own = jnp.where(jnp.arange(width)[None, :] < counts[:, None], own, NEG_INF)
    return jax.nn.log_softmax(own, axis=-1)
