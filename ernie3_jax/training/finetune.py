"""Fine-tuning through the NLU path: classification heads on a seqio task or mixture.

`finetune()` is gin-configurable (gin_configs/runs/finetune_superglue.gin). Rows run
through the bidirectional universal + NLU stacks with the FINETUNE task id; each
task of a mixture has its own head (see finetune_heads.py). It shares the
pre-training machinery: the mesh and logical-axis shardings
(`partitioning.state_shardings`), AdamW (`optimizer.py`), orbax checkpoints with
resume (`checkpointing.Checkpointer`), parameter-only initialisation from a
pre-trained checkpoint with fresh heads (`checkpoint_files.restore_params_into`),
and the step logger and hooks of `loop_hooks.py`. Restarting with the same model_dir resumes.

`freeze_universal=True` trains only the task-specific part (NLU module, pooler,
heads), as the paper allows: the embeddings and the universal module get no
optimizer state and their parameters stay bit-identical; their gradients are not
even computed, so a step skips the universal module's backward pass.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ernie3_jax.model import Ernie3, Ernie3Config, task_ids
from ernie3_jax.parallel import mesh as mesh_lib
from ernie3_jax.parallel import multihost
from ernie3_jax.training import checkpoint_files, checkpointing, loop_hooks, optimizer
from ernie3_jax.training import partitioning, profiling
from ernie3_jax.training import train as train_lib
from ernie3_jax.training.finetune_heads import HeadLayout
from ernie3_jax.training.preemption import StopRequest
from ernie3_jax.training.finetune_input import FinetuneInput, task_rates
from ernie3_jax.runtime import storage

# The shared representation: frozen by `freeze_universal`.
UNIVERSAL_MODULES = ("embedder", "universal")


def default_num_classes() -> dict[str, int]:
  """Class counts of the registered SuperGLUE tasks (tasks.superglue.NUM_CLASSES)."""
  try:
    from ernie3_jax.tasks import superglue  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {}
  return dict(superglue.NUM_CLASSES)


def head_layout(mixture_or_task: str, num_classes: Mapping[str, int] | None = None
                ) -> tuple[HeadLayout, dict[str, float]]:
  """(head layout, sampling rates) of a registered task or mixture."""
  rates = task_rates(mixture_or_task)
  counts = dict(default_num_classes())
  counts.update(num_classes or {})
  return HeadLayout.for_tasks(list(rates), counts), rates


def model_config(layout: HeadLayout) -> Ernie3Config:
  """The gin-bound `Ernie3Config` with `num_labels` set to the packed heads' width."""
  cfg = Ernie3Config()
  if cfg.num_labels not in (0, layout.total):
    raise ValueError(
        f"Ernie3Config.num_labels={cfg.num_labels}, but the tasks {list(layout.task_names)} "
        f"need {layout.total} packed head outputs ({list(layout.num_classes)}); leave "
        "Ernie3Config.num_labels unset for fine-tuning")
  return dataclasses.replace(cfg, num_labels=layout.total)


def _top_level_labels(params: Any, frozen: tuple[str, ...]) -> Any:
  return {k: jax.tree_util.tree_map(lambda _, k=k: "frozen" if k in frozen else "train", v)
          for k, v in params.items()}


def make_finetune_optimizer(schedule: optax.Schedule,
                            frozen: tuple[str, ...] = ()) -> optax.GradientTransformation:
  """`optimizer.make_optimizer` for the trainable modules; none for the `frozen` ones."""
  tx = optimizer.make_optimizer(schedule)
  if not frozen:
    return tx
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               lambda params: _top_level_labels(params, frozen))


def classification_sums(log_probs: jax.Array, batch: Mapping[str, jax.Array],
                        layout: HeadLayout) -> dict[str, jax.Array]:
  """Per-task loss/correct/weight sums of one batch (label −1 rows weigh 0)."""
  label = batch["label"]
  weight = (label >= 0).astype(jnp.float32)
  target = jnp.clip(label, 0, log_probs.shape[-1] - 1)
  nll = -jnp.take_along_axis(log_probs, target[:, None], axis=-1)[:, 0]
  correct = (jnp.argmax(log_probs, axis=-1) == target).astype(jnp.float32)
  sums = {}
  for i, name in enumerate(layout.task_names):
    w = weight * (batch["task_index"] == i)
    sums[f"{name}/loss_sum"] = (nll * w).sum()
    sums[f"{name}/correct_sum"] = (correct * w).sum()
    sums[f"{name}/weight"] = w.sum()
  return sums


