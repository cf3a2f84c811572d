"""Orbax checkpoints of the train state and the data pipeline's position.

Saves are asynchronous (training continues while arrays are written) and atomic:
orbax writes into a temporary directory and renames it when complete, so a crash
mid-save leaves the previous checkpoint as the latest complete one. Restores take
the *current* mesh's shardings, so a checkpoint written on one mesh restores onto
another.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """CheckpointManager for {"state": TrainState, "data": JSON data-pipeline state}."""

  def __init__(self, directory: str, save_every: int, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.save_every = save_every
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=1, create=True,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
    """Saves when `step` is a multiple of save_every (or `force`). Returns whether it did."""
    if not force and (self.save_every <= 0 or step % self.save_every):
      return False
    if step in self.manager.all_steps():
      return False
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

  def restore(self, step: int, abstract_state: Any, shardings: Any) -> tuple[Any, dict]:
    """Restores `step` onto `shardings` (any mesh) -> (state, data_state)."""
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
        shardings)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
