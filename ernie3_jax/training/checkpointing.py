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
import re
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from ernie3_jax.parallel import multihost
from ernie3_jax.training import checkpoint_integrity
from ernie3_jax.training.checkpoint_integrity import array_name

ITEMS = ("state", "data", "integrity")
DATA_VERSION = 2  # {"version", "per_process": [each process's data-pipeline state]}
REJECTED_DIR = "rejected_checkpoints"  # beside checkpoints/, in MODEL_DIR
TMP_MARKER = ".orbax-checkpoint-tmp"  # orbax writes a save here, then renames it


class CheckpointSaveError(OSError):
  """Writing a checkpoint failed (unwritable directory, full disk); names the step."""


class CheckpointMismatchError(ValueError):
  """A checkpoint's arrays do not fit the model being built; names them and their shapes."""


class NonFiniteStateError(FloatingPointError):
  """The train state holds NaN or Inf, so it must not be saved."""


class CheckpointCorruptError(RuntimeError):
  """A checkpoint cannot be read, does not match its checksums, or is not finite."""

  def __init__(self, step: int, path: str, reason: str):
    self.step, self.path, self.reason = step, path, reason
    super().__init__(f"The checkpoint of step {step} ({path}) failed verification: {reason}.")


def first_line(error: BaseException, limit: int = 400) -> str:
  """The first line of an error's message, shortened to its start and its end (where
  TensorStore and the OS put the cause): the reason without the dump."""
  text = (str(error).strip().splitlines() or [""])[0]
  text = re.sub(r"\s*\[source locations=.*?\]", "", text)
  if len(text) <= limit:
    return text
  return text[:limit // 2 - 3] + " ... " + text[-(limit // 2 - 2):]


def saved_shapes(item_dir: str, step: int | None = None) -> dict[str, tuple[int, ...]]:
  """{array name: shape} of a saved PyTree item, from its metadata only (no array reads).

  With `step` given, metadata that cannot be read (deleted, truncated, emptied) raises
  CheckpointCorruptError for that step, so that it is not taken for another config.
  """
  try:
    meta = ocp.PyTreeCheckpointer().metadata(item_dir)
    meta = getattr(meta, "item_metadata", meta)
    meta = getattr(meta, "tree", meta)
    shapes = {array_name(k): tuple(getattr(v, "shape", ()) or ())
              for k, v in jax.tree_util.tree_flatten_with_path(meta)[0]}
  except Exception as e:  # pylint: disable=broad-except
    if step is None:
      raise
    raise CheckpointCorruptError(step, os.path.dirname(item_dir), "its metadata cannot be "
                                 f"read ({type(e).__name__}: {first_line(e)})") from e
  if not shapes and step is not None:
    gone = not os.path.exists(os.path.join(item_dir, "_METADATA"))
    raise CheckpointCorruptError(step, os.path.dirname(item_dir), "its metadata lists no "
                                 "arrays" + (" (state/_METADATA is missing)" if gone else ""))
  return shapes


def shape_mismatches(saved: dict[str, tuple[int, ...]], expected: Any,
                     prefix: str = "") -> list[str]:
  """Arrays of `expected` (a PyTree of shaped leaves) whose name is under `prefix` and
  that are missing from `saved` or shaped differently; plus saved arrays the model lacks."""
  want = {array_name(k): tuple(v.shape)
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
  """CheckpointManager for one run's checkpoints: {"state": TrainState, "data": every
  process's data-pipeline state, "integrity": the state's checksums}.

  `save` refuses a non-finite state and gathers the data positions of all processes
  (each process's input position is its own); `restore` verifies what it read against
  the checksums saved with it; `restore_latest` falls back past checkpoints that fail.
  """

  def __init__(self, directory: str, save_every: int, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
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
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return removed
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < settle_seconds:
      found = [n for n in os.listdir(self.directory)
               if n.startswith(f"{step}.") and TMP_MARKER in n]
      for name in found:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
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
    verified = os.path.isdir(os.path.join(step_dir, "integrity"))
    items = dict(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
    if verified:
      items["integrity"] = ocp.args.JsonRestore()
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointCorruptError(step, step_dir,
                                   f"it cannot be read ({type(e).__name__}: {first_line(e)})"
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
    verified = os.path.isdir(os.path.join(step_dir, "integrity"))
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
                                   f"it cannot be read ({type(e).__name__}: {first_line(e)})"
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
    if os.path.exists(target):
      target += time.strftime(".%Y%m%d-%H%M%S")
    if jax.process_index() == 0:
      os.makedirs(rejected, exist_ok=True)
      os.rename(error.path, target)
      with open(os.path.join(target, "REJECTED.txt"), "w") as f:
        f.write(str(error) + "\n")
    multihost.barrier(f"ernie3_jax_reject_{error.step}")
    self.manager.reload()
    return target

  def wait(self) -> None:
    with self._save_errors(self._started):
      self.manager.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.manager.close()


def complete_steps(root: str) -> list[int]:
  """Steps of the complete checkpoints under the checkpoint directory `root`, ascending."""
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
      item_names=ITEMS)
  steps = sorted(manager.all_steps())
  manager.close()
  return steps


def latest_checkpoint_dir(path: str) -> tuple[str, int]:
  """(directory of the latest complete checkpoint's state item, its step) under `path`,
  which is a MODEL_DIR or its checkpoints/ directory."""
  root = os.path.join(path, "checkpoints") if os.path.isdir(
      os.path.join(path, "checkpoints")) else path
  if not os.path.isdir(root):
    raise FileNotFoundError(f"no checkpoint directory at {path!r}")
  steps = complete_steps(root)
  if not steps:
    raise FileNotFoundError(f"{root!r} holds no complete checkpoint")
  return os.path.join(root, str(steps[-1]), "state"), steps[-1]


def restore_params_into(params: Any, shardings: Any, source: str,
                        step: int | None = None) -> tuple[Any, dict]:
  """Copies the parameters of `source`'s latest checkpoint (or of `step`) into `params`.

  Only parameters are read (not optimizer state or memory). A parameter present in
  both must have the same shape (else an error names it); parameters only in
  `params` (e.g. fresh fine-tuning heads) keep their initial values; both kinds
  are counted in the returned report.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  path, latest = latest_checkpoint_dir(source)
  if step is not None and step != latest:
    path = os.path.join(os.path.dirname(os.path.dirname(path)), str(step), "state")
    if not os.path.isdir(path):
      raise FileNotFoundError(f"{source!r} has no checkpoint of step {step}")
  step = latest if step is None else step
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