def classify_log_probs(model: Ernie3, params: Any, batch: Mapping[str, jax.Array],
                       layout: HeadLayout, deterministic: bool = True,
                       rng: jax.Array | None = None) -> jax.Array:
  """[B, max classes] log-probabilities of each row over its own task's head."""
  tid = jnp.full(batch["input_ids"].shape[:1], task_ids.FINETUNE, jnp.int32)
  logits = model.apply({"params": params}, batch["input_ids"], batch["segment_ids"], tid,
                       deterministic, method=Ernie3.classify,
                       rngs=None if deterministic else {"dropout": rng})
  return layout.task_log_probs(logits, batch["task_index"])


def make_finetune_step(model: Ernie3, tx: optax.GradientTransformation, layout: HeadLayout,
                       frozen: tuple[str, ...] = ()) -> Callable:
  """Returns step(state, batch, rng) -> (state, metrics): one AdamW update on the
  mean cross-entropy of the labeled rows; non-finite updates are skipped."""

  def loss_fn(trainable, fixed, batch, rng):
    log_probs = classify_log_probs(model, {**trainable, **fixed}, batch, layout, False, rng)
    sums = classification_sums(log_probs, batch, layout)
    total_weight = sum(sums[f"{n}/weight"] for n in layout.task_names)
    total_nll = sum(sums[f"{n}/loss_sum"] for n in layout.task_names)
    return total_nll / jnp.maximum(total_weight, 1.0), sums

  def step(state, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    trainable = {k: v for k, v in state.params.items() if k not in frozen}
    fixed = {k: v for k, v in state.params.items() if k in frozen}
    (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, fixed, batch,
                                                                    rng)
    grads = {**grads, **jax.tree_util.tree_map(jnp.zeros_like, fixed)}
    grad_norm = optax.global_norm(grads)
    finite = jnp.logical_and(jnp.isfinite(loss), jnp.isfinite(grad_norm))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Frozen modules keep their exact values (x + 0.0 would turn -0.0 into +0.0).
    params = {k: state.params[k] if k in frozen else v for k, v in params.items()}
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new,
                                                   old)
    new_state = state.replace(
        step=state.step + 1, params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        nonfinite_skipped=state.nonfinite_skipped + jnp.logical_not(finite).astype(jnp.int32))
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite}
    for name in layout.task_names:
      w = jnp.maximum(sums[f"{name}/weight"], 1e-8)
      metrics[f"{name}/loss"] = sums[f"{name}/loss_sum"] / w
      metrics[f"{name}/accuracy"] = sums[f"{name}/correct_sum"] / w
      metrics[f"{name}/weight"] = sums[f"{name}/weight"]
    return new_state, metrics

  return step


@dataclasses.dataclass
class FinetuneSetup:
  """What training, evaluation and inference of one fine-tuning config share."""

  name: str  # the seqio task or mixture
  config: Ernie3Config
  model: Ernie3
  layout: HeadLayout
  rates: dict[str, float]
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  frozen: tuple[str, ...]
  mesh: Any
  rules: Any


