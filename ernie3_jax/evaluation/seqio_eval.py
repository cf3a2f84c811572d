"""Evaluating a fine-tuned checkpoint with `seqio.Evaluator`, and test-split submissions.

`evaluate_checkpoint` runs the latest checkpoint of a fine-tuning MODEL_DIR over the
validation split of every task of the configured task or mixture (and over the
labeled AX-b / AX-g files with the RTE head), computes the metric functions
registered on the tasks through `seqio.Evaluator`, and writes them to TensorBoard
(`MODEL_DIR/tensorboard/eval`) and `MODEL_DIR/eval_metrics.json` (rewritten after each
task; "complete" turns true at the end), with every row's prediction in
`MODEL_DIR/eval_predictions/<task>.<split>.jsonl`. An earlier evaluation's files are
removed first.
`infer_checkpoint` predicts the test split and writes one leaderboard file per task
through `submission.write_submission` (AX-b and AX-g through the RTE head). Both read
every row of every split they use before the model loads (a bad row anywhere is an
error naming its file and line; an empty split one naming its file).

Predictions follow `superglue_metrics`: a classification row's prediction is its
vector of class log-probabilities (the metrics take the argmax); a candidate row's
(COPA, ReCoRD) is its score for being the right candidate, log p(1) − log p(0). The
per-row files (`prediction_lines`) name each row by its official idx and each candidate
row by its text, and mark the candidate chosen, as the zero-shot per-row files do.

`seqio.Evaluator` measures every declared feature's length along its first axis, so
a task that declares scalar features (`label`, `group`) cannot be given to it as is.
It is evaluated through a view: a copy of the task (same metrics and postprocess_fn)
whose source is the task's own preprocessed split and which declares only the
rank-1 features; the scalars still pass through to `postprocess_fn`'s `example`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import logging
import flax.linen as nn
import gin
import jax
import numpy as np

from ernie3_jax.runtime import tf_runtime  # noqa: F401  (first: hides GPUs from TensorFlow)
import seqio

from ernie3_jax.runtime import storage
from ernie3_jax.runtime.tf_runtime import tf
from ernie3_jax.training import checkpoint_files, checkpointing, finetune, loop_hooks
from ernie3_jax.training import partitioning
from ernie3_jax.training.finetune_input import pad_or_truncate

CANDIDATE_TASKS = ("superglue_copa", "superglue_record")
# Tasks without training data that are predicted with another task's head.
DIAGNOSTIC_HEADS = {"superglue_axb": "superglue_rte", "superglue_axg": "superglue_rte"}
VIEW_PREFIX = "_eval_view_"


class EvalFeatureConverter(seqio.FeatureConverter):
  """input_ids / segment_ids zero-padded to the evaluation length; idx passed along."""

  TASK_FEATURES = {"input_ids": seqio.FeatureConverter.FeatureSpec(tf.int32),
                   "segment_ids": seqio.FeatureConverter.FeatureSpec(tf.int32),
                   "idx": seqio.FeatureConverter.FeatureSpec(tf.int32)}
  MODEL_FEATURES = TASK_FEATURES
  PACKING_FEATURE_DTYPES = None

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    length = task_feature_lengths["input_ids"]
    return ds.map(lambda ex: {"input_ids": pad_or_truncate(ex["input_ids"], length),
                              "segment_ids": pad_or_truncate(ex["segment_ids"], length),
                              "idx": ex["idx"]})

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    return task_feature_lengths


@contextlib.contextmanager
def evaluation_view(task: seqio.Task, split: str, sequence_length: int) -> Iterator[str]:
  """Registers (and afterwards removes) the view of `task` that seqio.Evaluator can
  measure (see the module docstring); yields its registered name."""
  lengths = {"input_ids": sequence_length, "segment_ids": sequence_length}

  def source_fn(split, shuffle_files, seed=None):  # pylint: disable=redefined-outer-name
    del shuffle_files, seed
    return task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1,
                            use_cached=False)

  name = VIEW_PREFIX + task.name
  view = task.replace(name=name, source=seqio.FunctionDataSource(source_fn, splits=[split]),
                      preprocessors=[],
                      output_features={k: v for k, v in task.output_features.items()
                                       if v.rank >= 1})
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add_provider(name, view)
  try:
    yield name
  finally:
    seqio.TaskRegistry.remove(name)


class Predictor:
  """Batched, sharded forward passes of a fine-tuned model (no dropout)."""

  def __init__(self, setup: finetune.FinetuneSetup, params: Any, batch_size: int):
    self.setup, self.params, self.batch_size = setup, params, batch_size
    self.rows = partitioning.batch_sharding(setup.mesh, setup.rules)
    self._fn = _log_probs_fn(setup.model, setup.layout, setup.mesh)

  def log_probs(self, examples: Sequence[Mapping[str, np.ndarray]], task_index: int,
                length: int) -> np.ndarray:
    """[N, max classes] log-probabilities of `examples` over task `task_index`'s head."""
    out = []
    n, p = jax.process_count(), jax.process_index()
    for start in range(0, len(examples), self.batch_size):
      chunk = examples[start:start + self.batch_size]
      batch = {"input_ids": np.zeros((self.batch_size, length), np.int32),
               "segment_ids": np.zeros((self.batch_size, length), np.int32),
               "task_index": np.full((self.batch_size,), task_index, np.int32)}
      for i, ex in enumerate(chunk):
        for key in ("input_ids", "segment_ids"):
          values = np.asarray(ex[key])[:length]
          batch[key][i, :len(values)] = values
      # Every process walks the same rows and hands over its share of the batch.
      share = self.batch_size // n
      local = {k: v[p * share:(p + 1) * share] for k, v in batch.items()}
      with self.setup.mesh, nn.logical_axis_rules(self.setup.rules):
        result = self._fn(self.params, partitioning.to_global_batch(local, self.rows))
      out.append(np.asarray(jax.device_get(result))[:len(chunk)])
    width = max(self.setup.layout.num_classes)
    return np.concatenate(out) if out else np.zeros((0, width), np.float32)


