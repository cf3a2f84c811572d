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
import time
from typing import Any

import gin
import jax
import orbax.checkpoint as ocp

from ernie3_jax.parallel import multihost
from ernie3_jax.training import checkpoint_integrity
from ernie3_jax.training.checkpoint_files import (  # noqa: F401  errors re-exported
    ITEMS, CheckpointCorruptError, CheckpointMismatchError, CheckpointSaveError,
    NonFiniteStateError, first_line, read_failure, saved_shapes, shape_mismatches,
    summarize_mismatches)
from ernie3_jax.training.checkpoint_integrity import array_name
from ernie3_jax.runtime import storage

DATA_VERSION = 2  # {"version", "per_process": [each process's data-pipeline state]}
REJECTED_DIR = "rejected_checkpoints"  # beside checkpoints/, in MODEL_DIR
TMP_MARKER = ".orbax-checkpoint-tmp"  # orbax writes a save here, then renames it


@gin.configurable(allowlist=["accept_unverified"])
class Checkpointer:
  """CheckpointManager for one run's checkpoints: {"state": TrainState, "data": every
  process's data-pipeline state, "integrity": the state's checksums}.

  `save` refuses a non-finite state and gathers the data positions of all processes
  (each process's input position is its own); `restore` verifies what it read against
  the checksums saved with it; `restore_latest` falls back past checkpoints that fail.
  Every checkpoint this project writes has its checksums, so one without them is damaged
  and rejected like any other; `Checkpointer.accept_unverified = True` (gin) restores
  checkpoints from before checksums existed, unverified, with a warning for each.
  """

  def __init__(self, directory: str, save_every: int, keep: int = 3, async_save: bool = True,
               accept_unverified: bool = False):
    self.directory = storage.resolve(directory, "checkpoint directory")
    self.accept_unverified = accept_unverified
    self.save_every = save_every
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=1, create=True,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
    self._started: int | None = None  # step of the latest save begun

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
    """Saves when `step` is a multiple of save_every (or `force`). Returns whether it did.

    A collective: every process calls it at every step, with its own `data_state`.
    Raises CheckpointSaveError naming the step whose write failed (this one, or an
    earlier asynchronous one) and NonFiniteStateError for a state that must not be kept.
    """
    if not force and (self.save_every <= 0 or step % self.save_every):
      return False
    if step in self.manager.all_steps():
      return False
    # The previous asynchronous save finishes first, so its error names its own step.
    self.wait()
    integrity = checkpoint_integrity.record(state)
    if integrity["nonfinite"]:
      raise NonFiniteStateError(
          f"the train state of step {step} holds non-finite values in "
          f"{summarize_mismatches(integrity['nonfinite'], 5)}; it was not saved, and "
          f"{self._intact_note()}")
    data = {"version": DATA_VERSION, "per_process": multihost.allgather_json(data_state)}
    with self._save_errors(step):
      saved = self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
          integrity=ocp.args.JsonSave(integrity)), force=True)
    self._started = step
    return saved

  def poll(self) -> None:
    """Raises CheckpointSaveError if an asynchronous save has failed (never waits)."""
    with self._save_errors(self._started):
      self.manager.check_for_errors()

  def _intact_note(self) -> str:
    try:
      self.manager.reload()  # a failed step must not count as saved
      intact = self.manager.latest_step()
    except Exception:  # pylint: disable=broad-except
      intact = None
    return (f"the checkpoint of step {intact} there is intact" if intact is not None
            else "no complete checkpoint was written there yet")

  def _remove_partial(self, step: int, settle_seconds: float = 2.0) -> list[str]:
    """Deletes the temporary directories of the failed save of `step` (process 0).

    Writers of that save other than the one that failed may still be finishing in the
    background and recreate a directory, so the removal repeats until none reappears
    for `settle_seconds`.
    """
    removed: list[str] = []
    if jax.process_index() != 0 or not storage.isdir(self.directory):
      return removed
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < settle_seconds:
      found = [n for n in storage.listdir(self.directory)
               if n.startswith(f"{step}.") and TMP_MARKER in n]
      for name in found:
        storage.rmtree(os.path.join(self.directory, name))
        removed.append(name)
      if found:
        quiet_since = time.monotonic()
      time.sleep(0.1)
    return sorted(set(removed))

  @contextlib.contextmanager
  def _save_errors(self, step: int | None):
    """Turns a failed (possibly earlier, asynchronous) save into an error that names the
    step, the directory and the checkpoint that is still intact, after removing the
    failed save's partial files."""
    try:
      yield
    except Exception as e:  # orbax re-raises background write errors of any type
      if isinstance(e, (CheckpointSaveError, NonFiniteStateError)):
        raise
      what = f"of step {step} " if step is not None else ""
      removed = self._remove_partial(step) if step is not None else []
      cleaned = f"; its partial files were removed ({', '.join(removed)})" if removed else ""
      raise CheckpointSaveError(
          f"saving the checkpoint {what}into {self.directory!r} failed "
          f"({type(e).__name__}: {first_line(e)}){cleaned}; {self._intact_note()}. Check that "
          "the directory is writable and its disk has space.") from e

  def restore(self, step: int, abstract_state: Any, shardings: Any) -> tuple[Any, list[dict]]:
    """Restores `step` onto `shardings` (any mesh) -> (state, every process's data state).

    Raises CheckpointMismatchError when the checkpoint was written by another model or
    train config, and CheckpointCorruptError when it cannot be read, does not match its
    checksums, or holds non-finite values.
    """
    step_dir = os.path.join(self.directory, str(step))
    problems = shape_mismatches(saved_shapes(os.path.join(step_dir, "state"), step),
                                abstract_state)
    if problems:
      raise CheckpointMismatchError(
          f"the checkpoint of step {step} in {self.directory!r} was written by a different "
          f"model or train config: {summarize_mismatches(problems)}. Use the config it was "
          "written with (MODEL_DIR/config.gin), or a new MODEL_DIR.")
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
        shardings)
    verified = self._has_checksums(step, step_dir)
    items = dict(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
    if verified:
      items["integrity"] = ocp.args.JsonRestore()
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointCorruptError(step, step_dir,
                                   f"it cannot be read ({read_failure(e)})"
                                   ) from e
    state = restored["state"]
    now = checkpoint_integrity.record(state)
    if verified:
      bad = checkpoint_integrity.differences(restored["integrity"], now)
      if bad:
        raise CheckpointCorruptError(step, step_dir, "its arrays differ from the checksums "
                                     f"saved with them: {summarize_mismatches(bad, 5)}")
    if now["nonfinite"]:
      raise CheckpointCorruptError(step, step_dir, "it holds non-finite values in "
                                   f"{summarize_mismatches(now['nonfinite'], 5)}")
    data = restored["data"]
    per_process = data["per_process"] if isinstance(data, dict) and "per_process" in data else [
        data]  # written before data states were gathered: process 0's alone
    return state, per_process

  def restore_params(self, step: int, abstract_params: Any, shardings: Any) -> Any:
    """Only the parameters of `step`, onto `shardings` (any mesh): what inference needs.

    The optimizer state (twice the parameters' bytes under Adam) and the recurrence memory
    are never read. The same checks as `restore`, on the parameters: shapes against the
    model, checksums, finiteness.
    """
    step_dir = os.path.join(self.directory, str(step))
    item_dir = os.path.join(step_dir, "state")
    problems = shape_mismatches(saved_shapes(item_dir, step), {"params": abstract_params},
                                prefix="params")
    if problems:
      raise CheckpointMismatchError(
          f"the parameters of step {step} in {self.directory!r} do not fit this model: "
          f"{summarize_mismatches(problems)}. Use the config the run was trained with "
          "(MODEL_DIR/config.gin).")
    verified = self._has_checksums(step, step_dir)
    try:
      # A partial restore: the arrays outside `item` (optimizer state, memory) are not read.
      # Arrays come back in the dtype they were saved in (their checksums are of those
      # bytes), then are cast to the model's (e.g. float32 training -> bfloat16 serving).
      meta = ocp.PyTreeCheckpointer().metadata(item_dir)
      meta = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
      saved_dtypes = {array_name(k): getattr(v, "dtype", None)
                      for k, v in jax.tree_util.tree_flatten_with_path(meta)[0]}
      item = {"params": abstract_params}
      item = jax.tree_util.tree_map_with_path(
          lambda k, a: jax.ShapeDtypeStruct(a.shape, saved_dtypes.get(array_name(k)) or a.dtype),
          item)
      item["params"] = jax.tree_util.tree_map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), item["params"],
          shardings)
      with ocp.PyTreeCheckpointer() as reader:
        restored = reader.restore(item_dir, args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True))
      if verified:
        items = dict(integrity=ocp.args.JsonRestore())
        record = self.manager.restore(step, args=ocp.args.Composite(**items))["integrity"]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointCorruptError(step, step_dir,
                                   f"it cannot be read ({read_failure(e)})"
                                   ) from e
    params = restored["params"]
    now = checkpoint_integrity.record({"params": params})
    if verified:
      saved = dict(record)
      saved["arrays"] = {k: v for k, v in saved.get("arrays", {}).items()
                         if k.startswith("params")}
      bad = checkpoint_integrity.differences(saved, now)
      if bad:
        raise CheckpointCorruptError(step, step_dir, "its parameters differ from the "
                                     f"checksums saved with them: {summarize_mismatches(bad, 5)}")
    if now["nonfinite"]:
      raise CheckpointCorruptError(step, step_dir, "it holds non-finite parameters in "
                                   f"{summarize_mismatches(now['nonfinite'], 5)}")
    return jax.tree_util.tree_map(lambda x, a: x if x.dtype == a.dtype else x.astype(a.dtype),
                                  params, abstract_params)

  def _has_checksums(self, step: int, step_dir: str) -> bool:
    """Whether `step` has its checksums; without them, an error unless accepted."""
    if storage.isdir(os.path.join(step_dir, "integrity")):
      return True
    if not self.accept_unverified:
      raise CheckpointCorruptError(
          step, step_dir, "its integrity/ record (the per-array checksums saved with every "
          "checkpoint) is missing, so its arrays cannot be verified; for a checkpoint "
          "written before checksums existed, set Checkpointer.accept_unverified=True")
    print(f"warning: restoring the checkpoint of step {step} ({step_dir}) UNVERIFIED: it has "
          "no integrity/ record and Checkpointer.accept_unverified=True", flush=True)
    return False

  def restore_latest(self, abstract_state: Any, shardings: Any, allow_fallback: bool = True
                     ) -> tuple[Any, list[dict], int] | None:
    """(state, data states, step) of the newest checkpoint that verifies, or None if
    there is none. Every process restores the same step.

    A checkpoint that fails (see `restore`) is reported; with `allow_fallback` the
    next older one is tried, and once one verifies the failed ones are moved to
    MODEL_DIR/rejected_checkpoints (never deleted). When none verifies, or without
    `allow_fallback`, CheckpointCorruptError is raised and nothing is moved.
    """
    steps = multihost.from_process_zero(sorted(self.manager.all_steps(), reverse=True))
    seen = multihost.allgather_json(sorted(self.manager.all_steps()))
    for index, view in enumerate(seen):
      if missing := sorted(set(steps) - set(view)):
        raise FileNotFoundError(
            f"process {index} does not see the checkpoints of steps {missing} in "
            f"{self.directory!r} that process 0 sees; MODEL_DIR must be on a filesystem "
            "that every process shares")
    failed: list[CheckpointCorruptError] = []
    for step in steps:
      error = None
      try:
        state, data = self.restore(step, abstract_state, shardings)
      except CheckpointCorruptError as e:
        error = e
      # Every process must take the same branch: a read can fail on one process only.
      reasons = multihost.allgather_json(None if error is None else error.reason)
      reason = next((r for r in reasons if r is not None), None)
      if reason is None:
        for bad in failed:
          moved = self._reject(bad)
          print(f"{bad} Moved to {moved}; restored the checkpoint of step {step} instead.",
                flush=True)
        return state, data, step
      bad = error or CheckpointCorruptError(step, os.path.join(self.directory, str(step)),
                                            reason)
      failed.append(bad)
      if not allow_fallback:
        raise CheckpointCorruptError(
            bad.step, bad.path, f"{bad.reason}. train.allow_fallback=False: not falling back "
            "to an older checkpoint; nothing was moved")
    if failed:
      raise CheckpointCorruptError(
          failed[0].step, failed[0].path,
          f"{failed[0].reason}; and no older checkpoint verifies either ("
          + "; ".join(f"step {e.step}: {e.reason}" for e in failed[1:]) + "). "
          "Nothing was moved: copy them elsewhere before starting this MODEL_DIR afresh")
    return None

  def _reject(self, error: "CheckpointCorruptError") -> str:
    """Moves a checkpoint that failed verification out of the manager's sight."""
    rejected = os.path.join(os.path.dirname(self.directory), REJECTED_DIR)
    target = os.path.join(rejected, str(error.step))
    if storage.exists(target):
      target += time.strftime(".%Y%m%d-%H%M%S")
    if jax.process_index() == 0:
      storage.makedirs(rejected)
      storage.rename(error.path, target)
      storage.write_atomic(os.path.join(target, "REJECTED.txt"), str(error) + "\n")
    multihost.barrier(f"ernie3_jax_reject_{error.step}")
    self.manager.reload()
    return target

  def wait(self) -> None:
    with self._save_errors(self._started):
      self.manager.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.manager.close()
