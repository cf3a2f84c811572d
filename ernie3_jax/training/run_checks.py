"""Checks a pre-training run makes before it writes anything to MODEL_DIR.

Each raises with the gin value at fault and its valid range; `train()` runs them all
before the checkpoint directory exists (and `dry_run` stops right after them).
"""

from __future__ import annotations

import math
import os
from typing import Any

from ernie3_jax.model import Ernie3Config
from ernie3_jax.training import checkpoint_files, checkpointing
from ernie3_jax.training.progressive import ProgressiveSchedule
from ernie3_jax.runtime import storage


def check_options(on_nonfinite: str, on_save_error: str,
                  mlm_prediction_fraction: float | None) -> None:
  """The train options that take one of a few values."""
  if on_nonfinite not in ("skip", "stop"):
    raise ValueError(f"train.on_nonfinite={on_nonfinite!r}; expected 'skip' or 'stop'")
  if on_save_error not in ("stop", "continue"):
    raise ValueError(f"train.on_save_error={on_save_error!r}; expected 'stop' or 'continue'")
  if mlm_prediction_fraction is not None and not 0.0 < mlm_prediction_fraction <= 1.0:
    raise ValueError(f"train.mlm_prediction_fraction={mlm_prediction_fraction}; valid range: "
                     "(0, 1], or None for logits at every position")


def check_batch_division(mesh: Any, nlu_batch_size: int, nlg_batch_size: int,
                         num_microbatches: int) -> int:
  """Rows per step split over data x fsdp and the micro-batches; returns that multiple."""
  row_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  for name, size in (("nlu_batch_size", nlu_batch_size), ("nlg_batch_size", nlg_batch_size)):
    if size % (row_shards * num_microbatches):
      raise ValueError(
          f"train.{name}={size} must be divisible by data x fsdp = {row_shards} times "
          f"num_microbatches = {num_microbatches}")
  return row_shards * num_microbatches


def check_data_shards(data: Any, nlu_batch_size: int, nlg_batch_size: int,
                       row_multiple: int) -> int:
  """Global batches split into one equal block per data shard of the input; returns
  the multiple every (progressive) batch size must be."""
  data_shards = getattr(data, "row_multiple", 1)
  for name, size in (("nlu_batch_size", nlu_batch_size), ("nlg_batch_size", nlg_batch_size)):
    if size % data_shards:
      raise ValueError(f"train.{name}={size} must be divisible by the {data_shards} data "
                       "shards of this run (PretrainInput.num_data_shards, or the process "
                       "count of the run's first start)")
  return math.lcm(row_multiple, data_shards)


def check_lengths(sequence_length: int, nlg_segment_length: int, nlg_batch_size: int,
                   progressive: ProgressiveSchedule) -> None:
  """Lengths any model and input can take (the pre-training tasks' own minimums are
  checked in `check_pretrain_input`)."""
  if sequence_length < 1:
    raise ValueError(f"train.sequence_length={sequence_length}; valid range: >= 1")
  if nlg_batch_size and nlg_segment_length < 2:
    raise ValueError(f"train.nlg_segment_length={nlg_segment_length}; valid range: >= 2 "
                     "(a segment needs an input and a next-token target)")
  if progressive.steps > 0 and progressive.start_length < 1:
    raise ValueError(f"ProgressiveSchedule.start_length={progressive.start_length}; valid "
                     "range: >= 1")