@functools.lru_cache(maxsize=8)
def _log_probs_fn(model, layout, mesh) -> Callable:
  """One jitted forward pass per (model, heads, mesh): evaluation and inference in one
  process share its compilations."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(lambda p, b: finetune.classify_log_probs(model, p, b, layout),
                 out_shardings=replicated)


def row_predictions(log_probs: np.ndarray, num_classes: int, candidate: bool) -> np.ndarray:
  """Per-row predictions in the metrics' convention (see the module docstring)."""
  if candidate:
    return (log_probs[:, 1] - log_probs[:, 0])[:, None]
  return log_probs[:, :num_classes]


BEST_DIR = "best_checkpoint"  # in MODEL_DIR, beside checkpoints/ (finetune.eval_every)


def checkpoint_source(model_dir: str, checkpoint: str) -> tuple[str, str]:
  """(checkpoint directory, 'best' or 'latest') that `checkpoint` names in a fine-tuning
  MODEL_DIR: 'best' is MODEL_DIR/best_checkpoint when training kept one (finetune.eval_every),
  else the latest; 'latest' is always MODEL_DIR/checkpoints."""
  if checkpoint not in ("best", "latest"):
    raise ValueError(f"checkpoint={checkpoint!r} (evaluate_checkpoint.checkpoint / "
                     "infer_checkpoint.checkpoint); expected 'best' or 'latest'")
  best = os.path.join(model_dir, BEST_DIR)
  if checkpoint == "best" and storage.isdir(best) and checkpoint_files.complete_steps(best):
    return best, "best"
  return os.path.join(model_dir, "checkpoints"), "latest"


def load_finetuned(model_dir: str, batch_size: int, checkpoint: str = "latest"
                   ) -> tuple[finetune.FinetuneSetup, Predictor, int]:
  """(setup, predictor, step) of a fine-tuning model_dir's best or latest checkpoint
  (`checkpoint_source`). Only the parameters are read, verified against their checksums
  like every restore; the step read is printed."""
  setup = finetune.finetune_setup()
  row_shards = setup.mesh.shape["data"] * setup.mesh.shape["fsdp"]
  if batch_size % (row_shards * jax.process_count()):
    raise ValueError(f"seqio_evaluate/infer batch_size={batch_size} must be divisible by "
                     f"data x fsdp = {row_shards} and the process count")
  abstract, shardings = partitioning.state_shardings(setup.model, setup.tx, setup.mesh,
                                                     setup.rules, 0)
  directory, which = checkpoint_source(model_dir, checkpoint)
  if not storage.isdir(directory) or not checkpoint_files.complete_steps(directory):
    raise FileNotFoundError(f"no checkpoint in {directory}; fine-tune first (--run_mode=train "
                            "with the same MODEL_DIR)")
  ckpt = checkpointing.Checkpointer(directory, 0, async_save=False)
  try:
    step = ckpt.latest_step()
    params = ckpt.restore_params(step, abstract.params, shardings.params)
  finally:
    ckpt.close()
  if jax.process_index() == 0:
    why = (" (the best by finetune.best_metric; checkpoint='latest' reads the last)"
           if which == "best" else "")
    print(f"reading the {which} checkpoint, step {step}{why}: {directory}", flush=True)
  return setup, Predictor(setup, params, batch_size), step