@gin.configurable(denylist=["schedule"])
def finetune_setup(mixture_or_task: str = gin.REQUIRED, *,
                   num_classes: Mapping[str, int] | None = None,
                   freeze_universal: bool = False, schedule: optax.Schedule | None = None,
                   mesh_fn: Callable = mesh_lib.make_mesh) -> FinetuneSetup:
  """Model, head layout, optimizer and mesh of the fine-tuning config in gin.

  Args:
    mixture_or_task: a registered seqio task or mixture (e.g. 'superglue_rte',
      'superglue').
    num_classes: class counts by task, added to tasks.superglue.NUM_CLASSES.
    freeze_universal: train only the NLU module, pooler and heads.
    schedule: the learning rate when training (`finetune` builds and checks it with
      `optimizer.run_schedule`); None (evaluation, inference) takes the configured
      default, as no step uses it.
  """
  layout, rates = head_layout(mixture_or_task, num_classes)
  cfg = model_config(layout)
  frozen = UNIVERSAL_MODULES if freeze_universal else ()
  if schedule is None:
    schedule = optimizer.learning_rate_schedule()
  return FinetuneSetup(mixture_or_task, cfg, Ernie3(cfg), layout, rates,
                       make_finetune_optimizer(schedule, frozen), schedule, frozen, mesh_fn(),
                       mesh_lib.logical_axis_rules())


def restore_or_init(setup: FinetuneSetup, ckpt: checkpointing.Checkpointer, data: Any,
                    seed: int, init_from: str | None, allow_fallback: bool = True):
  """(state, shardings, resumed step or None): the latest checkpoint in `ckpt` if
  any; else a fresh state whose parameters come from `init_from`'s checkpoint
  where they exist (heads stay fresh)."""
  abstract, shardings = partitioning.state_shardings(setup.model, setup.tx, setup.mesh,
                                                     setup.rules, 0)
  restored = ckpt.restore_latest(abstract, shardings, allow_fallback)
  if restored is not None:
    state, data_states, resumed_from = restored
    data.restore(data_states)
    print(f"resumed from step {resumed_from} ({ckpt.directory})", flush=True)
    return state, shardings, resumed_from
  state, shardings, _ = partitioning.create_train_state(setup.model, setup.tx, setup.mesh,
                                                        setup.rules, 0, seed)
  if init_from:
    params, report = checkpoint_files.restore_params_into(state.params, shardings.params,
                                                       init_from)
    state = state.replace(params=params)
    print(f"initialised {report['restored']} parameters from step {report['step']} of "
          f"{init_from}; fresh: {report['fresh']}", flush=True)
  return state, shardings, None


