"""Orbax checkpoints of the train state and the data pipeline's position.

Saves are asynchronous (training continues while arrays are written) and atomic:
orbax writes into a temporary directory and renames it when complete, so a crash
mid-save leaves the previous checkpoint as the latest complete one. Restores take
the *current* mesh's shardings, so a checkpoint written on one mesh restores onto
another.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointSaveError(OSError):
  """Writing a checkpoint failed (unwritable directory, full disk); names the directory."""


class CheckpointMismatchError(ValueError):
  """A checkpoint's arrays do not fit the model being built; names them and their shapes."""


def _key_name(key_path) -> str:
  """"params['embedder']['token']['embedding']" for dict, attribute and index keys alike
  (a saved tree has dicts where the live state has dataclasses and named tuples)."""
  parts = []
  for entry in key_path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        value = getattr(entry, attr)
        break
    else:
      value = str(entry)
    parts.append(f"[{value}]" if isinstance(value, int) else f"[{str(value)!r}]")
  if parts and parts[0].startswith("['"):
    parts[0] = parts[0][2:-2]  # the top-level field reads as a name: params[...]
  return "".join(parts)


def saved_shapes(item_dir: str) -> dict[str, tuple[int, ...]]:
  """{array name: shape} of a saved PyTree item, from its metadata only (no array reads)."""
  meta = ocp.PyTreeCheckpointer().metadata(item_dir)
  meta = getattr(meta, "item_metadata", meta)
  meta = getattr(meta, "tree", meta)
  return {_key_name(k): tuple(getattr(v, "shape", ()) or ())
          for k, v in jax.tree_util.tree_flatten_with_path(meta)[0]}


def shape_mismatches(saved: dict[str, tuple[int, ...]], expected: Any,
                     prefix: str = "") -> list[str]:
  """Arrays of `expected` (a PyTree of shaped leaves) whose name is under `prefix` and
  that are missing from `saved` or shaped differently; plus saved arrays the model lacks."""
  want = {_key_name(k): tuple(v.shape)
          for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
  want = {k: v for k, v in want.items() if k.startswith(prefix)}
  have = {k: v for k, v in saved.items() if k.startswith(prefix)}

  def order(names):  # parameters first: they name the config field that differs
    return sorted(names, key=lambda k: (not k.startswith("params"), k))

  problems = [f"{k} has shape {have[k]} in the checkpoint but {want[k]} in this model"
              for k in order(want) if k in have and have[k] != want[k]]
  problems += [f"{k} {want[k]} is missing from the checkpoint" for k in order(want)
               if k not in have]
  problems += [f"{k} {have[k]} is in the checkpoint but not in this model" for k in order(have)
               if k not in want]
  return problems


def summarize_mismatches(problems: list[str], limit: int = 8) -> str:
  """The first `limit` problems and how many more there are."""
  more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
  return "; ".join(problems[:limit]) + more


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
    self._started: int | None = None  # step of the latest save begun

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
    """Saves when `step` is a multiple of save_every (or `force`). Returns whether it did."""
    if not force and (self.save_every <= 0 or step % self.save_every):
      return False
    if step in self.manager.all_steps():
      return False
    # An earlier asynchronous save's error surfaces here, so it names that step.
    with self._save_errors(self._started):
      self.manager.check_for_errors()
    with self._save_errors(step):
      saved = self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
    self._started = step
    return saved

  @contextlib.contextmanager
  def _save_errors(self, step: int | None):
    """Turns a failed (possibly earlier, asynchronous) save into an error that names the
    directory and the checkpoint that is still intact."""
    try:
      yield
    except Exception as e:  # orbax re-raises background write errors of any type
      if isinstance(e, CheckpointSaveError):
        raise
      what = f"of step {step} " if step is not None else ""
      try:
        self.manager.reload()  # the failed step must not count as saved
        intact = self.manager.latest_step()
      except Exception:  # pylint: disable=broad-except
        intact = None
      kept = (f"the checkpoint of step {intact} there is intact" if intact is not None
              else "no complete checkpoint was written there yet")
      raise CheckpointSaveError(
          f"saving the checkpoint {what}into {self.directory!r} failed ({type(e).__name__}: "
          f"{e}); {kept}. Check that the directory is writable and its disk has space.") from e

  def restore(self, step: int, abstract_state: Any, shardings: Any) -> tuple[Any, dict]:
    """Restores `step` onto `shardings` (any mesh) -> (state, data_state)."""
    state_dir = os.path.join(self.directory, str(step), "state")
    if os.path.isdir(state_dir):
      problems = shape_mismatches(saved_shapes(state_dir), abstract_state)
      if problems:
        raise CheckpointMismatchError(
            f"the checkpoint of step {step} in {self.directory!r} was written by a different "
            f"model or train config: {summarize_mismatches(problems)}. Use the config it was "
            "written with (MODEL_DIR/config.gin), or a new MODEL_DIR.")
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
        shardings)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def wait(self) -> None:
    with self._save_errors(self._started):
      self.manager.wait_until_finished()

  def close(self) -> None:
    with self._save_errors(self._started):
      self.manager.wait_until_finished()
    self.manager.close()


def latest_checkpoint_dir(path: str) -> tuple[str, int]:
  """(directory of the latest complete checkpoint's state item, its step) under `path`,
  which is a MODEL_DIR or its checkpoints/ directory."""
  root = os.path.join(path, "checkpoints") if os.path.isdir(
      os.path.join(path, "checkpoints")) else path
  if not os.path.isdir(root):
    raise FileNotFoundError(f"no checkpoint directory at {path!r}")
  # A lookup of this process alone. A manager over every process would open with a
  # cross-process barrier; the trainer looks before process 0's own manager creates
  # checkpoints/, and a slower process that finds the new directory would then wait at
  # a barrier the others never reach.
  this_process = jax.process_index()
  local = ocp.options.MultiprocessingOptions(primary_host=this_process,
                                             active_processes={this_process})
  manager = ocp.CheckpointManager(
      root, options=ocp.CheckpointManagerOptions(read_only=True,
                                                 multiprocessing_options=local),
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
  if not meta or "params" not in meta:
    raise FileNotFoundError(f"{path} (step {step}, the latest checkpoint of {source!r}) has no "
                            "readable parameters; the save may have been interrupted or the "
                            "directory was altered")
  only = {"params": meta["params"]}
  args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), only)
  loaded = ckptr.restore(path, args=ocp.args.PyTreeRestore(
      item=only, restore_args=args, partial_restore=True))["params"]
  flat_src = {jax.tree_util.keystr(k): v for k, v in
              jax.tree_util.tree_flatten_with_path(loaded)[0]}
  restored, fresh, mismatched = [], [], []

  def take(key_path, target, sharding):
    key = jax.tree_util.keystr(key_path)
    if key not in flat_src:
      fresh.append(key)
      return target
    value = flat_src[key]
    if value.shape != target.shape:
      mismatched.append(f"parameter {key} has shape {value.shape} in the checkpoint but "
                        f"{target.shape} in this model")
      return target
    restored.append(key)
    return jax.device_put(value.astype(target.dtype), sharding)

  new = jax.tree_util.tree_map_with_path(take, params, shardings)
  if mismatched:
    # Every mismatch at once: a config differs in one field, which shows in many arrays.
    raise CheckpointMismatchError(
        f"the checkpoint of step {step} at {source!r} was written by a different model "
        f"config: {summarize_mismatches(mismatched)}")
  unused = sorted(set(flat_src) - set(restored))
  return new, {"step": step, "restored": len(restored), "fresh": fresh, "unused": unused}