def _head_of(setup: finetune.FinetuneSetup, task_name: str) -> tuple[int, int] | None:
  """(task index, classes) of the head that predicts `task_name`, or None."""
  head = task_name if task_name in setup.layout.task_names else DIAGNOSTIC_HEADS.get(task_name)
  if head not in setup.layout.task_names:
    return None
  i = setup.layout.index(head)
  return i, setup.layout.num_classes[i]


def _scalar(value: Any) -> float:
  value = getattr(value, "value", value)  # seqio.metrics.Scalar
  return float(np.asarray(value))


PREDICTIONS_DIR = "eval_predictions"  # per-row predictions, beside eval_metrics.json


def _evaluate_task(task: seqio.Task, split: str, predictor: Predictor, head: tuple[int, int],
                   candidate: bool, sequence_length: int, step: int,
                   predictions_path: str | None = None) -> dict[str, float]:
  """The metric functions of `task` on `split`, computed by seqio.Evaluator; with
  `predictions_path`, every row's idx and prediction (full precision) go there too."""
  index, classes = head
  predicted: dict[int, np.ndarray] = {}

  def predict_fn(dataset):
    pairs = list(dataset.as_numpy_iterator())
    scores = row_predictions(
        predictor.log_probs([ex for _, ex in pairs], index, sequence_length), classes,
        candidate)
    predicted.update((int(i), s) for (i, _), s in zip(pairs, scores))
    return [(int(i), s) for (i, _), s in zip(pairs, scores)]

  with evaluation_view(task, split, sequence_length) as view:
    evaluator = seqio.Evaluator(view, EvalFeatureConverter(pack=False), eval_split=split,
                                sequence_length={"input_ids": sequence_length,
                                                 "segment_ids": sequence_length},
                                target_field_name="idx", async_compute_metrics=False)
    try:
      metrics, _ = evaluator.evaluate(compute_metrics=True, step=step, predict_fn=predict_fn)
      if predictions_path is not None and jax.process_index() == 0:
        # The rows predicted, in the order of their indices (seqio's cached copy).
        rows = list(evaluator.cached_task_datasets[view].as_numpy_iterator())
        storage.write_atomic(predictions_path, "".join(
            json.dumps(line) + "\n"
            for line in prediction_lines(task.name, rows, predicted, candidate)))
      return {k: _scalar(v) for k, v in metrics.result()[view].items()}
    finally:
      evaluator.close()


def prediction_lines(task_name: str, rows: Sequence[Mapping[str, Any]],
                     predicted: Mapping[int, np.ndarray], candidate: bool
                     ) -> list[dict[str, Any]]:
  """The eval_predictions file of a task: one line per row, in row order, with "idx" (as
  the official file writes it: `sources.official_idx`) and "prediction" (full precision).
  Candidate rows (COPA, ReCoRD) add the fields the zero-shot per-row files carry: "group",
  "candidate_index", "candidate" (the choice's or entity's text) and "chosen" (the group's
  best-scoring row, the first on ties: the answer the metrics score)."""
  # pylint: disable-next=g-import-not-at-top
  from ernie3_jax.superglue import sources
  # pylint: disable-next=g-import-not-at-top
  from ernie3_jax.tasks import superglue
  lines = []
  for i, row in enumerate(rows):
    if i not in predicted:
      continue
    idx = (sources.official_idx(task_name, row["idx"]) if task_name in superglue.TASK_NAMES
           else np.asarray(row["idx"]).tolist())
    line = {"idx": idx, "prediction": np.asarray(predicted[i], np.float64).tolist()}
    if candidate:
      line.update(group=int(row["group"]), candidate_index=int(row["candidate_index"]),
                  candidate=_text(row["candidate"]), chosen=False)
    lines.append(line)
  if candidate:
    best: dict[int, dict[str, Any]] = {}
    for line in lines:
      group = line["group"]
      if group not in best or line["prediction"][0] > best[group]["prediction"][0]:
        best[group] = line
    for line in best.values():
      line["chosen"] = True
  return lines


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _all_labeled(task: seqio.Task, split: str, sequence_length: int) -> bool:
  ds = task.get_dataset({"input_ids": sequence_length, "segment_ids": sequence_length},
                        split=split, shuffle=False, num_epochs=1, use_cached=False)
  return all(int(ex["label"]) >= 0 for ex in ds.as_numpy_iterator())


