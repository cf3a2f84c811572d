"""Reading a run's checkpoints from disk, without a checkpoint manager.

Which steps are complete, the shapes a checkpoint holds (from its metadata alone, so a
config can be checked against it before anything is written), and a parameters-only copy
into another model (fine-tuning's and evaluation's warm start). `checkpointing.Checkpointer`
writes, verifies and restores whole train states; its errors are defined here because
these readers raise them too.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ernie3_jax.training.checkpoint_integrity import array_name
from ernie3_jax.runtime import storage

ITEMS = ("state", "data", "integrity")  # the items of every saved step

# Two orbax warnings about one item of a step (`<step>/state`) that say nothing to a user:
# - read with a bare PyTreeCheckpointer, orbax looks for `_CHECKPOINT_METADATA` inside the
#   item and warns "Metadata file does not exist" at every read (twice per restore:
#   metadata, then arrays). The file belongs to the step and is there, one level up.
# - an item whose `_METADATA` is gone gets "Failed to get item metadata from directory";
#   the checkpoint is then rejected with this project's own report, which names the file.
# Only these are dropped (from absl's logger, whichever program reads the checkpoint).
_ITEM_METADATA_PROBE = re.compile(
    r"^(?:Metadata file does not exist: .*/(?:{items})/_CHECKPOINT_METADATA"
    r"|Failed to get item metadata from directory .*/(?:{items})\. Either it was not present)"
    .format(items="|".join(ITEMS)))


class _DropItemMetadataProbe(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return not _ITEM_METADATA_PROBE.match(record.getMessage())


def _drop_item_metadata_probes() -> None:
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  logger = absl_logging.get_absl_logger()
  if not any(isinstance(f, _DropItemMetadataProbe) for f in logger.filters):
    logger.addFilter(_DropItemMetadataProbe())


_drop_item_metadata_probes()


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


_ARRAY_PATH = re.compile(r"""['"]path['"]:\s*['"]((?:params|opt_state|memory|step)[^'"/]*)/?['"]""")


def read_failure(error: BaseException) -> str:
  """Why a checkpoint's arrays could not be read, naming the array: orbax's own message
  for a damaged array file names only a slice and a TensorStore object, while the array
  (a key path like `params.nlu.stack...`) and the cause sit in the dump and in the error's
  cause."""
  texts, seen = [], error
  while seen is not None and len(texts) < 8:
    texts.append(str(seen))
    seen = seen.__cause__ or seen.__context__
  found = next((m.group(1) for t in texts for m in [_ARRAY_PATH.search(t)] if m), None)
  if found is None:
    found = next((m.group(1).split("/")[0] for t in texts
                  for m in [re.search(r'Error reading "([^"]+)"', t)] if m), None)
  if found is None:
    return f"{type(error).__name__}: {first_line(error)}"
  head, *rest = found.split(".")
  name = head + "".join(f"[{part!r}]" for part in rest)
  cause = next((first_line(RuntimeError(t)) for t in texts[1:] if t.strip()), first_line(error))
  return f"the array {name}: {cause}"


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
    gone = not storage.exists(os.path.join(item_dir, "_METADATA"))
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
  root = os.path.join(path, "checkpoints") if storage.isdir(
      os.path.join(path, "checkpoints")) else path
  if not storage.isdir(root):
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
  path, latest = latest_checkpoint_dir(source)
  if step is not None and step != latest:
    path = os.path.join(os.path.dirname(os.path.dirname(path)), str(step), "state")
    if not storage.isdir(path):
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
