"""The pre-training loop: sharded multi-task steps, logging, checkpoints, resume.

`train()` is gin-configurable (see gin_configs/runs/pretrain.gin). Restarting it
with the same model_dir resumes from the latest complete checkpoint: parameters,
optimizer state, NLG memory and the data pipeline's position, so N steps +
restart + N steps equals 2N straight steps.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from absl import logging
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from ernie3_jax.model import Ernie3, Ernie3Config
from ernie3_jax.parallel import mesh as mesh_lib
from ernie3_jax.parallel import multihost
from ernie3_jax.training import checkpoint_files, checkpointing, evaluate, flops, loop_hooks
from ernie3_jax.training import optimizer
from ernie3_jax.training import partitioning, profiling, run_checks
from ernie3_jax.training.preemption import StopRequest
from ernie3_jax.training.progressive import ProgressiveSchedule
from ernie3_jax.training.train_step import make_train_step


@dataclasses.dataclass
class TrainResult:
  final_step: int
  resumed_from: int | None
  history: list[dict[str, float]]
  stopped_by: str  # "num_steps", "sigterm", "nonfinite", "early_stopping", "dry_run"
  state: Any = None
  evaluations: list[dict[str, float]] = dataclasses.field(default_factory=list)


DEFAULT_NLG_BATCH_SIZE = evaluate.DEFAULT_NLG_BATCH_SIZE


@gin.configurable(denylist=["model_dir", "dry_run"])
def train(model_dir: str, *,
          input_builder: Callable = gin.REQUIRED,
          num_steps: int = 100,
          schedule_steps: int | None = None,
          nlu_batch_size: int = 32,
          nlg_batch_size: int = DEFAULT_NLG_BATCH_SIZE,
          sequence_length: int = 128,
          nlg_segment_length: int = 128,
          seed: int = 0,
          num_microbatches: int = 1,
          mlm_prediction_fraction: float | None = 0.2,
          task_weights: dict[str, float] | None = None,
          progressive: ProgressiveSchedule | None = None,
          log_every: int = 10,
          eval_every: int = 0,
          checkpoint_every: int = 100,
          keep_checkpoints: int = 3,
          async_checkpoints: bool = True,
          on_nonfinite: str = "skip",
          allow_fallback: bool = True,
          on_save_error: str = "stop",
          mesh_fn: Callable = mesh_lib.make_mesh,
          init_from: str | None = None,
          progress_bar: bool | None = None,
          profile_steps: tuple[int, int] | None = None,
          dry_run: bool = False) -> TrainResult:
  """Pre-trains (or resumes pre-training of) an ERNIE 3.0 model in `model_dir`.

  Every configuration check (model, mesh, batch sizes, lengths, tasks, data files,
  checkpoint shapes) runs before anything is written. `dry_run` stops right after them, so a
  launcher can validate a config without touching `model_dir`. `profile_steps=(a, b)`
  traces steps a..b into MODEL_DIR/profile (training/profiling.py). The run stops at
  `num_steps`; the learning-rate schedule lasts `schedule_steps` (default: `num_steps`).
  `eval_every=N` evaluates every task on held-out data every N steps and at the last
  (the evaluation `--run_mode=eval` runs, configured by gin's evaluate.*), into the
  history's "evaluations", TensorBoard's eval/ scalars and the console.
  """
  # Validate: the options alone, before any model or data work.
  profiling.check_profile_steps(profile_steps, num_steps)
  _, schedule = optimizer.run_schedule("train", num_steps, schedule_steps)
  run_checks.check_options(on_nonfinite, on_save_error, mlm_prediction_fraction)
  progressive = progressive or ProgressiveSchedule()
  run_checks.check_lengths(sequence_length, nlg_segment_length, nlg_batch_size, progressive)
  # Set up, checking everything that can be checked before writing.
  run = _set_up(model_dir, input_builder, schedule, mesh_fn, nlu_batch_size, nlg_batch_size,
                sequence_length, nlg_segment_length, seed, num_microbatches, progressive,
                init_from)
  evaluator = None
  if eval_every:
    if eval_every < 0:
      raise ValueError(f"train.eval_every={eval_every}; expected 0 (off) or a step count")
    evaluator = evaluate.configured_evaluator(run.model, run.cfg, run.mesh, run.rules)
    evaluator.check_input()  # a missing validation split fails before anything is written
  if dry_run:
    _close(run.data)
    return TrainResult(0, None, [], "dry_run")
  ckpt = checkpointing.Checkpointer(os.path.join(model_dir, "checkpoints"), checkpoint_every,
                                    keep_checkpoints, async_checkpoints)
  state, shardings, resumed_from = _restore_or_init(run, ckpt, allow_fallback, nlg_batch_size,
                                                    seed, init_from)
  # A restored run keeps its checkpoint's data shards.
  batch_multiple = run_checks.check_data_shards(run.data, nlu_batch_size, nlg_batch_size,
                                                run.row_multiple)
  jitted, rows = _compile(run, shardings, nlu_batch_size, nlg_batch_size, task_weights,
                          num_microbatches, mlm_prediction_fraction)
  # Hooks around the steps: metrics, checkpoints (with the history), the profiler.
  peak, peak_how = flops.peak_flops_total()
  history = loop_hooks.earlier_history(model_dir, resumed_from)
  evaluations = loop_hooks.earlier_history(model_dir, resumed_from, "evaluations")
  step = int(jax.device_get(state.step))
  logger = loop_hooks.StepLogger(model_dir, history, step, num_steps, log_every, progress_bar,
                                 peak)
  save = loop_hooks.CheckpointHook(
      ckpt, run.data,
      lambda: loop_hooks.write_history(model_dir, peak, peak_how, history, evaluations),
      on_save_error)
  eval_hook = loop_hooks.EvalHook(lambda s: evaluator(s.params), eval_every if evaluator else 0,
                                  num_steps, evaluations, logger.writer)
  profiler = profiling.StepProfiler(model_dir, profile_steps)
  loop = _Loop(num_steps, progressive, sequence_length, nlu_batch_size, batch_multiple,
               nlg_batch_size, nlg_segment_length, mlm_prediction_fraction, on_nonfinite,
               jax.random.PRNGKey(seed + 1))
  state, step, stopped_by = _step_loop(run, loop, jitted, rows, state, step, logger, save,
                                       profiler, eval_hook)
  # Finalise: the last state saved, files closed, the history written.
  profiler.stop()  # a run that ended inside the window still writes its trace
  if stopped_by == "num_steps":
    save(step, state, force=True)
  ckpt.close()
  _close(run.data)
  logger.close()
  loop_hooks.write_history(model_dir, peak, peak_how, history, evaluations)
  return TrainResult(step, resumed_from, history, stopped_by, state, evaluations)


@dataclasses.dataclass
class _PretrainRun:
  """What the phases of one pre-training run share (built by `_set_up`)."""
  cfg: Ernie3Config
  model: Ernie3
  mesh: Any
  rules: Any
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  data: Any
  abstract: Any
  shardings: Any
  row_multiple: int  # every batch divides into data x fsdp x micro-batch blocks


def _set_up(model_dir: str, input_builder: Callable, schedule: optax.Schedule,
            mesh_fn: Callable, nlu_batch_size: int, nlg_batch_size: int, sequence_length: int,
            nlg_segment_length: int, seed: int, num_microbatches: int,
            progressive: ProgressiveSchedule, init_from: str | None) -> _PretrainRun:
  """Model, mesh, optimizer, input and state shardings, with every check that needs
  them passed (tasks, data files, vocabulary, checkpoint shapes); writes nothing."""
  cfg = Ernie3Config()
  model = Ernie3(cfg)
  mesh = mesh_fn()
  rules = mesh_lib.logical_axis_rules()
  row_multiple = run_checks.check_batch_division(mesh, nlu_batch_size, nlg_batch_size,
                                                 num_microbatches)
  tx = optimizer.make_optimizer(schedule)
  num_processes = jax.process_count()
  # The input is built (tasks resolved, data files opened) before the checkpoint
  # directory exists, so a bad data config leaves model_dir untouched.
  data = input_builder(nlu_batch_size=nlu_batch_size // num_processes,
                       nlg_batch_size=nlg_batch_size // num_processes,
                       sequence_length=sequence_length, nlg_segment_length=nlg_segment_length,
                       seed=seed, shard_index=jax.process_index(), num_shards=num_processes)
  run_checks.check_pretrain_input(cfg, data, progressive.settings(
      0, sequence_length, nlu_batch_size, 8, row_multiple)[0], sequence_length)
  abstract, shardings = partitioning.state_shardings(model, tx, mesh, rules, nlg_batch_size)
  run_checks.check_data_shards(data, nlu_batch_size, nlg_batch_size, row_multiple)
  run_checks.check_checkpoints(model_dir, init_from, abstract)
  return _PretrainRun(cfg, model, mesh, rules, schedule, tx, data, abstract, shardings,
                      row_multiple)


def _restore_or_init(run: _PretrainRun, ckpt: checkpointing.Checkpointer,
                     allow_fallback: bool, nlg_batch_size: int, seed: int,
                     init_from: str | None) -> tuple[Any, Any, int | None]:
  """(state, its shardings, the step resumed from or None): the latest checkpoint that
  verifies, else a fresh state (with `init_from`'s parameters where given)."""
  restored = ckpt.restore_latest(run.abstract, run.shardings, allow_fallback)
  if restored is not None:
    state, data_states, resumed_from = restored
    run.data.restore(data_states)
    logging.info("Resumed from the checkpoint of step %d in %s", resumed_from, ckpt.directory)
    print(f"resumed from step {resumed_from} ({ckpt.directory})", flush=True)
    return state, run.shardings, resumed_from
  state, shardings, _ = partitioning.create_train_state(
      run.model, run.tx, run.mesh, run.rules, nlg_batch_size, seed)
  if init_from:
    # Parameters only (e.g. fine-tuning from pre-training): fresh optimizer,
    # memory and data position.
    params, report = checkpoint_files.restore_params_into(state.params, shardings.params,
                                                       init_from)
    state = state.replace(params=params)
    print(f"initialised {report['restored']} parameters from step {report['step']} of "
          f"{init_from}; {len(report['fresh'])} new {report['fresh'][:5]}, "
          f"{len(report['unused'])} unused {report['unused'][:5]}", flush=True)
  return state, shardings, None


def _compile(run: _PretrainRun, shardings: Any, nlu_batch_size: int, nlg_batch_size: int,
             task_weights: dict[str, float] | None, num_microbatches: int,
             mlm_prediction_fraction: float | None) -> tuple[Callable, Any]:
  """(the jitted train step with its shardings, the batch rows' sharding)."""
  rows = partitioning.batch_sharding(run.mesh, run.rules)
  for size in {nlu_batch_size, nlg_batch_size} - {0}:
    partitioning.check_process_rows(rows, size)
  replicated = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
  step_fn = make_train_step(run.model, run.tx, task_weights or {}, num_microbatches,
                            mlm_prediction_fraction=mlm_prediction_fraction)
  jitted = jax.jit(step_fn, in_shardings=(shardings, rows, rows, replicated, replicated),
                   out_shardings=(shardings, replicated), donate_argnums=(0,))
  return multihost.CompiledEverywhere(jitted, "train_step"), rows


@dataclasses.dataclass(frozen=True)
class _Loop:
  """The step loop's settings."""
  num_steps: int
  progressive: ProgressiveSchedule
  sequence_length: int
  nlu_batch_size: int
  batch_multiple: int
  nlg_batch_size: int
  nlg_segment_length: int
  mlm_prediction_fraction: float | None
  on_nonfinite: str
  base_rng: jax.Array


def _step_loop(run: _PretrainRun, loop: _Loop, jitted: Callable, rows: Any, state: Any,
               step: int, logger: loop_hooks.StepLogger, save: loop_hooks.CheckpointHook,
               profiler: profiling.StepProfiler,
               eval_hook: loop_hooks.EvalHook) -> tuple[Any, int, str]:
  """Steps until `loop.num_steps`, a non-finite step under 'stop', or SIGTERM; returns
  (state, step, what stopped it)."""
  num_processes = jax.process_count()
  data_wait = profiling.DataWait()
  with StopRequest() as stop, run.mesh, nn.logical_axis_rules(run.rules):
    while step < loop.num_steps:
      length, batch, dropout = loop.progressive.settings(
          step, loop.sequence_length, loop.nlu_batch_size, 8, loop.batch_multiple)
      profiler.before_step(step + 1)
      nlu, nlg = data_wait.timed(run.data.next_batch, batch // num_processes, length)
      state, metrics = jitted(state, partitioning.to_global_batch(nlu, rows),
                              partitioning.to_global_batch(nlg, rows),
                              jnp.float32(dropout), loop.base_rng)
      step += 1
      profiler.after_step(step, metrics)
      # 'stop' needs the verdict now (one host sync per step); 'skip' never waits.
      if loop.on_nonfinite == "stop" and not bool(jax.device_get(metrics["finite"])):
        # The step kept the last good parameters; save them and stop.
        save(step, state, force=True)
        print(f"stopping at step {step}: non-finite loss or gradients "
              "(train.on_nonfinite='stop'); the checkpoint holds the last good state",
              flush=True)
        return state, step, "nonfinite"
      nlg_rows = loop.nlg_batch_size if nlg else 0
      if logger.after_step(step, metrics, batch * length + nlg_rows * loop.nlg_segment_length):
        extra = dict(learning_rate=float(run.schedule(step - 1)), sequence_length=length,
                     batch_size=batch, dropout_multiplier=dropout,
                     nonfinite_skipped=float(jax.device_get(state.nonfinite_skipped)))
        if state.loss_scale is not None:
          extra["overflow_skipped"] = float(jax.device_get(state.loss_scale["overflows"]))
        logger.log(step, flops.train_flops(run.cfg, batch, length, nlg_rows,
                                           loop.nlg_segment_length,
                                           loop.mlm_prediction_fraction),
                   data_wait.take(), **extra)
      eval_hook(step, state)  # before the save, so the history saved with it holds it
      save(step, state)
      if stop.requested(step):
        save(step, state, force=True)
        print(f"SIGTERM: saved the checkpoint of step {step}, exiting", flush=True)
        return state, step, "sigterm"
  return state, step, "num_steps"


def _close(data: Any) -> None:
  if hasattr(data, "close"):
    data.close()