@gin.configurable(denylist=["model_dir"])
def evaluate_checkpoint(model_dir: str, *, split: str = "validation", batch_size: int = 32,
                        sequence_length: int = 128,
                        candidate_tasks: Sequence[str] = CANDIDATE_TASKS,
                        diagnostics: Sequence[str] = tuple(DIAGNOSTIC_HEADS),
                        checkpoint: str = "best") -> dict[str, Any]:
  """Metrics of the best checkpoint (`checkpoint_source`; 'latest': the last) on `split`
  of every task with metric functions, plus the `diagnostics` (AX-b, AX-g: labeled test
  files) when their head was trained.

  Returns {"step", "checkpoint", "split", "tasks": {task: {metric: value}}, and
  "superglue_average" when all 8 main SuperGLUE tasks were scored}.
  """
  # A failed evaluation must not leave an earlier run's files looking like this one's.
  _remove_stale(model_dir)
  setup = finetune.finetune_setup()
  plan = _plan(setup, split, sequence_length, diagnostics)  # checked before model work
  _, predictor, step = load_finetuned(model_dir, batch_size, checkpoint)
  out: dict[str, Any] = {"step": step, "checkpoint": checkpoint_source(model_dir, checkpoint)[1],
                         "split": split, "tasks": {}, "complete": False,
                         "skipped": plan.skipped}
  directory = os.path.join(model_dir, PREDICTIONS_DIR)
  if jax.process_index() == 0:
    storage.makedirs(directory)
  for task, task_split, head in plan.runs:
    path = os.path.join(directory, f"{task.name}.{task_split}.jsonl")
    out["tasks"][task.name] = _evaluate_task(task, task_split, predictor, head,
                                             task.name in candidate_tasks, sequence_length,
                                             step, path)
    _write_json(model_dir, out)  # each task's metrics are kept as soon as they exist
  average = _superglue_average(out["tasks"])
  if average is not None:
    out["superglue_average"] = average
  out["complete"] = True
  _write_metrics(model_dir, out)
  return out


@dataclasses.dataclass
class _Plan:
  runs: list  # (task, split, head)
  skipped: dict[str, str]  # optional task -> why it was not evaluated


def _plan(setup: finetune.FinetuneSetup, split: str, sequence_length: int,
          diagnostics: Sequence[str]) -> _Plan:
  """The tasks and splits to evaluate. A task of the mixture whose split is missing or
  empty is an error naming its file; a diagnostic without labeled rows is skipped and
  counted."""
  plan = _Plan([], {})
  lengths = {"input_ids": sequence_length, "segment_ids": sequence_length}
  for task in seqio.get_subtasks(seqio.get_mixture_or_task(setup.name)):
    head = _head_of(setup, task.name)
    if head is None or split not in task.splits or not task.metric_objs:
      continue
    if not _count_rows(task, split, lengths):
      raise ValueError(f"{task.name}: the {split!r} split is empty "
                       f"({_source_file(task.name, split)}); nothing to evaluate")
    plan.runs.append((task, split, head))
  if not plan.runs:
    raise ValueError(f"no task of {setup.name!r} has a {split!r} split with metrics")
  evaluated = {t.name for t, _, _ in plan.runs}
  for name in diagnostics:
    head = _head_of(setup, name)
    if name in evaluated or head is None or name not in seqio.TaskRegistry.names():
      continue
    task = seqio.get_mixture_or_task(name)
    if "test" not in task.splits or not task.metric_objs:
      continue
    try:
      labeled = _count_rows(task, "test", lengths) > 0 and _all_labeled(task, "test",
                                                                        sequence_length)
    except FileNotFoundError as e:
      plan.skipped[name] = str(e)
      continue
    if labeled:
      plan.runs.append((task, "test", head))
    else:
      plan.skipped[name] = f"its test split ({_source_file(name, 'test')}) has no labeled rows"
  return plan