@gin.configurable(denylist=["model_dir"])
def finetune(model_dir: str, *, batch_size: int = 32, sequence_length: int = 128,
             num_steps: int = 1000, schedule_steps: int | None = None, seed: int = 0,
             init_from: str | None = None,
             log_every: int = 10, checkpoint_every: int = 100, keep_checkpoints: int = 3,
             async_checkpoints: bool = True, allow_fallback: bool = True,
             progress_bar: bool | None = None,
             eval_every: int = 0, eval_batch_size: int | None = None,
             best_metric: str = "average", best_mode: str = "max",
             early_stopping_patience: int = 0,
             evaluator_factory: Callable | None = None,
             dry_run: bool = False) -> train_lib.TrainResult | None:
  """Fine-tunes (or resumes fine-tuning) in `model_dir`; `finetune_setup` (gin)
  names the task or mixture. `init_from`: a pre-training MODEL_DIR whose latest
  parameters start the backbone (ignored when resuming). `dry_run`: only check
  the configuration (tasks, class counts, mesh, batch, init_from), touching nothing.

  Evaluation while training: `eval_every=N` scores the validation split of every task
  every N steps and at the last with `evaluator_factory(setup, eval_batch_size,
  sequence_length)` (the command line passes seqio_eval.ValidationEvaluator: the
  official metrics and their "average"). The state with the best `best_metric`
  ("average" or "<task>/<metric>", `best_mode` 'max' or 'min') is kept in
  MODEL_DIR/best_checkpoint, which checkpoint rotation never touches; with
  `early_stopping_patience=K` the run stops after K evaluations without improvement.
  Evaluations, the best and the counter are in finetune_history.json, saved with every
  checkpoint, so a resumed run carries on from them exactly."""
  _, schedule = optimizer.run_schedule("finetune", num_steps, schedule_steps)
  setup = finetune_setup(schedule=schedule)
  if setup.config.compute_dtype == jnp.float16:
    # Pre-training scales the loss (train_step.py); this loop does not yet.
    raise ValueError("Ernie3Config.dtype='float16': fine-tuning has no loss scaling, so small "
                     "gradients would flush to zero; fine-tune in 'bfloat16' or 'float32'")
  row_shards = setup.mesh.shape["data"] * setup.mesh.shape["fsdp"]
  if batch_size % (row_shards * jax.process_count()):
    raise ValueError(f"finetune.batch_size={batch_size} must be divisible by data x fsdp = "
                     f"{row_shards} and by the process count {jax.process_count()}")
  best_rule = BestRule(best_metric, best_mode, early_stopping_patience)
  evaluator = None
  if eval_every < 0:
    raise ValueError(f"finetune.eval_every={eval_every}; expected 0 (off) or a step count")
  if eval_every:
    if evaluator_factory is None:
      raise ValueError("finetune.eval_every is set but no evaluator was given: run through "
                       "the command line (--run_mode=train), or pass evaluator_factory="
                       "seqio_eval.ValidationEvaluator")
    # Every validation row is read now: a bad one fails before training starts.
    evaluator = evaluator_factory(setup, eval_batch_size or batch_size, sequence_length)
    best_rule.check_name(evaluator.metric_names())
  elif early_stopping_patience:
    raise ValueError(f"finetune.early_stopping_patience={early_stopping_patience} needs "
                     "finetune.eval_every > 0 (it counts evaluations)")
  if dry_run:
    if init_from:
      checkpoint_files.latest_checkpoint_dir(init_from)  # raises when there is none
    for name in setup.layout.task_names:  # a missing or empty train file, named now
      _check_training_rows(name, sequence_length)
    return None
  num_processes, process_index = jax.process_count(), jax.process_index()
  data = FinetuneInput(setup.layout.task_names, batch_size=batch_size // num_processes,
                       sequence_length=sequence_length, seed=seed, shard_index=process_index,
                       num_shards=num_processes, rates=setup.rates)
  ckpt = checkpointing.Checkpointer(os.path.join(model_dir, "checkpoints"), checkpoint_every,
                                    keep_checkpoints, async_checkpoints)
  state, shardings, resumed_from = restore_or_init(setup, ckpt, data, seed, init_from,
                                                     allow_fallback)

  rows = partitioning.batch_sharding(setup.mesh, setup.rules)
  replicated = jax.sharding.NamedSharding(setup.mesh, jax.sharding.PartitionSpec())
  jitted = multihost.CompiledEverywhere(jax.jit(
      make_finetune_step(setup.model, setup.tx, setup.layout, setup.frozen),
      in_shardings=(shardings, rows, replicated),
      out_shardings=(shardings, replicated), donate_argnums=(0,)), "finetune_step")
  history = loop_hooks.earlier_history(model_dir, resumed_from, "history", HISTORY_FILE)
  evaluations = loop_hooks.earlier_history(model_dir, resumed_from, "evaluations",
                                           HISTORY_FILE)
  record = _HistoryFile(model_dir, setup.layout.task_names, history, evaluations, best_rule)
  best_ckpt = (checkpointing.Checkpointer(os.path.join(model_dir, BEST_DIR), 0, 1,
                                          async_checkpoints) if evaluator else None)
  loop = _EvalLoop(evaluator, eval_every, best_rule, best_ckpt, evaluations)
  state, step, stopped_by = _step_loop(setup, jitted, rows, data, ckpt, state, num_steps,
                                       log_every, progress_bar, seed, model_dir, history,
                                       record, loop)
  if stopped_by in ("num_steps", "early_stopping"):
    if ckpt.save(step, state, data.state(), force=True):
      record.write()
  ckpt.close()
  if best_ckpt is not None:
    best_ckpt.close()
  data.close()
  record.write()
  return train_lib.TrainResult(step, resumed_from, history, stopped_by, state, evaluations)


HISTORY_FILE = "finetune_history.json"
BEST_DIR = "best_checkpoint"  # in MODEL_DIR, beside checkpoints/


