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


def latest_checkpoint_dir(path: str) -> tuple[str, int]:
  """(directory of the latest complete checkpoint's state item, its step) under `path`,
  which is a MODEL_DIR or its checkpoints/ directory."""
  root = os.path.join(path, "checkpoints") if os.path.isdir(
      os.path.join(path, "checkpoints")) else path
  if not os.path.isdir(root):
    raise FileNotFoundError(f"no checkpoint directory at {path!r}")
  manager = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(read_only=True),
                                  item_names=("state", "data"))
  step = manager.latest_step()
  manager.close()
  if step is None:
    raise FileNotFoundError(f"{root!r} holds no complete checkpoint")
  return os.path.join(root, str(step), "state"), step


def restore_params_into(params: Any, shardings: Any, source: str) -> tuple[Any, dict]:
  """Copies the parameters of `source`'s latest checkpoint into `params`.

  Only parameters are read (not optimizer state or memory). A parameter present in
  both must have the same shape (else an error names it); parameters only in
  `params` (e.g. fresh fine-tuning heads) keep their initial values; both kinds
  are counted in the returned report.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  path, step = latest_checkpoint_dir(source)
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  meta = getattr(meta, "tree", meta)
  only = {"params": meta["params"]}
  args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), only)
  loaded = ckptr.restore(path, args=ocp.args.PyTreeRestore(
      item=only, restore_args=args, partial_restore=True))["params"]
  flat_src = {jax.tree_util.keystr(k): v for k, v in
              jax.tree_util.tree_flatten_with_path(loaded)[0]}
  restored, fresh = [], []

  def take(key_path, target, sharding):
    key = jax.tree_util.keystr(key_path)
    if key not in flat_src:
      fresh.append(key)
      return target
    value = flat_src[key]
    if value.shape != target.shape:
      raise ValueError(f"parameter {key} has shape {value.shape} in the checkpoint of step "
                       f"{step} at {source!r} but {target.shape} in this model")
    restored.append(key)
    return jax.device_put(value.astype(target.dtype), sharding)

  new = jax.tree_util.tree_map_with_path(take, params, shardings)
  unused = sorted(set(flat_src) - set(restored))
  return new, {"step": step, "restored": len(restored), "fresh": fresh, "unused": unused}