def _count_rows(task: seqio.Task, split: str, lengths: Mapping[str, int]) -> int:
  """The rows of `split`, every one read before any model work. A SuperGLUE task's file is
  read and formatted in full (no tokenising), so a bad row anywhere in it is an error
  naming its file and line; another task's rows go through its own pipeline."""
  from ernie3_jax.tasks import superglue  # pylint: disable=g-import-not-at-top
  if task.name in superglue.TASK_NAMES:
    return superglue.check_split(task.name, split)
  ds = task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1, use_cached=False)
  return sum(1 for _ in ds.as_numpy_iterator())


def _source_file(task_name: str, split: str) -> str:
  """Where a SuperGLUE split is read from, for error messages."""
  # pylint: disable-next=g-import-not-at-top
  from ernie3_jax.superglue import sources
  source = sources.superglue_source()
  if storage.isdir(source):
    return sources.split_path(task_name.removeprefix("superglue_"), split, source)
  return f"source {source!r}"


def _remove_stale(model_dir: str) -> None:
  if jax.process_index() > 0:
    return
  stale = os.path.join(model_dir, "eval_metrics.json")
  if storage.exists(stale):
    storage.remove(stale)
  storage.rmtree(os.path.join(model_dir, PREDICTIONS_DIR))


def _write_json(model_dir: str, out: Mapping[str, Any]) -> None:
  if jax.process_index() > 0:
    return
  storage.write_atomic(os.path.join(model_dir, "eval_metrics.json"), json.dumps(out, indent=1))


def _superglue_average(results: Mapping[str, Mapping[str, float]]) -> float | None:
  from ernie3_jax.superglue import metrics as superglue_metrics  # pylint: disable=g-import-not-at-top
  main = {f"superglue_{t}" for t in superglue_metrics.SCORE_METRICS}
  if not main <= set(results):
    return None
  return superglue_metrics.superglue_average({k: results[k] for k in main})


def _write_metrics(model_dir: str, out: Mapping[str, Any]) -> None:
  if jax.process_index() > 0:
    return
  writer = loop_hooks.metric_writer(model_dir, os.path.join("tensorboard", "eval"),
                                    just_logging=False)
  scalars = {f"{out['split']}/{task}/{name}": value
             for task, values in out["tasks"].items() for name, value in values.items()}
  if "superglue_average" in out:
    scalars[f"{out['split']}/superglue_average"] = out["superglue_average"]
  writer.write_scalars(int(out["step"]), scalars)
  writer.flush()
  _write_json(model_dir, out)


def _default_writer():
  from ernie3_jax.superglue import submission  # pylint: disable=g-import-not-at-top
  return submission.write_submission


@gin.configurable(denylist=["model_dir"])
def infer_checkpoint(model_dir: str, *, split: str = "test", batch_size: int = 32,
                     sequence_length: int = 128, output_dir: str | None = None,
                     candidate_tasks: Sequence[str] = CANDIDATE_TASKS,
                     diagnostics: Sequence[str] = tuple(DIAGNOSTIC_HEADS),
                     write_fn: Callable | None = None,
                     checkpoint: str = "best") -> dict[str, str]:
  """Predicts `split` of every task (and the diagnostics whose head was trained) and
  writes each task's file with `write_fn(task, rows, predictions, out_dir)` (default:
  `submission.write_submission`) into `output_dir` (default MODEL_DIR/submission).
  Every row of every split is read before the model loads: a bad row is an error naming
  its file and line, and a missing or empty split an error naming its file (a
  submission without that task's file would be incomplete).

  `checkpoint`: 'best' (`checkpoint_source`) or 'latest'.

  Returns {task: path written}."""
  runs = _infer_plan(finetune.finetune_setup(), split, sequence_length, diagnostics)
  _, predictor, step = load_finetuned(model_dir, batch_size, checkpoint)
  write_fn = write_fn or _default_writer()
  output_dir = output_dir or os.path.join(model_dir, "submission")
  written = {}
  lengths = {"input_ids": sequence_length, "segment_ids": sequence_length}
  for task, head in runs:
    name = task.name
    rows = list(task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1,
                                 use_cached=False).as_numpy_iterator())
    index, classes = head
    predictions = row_predictions(predictor.log_probs(rows, index, sequence_length), classes,
                                  name in candidate_tasks)
    if jax.process_index() == 0:
      written[name] = write_fn(name, rows, list(predictions), output_dir)
      logging.info("%s: %d rows predicted with the checkpoint of step %d -> %s", name,
                   len(rows), step, written[name])
  return written