def check_pretrain_input(cfg: Ernie3Config, data: Any, shortest: int, longest: int) -> None:
  """For the pre-training input: every task must fit the shortest NLU rows (progressive
  learning starts at `shortest`), and the data's vocabulary must fit the model's
  embedding (ids past it would be clamped silently by the embedding lookup)."""
  from ernie3_jax.training import pretrain_input  # pylint: disable=g-import-not-at-top
  if not isinstance(data, pretrain_input.PretrainInput):
    return
  from ernie3_jax.data import data_config  # pylint: disable=g-import-not-at-top
  config = data_config.current()
  data_config.check_files(config)
  tasks = sorted({name for _, rates in data.stages for name in rates if name != "document_lm"})
  # Parse errors in the inputs (a bad KG or corpus line) surface here, naming file and
  # line, rather than at step 0 after MODEL_DIR was written. Both are cached, so the
  # tasks do not read them again.
  if {"knowledge_masked_lm", "uktp"} & set(tasks):
    data_config.knowledge_graph(config.kg, config.aliases)
  if tasks and not data.use_streams and not data_config.reads_tfds(config):
    data_config.document_count(config)
  need = {t: data_config.min_sequence_length(t, config) for t in tasks}
  minimum = max(need.values(), default=1)
  if longest < minimum:
    raise ValueError(f"train.sequence_length={longest}; valid range: >= {minimum} for the "
                     f"tasks {tasks} (shortest rows each can build: {need})")
  if shortest < minimum:
    raise ValueError(f"ProgressiveSchedule.start_length makes the first rows {shortest} "
                     f"pieces long; valid range: {minimum} to train.sequence_length={longest} "
                     f"for the tasks {tasks} (shortest rows each can build: {need})")
  if "sentence_reordering" in tasks and config.max_reorder_segments > cfg.max_reorder_segments:
    raise ValueError(f"DataConfig.max_reorder_segments={config.max_reorder_segments} makes "
                     f"labels the model's reordering head cannot take "
                     f"(Ernie3Config.max_reorder_segments={cfg.max_reorder_segments}); valid "
                     f"range: 1 to {cfg.max_reorder_segments}")
  from ernie3_jax.data import sentence_distance  # pylint: disable=g-import-not-at-top
  if "sentence_distance" in tasks and cfg.num_distance_classes < sentence_distance.NUM_CLASSES:
    raise ValueError(f"Ernie3Config.num_distance_classes={cfg.num_distance_classes}; the "
                     f"sentence_distance task has {sentence_distance.NUM_CLASSES} labels")
  path = config.vocabulary
  size = data_config.vocabulary(path).vocab_size
  if size > cfg.vocab_size:
    raise ValueError(f"DataConfig.vocabulary={path!r} has {size} pieces but "
                     f"Ernie3Config.vocab_size={cfg.vocab_size}; set Ernie3Config.vocab_size "
                     f"to at least {size}, or use a vocabulary of at most {cfg.vocab_size}")


def check_checkpoints(model_dir: str, init_from: str | None, abstract: Any) -> None:
  """The checkpoint a run would resume from (or, starting fresh, `train.init_from`) must
  fit the model; checked from metadata before anything is written."""
  own = os.path.join(model_dir, "checkpoints")
  steps = checkpoint_files.complete_steps(own) if storage.isdir(own) else []
  # The newest checkpoint whose metadata reads is the one a resume ends up on (restore
  # verifies the arrays and falls back past damaged checkpoints).
  for step in reversed(steps):
    try:
      saved = checkpoint_files.saved_shapes(os.path.join(own, str(step), "state"), step)
    except checkpointing.CheckpointCorruptError:
      continue
    problems = checkpoint_files.shape_mismatches(saved, abstract)
    if problems:
      raise checkpointing.CheckpointMismatchError(
          f"cannot resume from the checkpoint of step {step} in {own!r}: it was written "
          f"by a different model or train config: "
          f"{checkpoint_files.summarize_mismatches(problems)}. Use the config it was written "
          "with (MODEL_DIR/config.gin), or a new MODEL_DIR.")
    return  # resuming: init_from is not used
  if steps:
    return  # every checkpoint is damaged: the restore reports them, naming each
  if init_from:
    try:
      state_dir, step = checkpoint_files.latest_checkpoint_dir(init_from)
    except FileNotFoundError as e:
      raise FileNotFoundError(f"train.init_from={init_from!r}: {e}") from None
    # New parameters (fresh heads) and unused ones are fine; differing shapes are not.
    problems = [p for p in checkpoint_files.shape_mismatches(
        checkpoint_files.saved_shapes(state_dir), {"params": abstract.params}, prefix="params[")
                if " has shape " in p]
    if problems:
      raise checkpointing.CheckpointMismatchError(
          f"train.init_from={init_from!r}: the checkpoint of step {step} was written by a "
          f"different model config: {checkpoint_files.summarize_mismatches(problems)}")