@dataclasses.dataclass(frozen=True)
class BestRule:
  """Which evaluation is best (`finetune.best_metric`, `best_mode`) and when to stop
  (`early_stopping_patience` evaluations without improvement; 0: never)."""
  metric: str
  mode: str
  patience: int

  def __post_init__(self):
    if self.mode not in ("max", "min"):
      raise ValueError(f"finetune.best_mode={self.mode!r}; expected 'max' or 'min'")
    if self.patience < 0:
      raise ValueError(f"finetune.early_stopping_patience={self.patience}; expected 0 (off) "
                       "or a count of evaluations")

  def check_name(self, names: list[str]) -> None:
    """`names`: exact names and "<task>/" prefixes the evaluator will report."""
    if not any(self.metric == n or (n.endswith("/") and self.metric.startswith(n))
               for n in names):
      raise ValueError(f"finetune.best_metric={self.metric!r} is not reported by the "
                       f"evaluation; expected 'average' or '<task>/<metric>' of the tasks "
                       f"{[n for n in names if n.endswith('/')]}")

  def value(self, record: dict[str, float]) -> float:
    key = f"eval/{self.metric}"
    if key not in record:
      raise ValueError(f"finetune.best_metric={self.metric!r} is not among the evaluation's "
                       f"figures {sorted(k[5:] for k in record if k.startswith('eval/'))}")
    return float(record[key])

  def better(self, value: float, than: float | None) -> bool:
    if not np.isfinite(value):
      return False
    return than is None or (value > than if self.mode == "max" else value < than)

  def summary(self, evaluations: list[dict[str, float]]) -> dict[str, float] | None:
    """{"step", "value", "evaluations_since"} of the best evaluation so far (the first of
    equals), or None before any: derived from the evaluations alone, so a resumed run
    (whose evaluations are those up to its checkpoint) continues exactly."""
    best, since = None, 0
    for record in evaluations:
      value = self.value(record)
      if best is None or self.better(value, best["value"]):
        best, since = {"step": record["step"], "value": value}, 0
      else:
        since += 1
    return None if best is None else {**best, "evaluations_since": since}


class _HistoryFile:
  """MODEL_DIR/finetune_history.json (process 0): logged steps, evaluations and the best."""

  def __init__(self, model_dir: str, tasks: tuple[str, ...], history: list, evaluations: list,
               rule: BestRule):
    self.path = os.path.join(model_dir, HISTORY_FILE)
    self.tasks, self.history, self.evaluations, self.rule = tasks, history, evaluations, rule

  def write(self) -> None:
    if jax.process_index() != 0:
      return
    content = {"tasks": list(self.tasks), "history": self.history,
               "evaluations": self.evaluations}
    if self.evaluations:
      content["best"] = {"metric": self.rule.metric, "mode": self.rule.mode,
                         **self.rule.summary(self.evaluations)}
    storage.write_atomic(self.path, json.dumps(content, indent=1))


@dataclasses.dataclass
class _EvalLoop:
  """Evaluation while fine-tuning: the evaluator, its cadence, and the best kept."""
  evaluator: Callable | None
  every: int
  rule: BestRule
  best_ckpt: checkpointing.Checkpointer | None
  evaluations: list


def _step_loop(setup: FinetuneSetup, jitted: Callable, rows: Any, data: FinetuneInput,
               ckpt: checkpointing.Checkpointer, state: Any, num_steps: int, log_every: int,
               progress_bar: bool | None, seed: int, model_dir: str,
               history: list[dict[str, float]], record: _HistoryFile,
               loop: _EvalLoop) -> tuple[Any, int, str]:
  """Steps until `num_steps`, early stopping or SIGTERM, logging, evaluating and
  checkpointing; returns (state, step, what stopped it)."""
  base_rng = jax.random.PRNGKey(seed + 1)
  step = int(jax.device_get(state.step))
  stopped_by = "num_steps"
  # No MFU: with a frozen backbone the step's FLOPs are not pre-training's formula.
  logger = loop_hooks.StepLogger(model_dir, history, step, num_steps, log_every, progress_bar,
                                 None, line=_format)
  evaluator = loop.evaluator
  eval_hook = loop_hooks.EvalHook(lambda s: evaluator(s.params, int(jax.device_get(s.step))),
                                  loop.every if evaluator else 0, num_steps, loop.evaluations,
                                  logger.writer, line=_eval_line)
  data_wait = profiling.DataWait()
  tokens = data.batch_size * jax.process_count() * data.sequence_length
  with StopRequest() as stop, setup.mesh, nn.logical_axis_rules(setup.rules):
    while step < num_steps:
      batch = data_wait.timed(data.next_batch)
      state, metrics = jitted(state, partitioning.to_global_batch(batch, rows), base_rng)
      step += 1
      if logger.after_step(step, metrics, tokens):
        logger.log(step, None, data_wait.take(),
                   learning_rate=float(setup.schedule(step - 1)),
                   nonfinite_skipped=float(jax.device_get(state.nonfinite_skipped)))
      stop_early = False
      if eval_hook(step, state) is not None:
        stop_early = _after_evaluation(loop, step, state, data)
        record.write()
      ckpt.poll()
      if ckpt.save(step, state, data.state()):
        record.write()  # the history travels with the checkpoints (a killed run keeps it)
      if stop_early:
        stopped_by = "early_stopping"
        break
      if stop.requested(step):
        if ckpt.save(step, state, data.state(), force=True):
          record.write()
        stopped_by = "sigterm"
        print(f"SIGTERM: saved the checkpoint of step {step}, exiting", flush=True)
        break
  logger.close()
  return state, step, stopped_by