def _infer_plan(setup: finetune.FinetuneSetup, split: str, sequence_length: int,
                diagnostics: Sequence[str]) -> list:
  """(task, head) of every task `infer_checkpoint` predicts, each split's rows checked."""
  names = [t.name for t in seqio.get_subtasks(seqio.get_mixture_or_task(setup.name))]
  names += [d for d in diagnostics if d not in names and d in seqio.TaskRegistry.names()]
  lengths = {"input_ids": sequence_length, "segment_ids": sequence_length}
  runs = []
  for name in names:
    task = seqio.get_mixture_or_task(name)
    head = _head_of(setup, name)
    if head is None or split not in task.splits:
      continue
    if not _count_rows(task, split, lengths):
      raise ValueError(f"{name}: the {split!r} split is empty ({_source_file(name, split)}); "
                       "the submission would lack this task's file")
    runs.append((task, head))
  if not runs:
    raise ValueError(f"no task of {setup.name!r} has a {split!r} split to predict")
  return runs


def mixture_score(results: Mapping[str, Mapping[str, float]]) -> float:
  """One figure for a task or mixture: the SuperGLUE average (each main task's metrics
  averaged, then the tasks) over the main SuperGLUE tasks present; with none of them,
  the mean over tasks of each task's mean metric."""
  from ernie3_jax.superglue import metrics as superglue_metrics  # pylint: disable=g-import-not-at-top
  main = {k: v for k, v in results.items()
          if k.removeprefix("superglue_") in superglue_metrics.SCORE_METRICS}
  if main:
    return superglue_metrics.superglue_average(main, partial=True)
  return float(np.mean([np.mean(list(v.values())) for v in results.values()]))


class ValidationEvaluator:
  """The validation metrics of fine-tuning parameters, for `finetune.eval_every`: every
  task of the mixture with metric functions, scored through seqio.Evaluator as
  `evaluate_checkpoint` does (no per-row files), plus their `mixture_score` as "average".

  Every row of every validation split is read when it is built, before training starts.
  A call returns {"<task>/<metric>": value, ..., "average": value}.
  """

  def __init__(self, setup: finetune.FinetuneSetup, batch_size: int, sequence_length: int,
               candidate_tasks: Sequence[str] = CANDIDATE_TASKS):
    row_shards = setup.mesh.shape["data"] * setup.mesh.shape["fsdp"]
    if batch_size % (row_shards * jax.process_count()):
      raise ValueError(f"finetune.eval_batch_size={batch_size} must be divisible by data x "
                       f"fsdp = {row_shards} and the process count {jax.process_count()}")
    self.setup, self.batch_size, self.sequence_length = setup, batch_size, sequence_length
    self.candidate_tasks = tuple(candidate_tasks)
    self.plan = _plan(setup, "validation", sequence_length, diagnostics=())

  def metric_names(self) -> list[str]:
    """What `best_metric` may name before the first evaluation: "average" and each task's
    metric prefix ("<task>/"), the metric names themselves come with the first call."""
    return ["average"] + [f"{task.name}/" for task, _, _ in self.plan.runs]

  def __call__(self, params: Any, step: int) -> dict[str, float]:
    predictor = Predictor(self.setup, params, self.batch_size)
    results = {}
    for task, split, head in self.plan.runs:
      results[task.name] = _evaluate_task(task, split, predictor, head,
                                          task.name in self.candidate_tasks,
                                          self.sequence_length, step)
    figures = {f"{task}/{name}": value for task, values in results.items()
               for name, value in values.items()}
    figures["average"] = mixture_score(results)
    return figures