def _after_evaluation(loop: _EvalLoop, step: int, state: Any, data: FinetuneInput) -> bool:
  """Keeps the state of a new best evaluation in best_checkpoint/; True when early
  stopping's patience has run out."""
  summary = loop.rule.summary(loop.evaluations)
  if summary["step"] == step:
    # A save at a step best_checkpoint/ already holds is skipped: a resumed run that
    # redoes this step holds the same state (same-count resumes are bit-identical).
    loop.best_ckpt.save(step, state, data.state(), force=True)
    if jax.process_index() == 0:
      print(f"new best {loop.rule.metric}={summary['value']:.4f} at step {step}: kept in "
            f"{loop.best_ckpt.directory}", flush=True)
  if loop.rule.patience and summary["evaluations_since"] >= loop.rule.patience:
    if jax.process_index() == 0:
      print(f"early stopping at step {step}: {summary['evaluations_since']} evaluations "
            f"without a better {loop.rule.metric} than {summary['value']:.4f} (step "
            f"{summary['step']}); finetune.early_stopping_patience={loop.rule.patience}",
            flush=True)
    return True
  return False


def _check_training_rows(task_name: str, sequence_length: int) -> None:
  """Fails, naming the task and the file it reads, when its train split is missing or has
  no labeled row (before MODEL_DIR is created, rather than at the first batch)."""
  import seqio  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from ernie3_jax.superglue import sources
  where = "its source"
  source = sources.superglue_source()
  if task_name.removeprefix("superglue_") in sources.TASKS and storage.isdir(source):
    where = sources.split_path(task_name.removeprefix("superglue_"), "train", source)
    if not storage.isfile(where):
      raise FileNotFoundError(f"{task_name}: its training file {where} does not exist")
  length = {"input_ids": sequence_length, "segment_ids": sequence_length}
  ds = seqio.get_mixture_or_task(task_name).get_dataset(
      length, split="train", shuffle=False, num_epochs=1, use_cached=False)
  if not any(int(ex["label"]) >= 0 for ex in ds.take(64).as_numpy_iterator()):
    raise ValueError(f"{task_name}: no labeled training row in its train split ({where})")


def _format(m: dict[str, float]) -> str:
  per_task = " ".join(f"{k.split('/')[0]}={v:.3f}" for k, v in sorted(m.items())
                      if k.endswith("/accuracy") and np.isfinite(v))
  return (f"loss={m['loss']:.4f} accuracy[{per_task}] lr={m['learning_rate']:.2e} "
          f"{m['step_seconds']:.3f}s/step")


def _eval_line(record: dict[str, float]) -> str:
  figures = " ".join(f"{k[5:]}={v:.4f}" for k, v in sorted(record.items())
                     if k.startswith("eval/") and k != "eval/average")
  average = f"average={record['eval/average']:.4f} " if "eval/average" in record else ""
  return f"{average}{figures} ({record['eval_seconds']:.1f}s)"
