"""The pre-training loop: sharded multi-task steps, logging, checkpoints, resume.

`train()` is gin-configurable (see gin_configs/runs/pretrain.gin). Restarting it
with the same model_dir resumes from the latest complete checkpoint: parameters,
optimizer state, NLG memory and the data pipeline's position, so N steps +
restart + N steps equals 2N straight steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable

from absl import logging
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from ernie3_jax.model import Ernie3, Ernie3Config
from ernie3_jax.parallel import mesh as mesh_lib
from ernie3_jax.training import checkpointing, flops, optimizer, partitioning, profiling
from ernie3_jax.training.preemption import StopRequest
from ernie3_jax.training.progressive import ProgressiveSchedule
from ernie3_jax.training.train_step import make_train_step


@dataclasses.dataclass
class TrainResult:
  final_step: int
  resumed_from: int | None
  history: list[dict[str, float]]
  stopped_by: str  # "num_steps", "sigterm", "nonfinite", "dry_run"
  state: Any = None


def _window_average(pending: list[dict]) -> dict[str, float]:
  """Averages the steps since the last log; per-task means are weighted by the
  task's loss weight in each step (a step without the task adds nothing)."""
  steps = [{k: float(v) for k, v in m.items()} for m in jax.device_get(pending)]
  out = {"loss": float(np.mean([m["loss"] for m in steps])),
         "grad_norm": float(np.mean([m["grad_norm"] for m in steps])),
         "finite": float(all(m["finite"] for m in steps))}
  if "loss_scale" in steps[-1]:
    out["loss_scale"] = steps[-1]["loss_scale"]  # float16 runs: the scale now
  if "mlm_full_head_batches" in steps[-1]:
    # Batches whose masked-token logits took every position (losses.masked_lm_sums).
    out["mlm_full_head_batches"] = sum(m.get("mlm_full_head_batches", 0.0) for m in steps)
  for key in [k for k in steps[-1] if k.endswith("/weight")]:
    name = key.split("/")[0]
    weight = sum(m[key] for m in steps)
    out[key] = weight
    for what in ("loss", "accuracy"):
      total = sum(m[f"{name}/{what}"] * m[key] for m in steps)
      out[f"{name}/{what}"] = total / weight if weight > 0 else float("nan")
  return out


DEFAULT_NLG_BATCH_SIZE = 8


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
  """
  profiling.check_profile_steps(profile_steps, num_steps)
  _, schedule = optimizer.run_schedule("train", num_steps, schedule_steps)
  if on_nonfinite not in ("skip", "stop"):
    raise ValueError(f"train.on_nonfinite={on_nonfinite!r}; expected 'skip' or 'stop'")
  if on_save_error not in ("stop", "continue"):
    raise ValueError(f"train.on_save_error={on_save_error!r}; expected 'stop' or 'continue'")
  if mlm_prediction_fraction is not None and not 0.0 < mlm_prediction_fraction <= 1.0:
    raise ValueError(f"train.mlm_prediction_fraction={mlm_prediction_fraction}; valid range: "
                     "(0, 1], or None for logits at every position")
  progressive = progressive or ProgressiveSchedule()
  _check_lengths(sequence_length, nlg_segment_length, nlg_batch_size, progressive)
  cfg = Ernie3Config()
  model = Ernie3(cfg)
  mesh = mesh_fn()
  rules = mesh_lib.logical_axis_rules()
  row_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  for name, size in (("nlu_batch_size", nlu_batch_size), ("nlg_batch_size", nlg_batch_size)):
    if size % (row_shards * num_microbatches):
      raise ValueError(
          f"train.{name}={size} must be divisible by data x fsdp = {row_shards} times "
          f"num_microbatches = {num_microbatches}")
  tx = optimizer.make_optimizer(schedule)
  num_processes, process_index = jax.process_count(), jax.process_index()
  # The input is built (tasks resolved, data files opened) before the checkpoint
  # directory exists, so a bad data config leaves model_dir untouched.
  data = input_builder(nlu_batch_size=nlu_batch_size // num_processes,
                       nlg_batch_size=nlg_batch_size // num_processes,
                       sequence_length=sequence_length, nlg_segment_length=nlg_segment_length,
                       seed=seed, shard_index=process_index, num_shards=num_processes)
  _check_pretrain_input(cfg, data, progressive.settings(
      0, sequence_length, nlu_batch_size, 8, row_shards * num_microbatches)[0], sequence_length)
  abstract, shardings = partitioning.state_shardings(model, tx, mesh, rules, nlg_batch_size)
  _check_data_shards(data, nlu_batch_size, nlg_batch_size, row_shards * num_microbatches)
  _check_checkpoints(model_dir, init_from, abstract)
  if dry_run:
    if hasattr(data, "close"):
      data.close()
    return TrainResult(0, None, [], "dry_run")
  ckpt = checkpointing.Checkpointer(os.path.join(model_dir, "checkpoints"), checkpoint_every,
                                    keep_checkpoints, async_checkpoints)

  restored = ckpt.restore_latest(abstract, shardings, allow_fallback)
  resumed_from = None
  if restored is not None:
    state, data_states, resumed_from = restored
    data.restore(data_states)
    logging.info("Resumed from the checkpoint of step %d in %s", resumed_from, ckpt.directory)
    print(f"resumed from step {resumed_from} ({ckpt.directory})", flush=True)
  else:
    state, shardings, abstract = partitioning.create_train_state(
        model, tx, mesh, rules, nlg_batch_size, seed)
    if init_from:
      # Parameters only (e.g. fine-tuning from pre-training): fresh optimizer,
      # memory and data position.
      params, report = checkpointing.restore_params_into(state.params, shardings.params,
                                                         init_from)
      state = state.replace(params=params)
      print(f"initialised {report['restored']} parameters from step {report['step']} of "
            f"{init_from}; {len(report['fresh'])} new {report['fresh'][:5]}, "
            f"{len(report['unused'])} unused {report['unused'][:5]}", flush=True)
  # A restored run keeps its checkpoint's data shards.
  batch_multiple = _check_data_shards(data, nlu_batch_size, nlg_batch_size,
                                      row_shards * num_microbatches)

  rows = partitioning.batch_sharding(mesh, rules)
  for size in {nlu_batch_size, nlg_batch_size} - {0}:
    partitioning.check_process_rows(rows, size)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  step_fn = make_train_step(model, tx, task_weights or {}, num_microbatches,
                            mlm_prediction_fraction=mlm_prediction_fraction)
  jitted = jax.jit(step_fn, in_shardings=(shardings, rows, rows, replicated, replicated),
                   out_shardings=(shardings, replicated), donate_argnums=(0,))
  base_rng = jax.random.PRNGKey(seed + 1)

  writer = _metric_writer(model_dir)
  peak, peak_how = flops.peak_flops_total()
  history = _earlier_history(model_dir, resumed_from)
  step = int(jax.device_get(state.step))
  stopped_by = "num_steps"
  bar = _progress_bar(num_steps, step, progress_bar)
  last_time, last_step, tokens_since = time.perf_counter(), step, 0.0
  pending: list[dict] = []

  def save(force: bool = False) -> None:
    try:
      ckpt.poll()  # a failed asynchronous save stops the run at the next step
      if ckpt.save(step, state, data.state(), force=force):
        # The history travels with the checkpoints, so a killed run keeps it too.
        try:
          _write_history(model_dir, peak, peak_how, history)
        except OSError as e:
          ckpt.wait()  # a full disk fails the checkpoint too: that error names the step
          raise checkpointing.CheckpointSaveError(
              f"writing train_history.json with the checkpoint of step {step} failed "
              f"({e}); the checkpoint itself was saved") from e
    except checkpointing.CheckpointSaveError as e:
      if on_save_error == "stop":
        raise
      print(f"warning: {e} Training continues (train.on_save_error='continue').", flush=True)

  profiler = profiling.StepProfiler(model_dir, profile_steps)
  data_wait = profiling.DataWait()
  with StopRequest() as stop, mesh, nn.logical_axis_rules(rules):
    while step < num_steps:
      length, batch, dropout = progressive.settings(
          step, sequence_length, nlu_batch_size, 8, batch_multiple)
      profiler.before_step(step + 1)
      nlu, nlg = data_wait.timed(data.next_batch, batch // num_processes, length)
      state, metrics = jitted(state, partitioning.to_global_batch(nlu, rows),
                              partitioning.to_global_batch(nlg, rows),
                              jnp.float32(dropout), base_rng)
      pending.append(metrics)
      step += 1
      profiler.after_step(step, metrics)
      # 'stop' needs the verdict now (one host sync per step); 'skip' never waits.
      if on_nonfinite == "stop" and not bool(jax.device_get(metrics["finite"])):
        # The step kept the last good parameters; save them and stop.
        save(force=True)
        stopped_by = "nonfinite"
        print(f"stopping at step {step}: non-finite loss or gradients "
              "(train.on_nonfinite='stop'); the checkpoint holds the last good state",
              flush=True)
        break
      tokens_since += batch * length + (nlg_batch_size * nlg_segment_length if nlg else 0)
      if bar is not None:
        bar.update(1)
      if step % log_every == 0 or step == num_steps:
        m = _window_average(pending)
        pending = []
        now = time.perf_counter()
        seconds = (now - last_time) / max(step - last_step, 1)
        step_flops = flops.train_flops(cfg, batch, length, nlg_batch_size if nlg else 0,
                                       nlg_segment_length, mlm_prediction_fraction)
        m.update(step=step, learning_rate=float(schedule(step - 1)), sequence_length=length,
                 batch_size=batch, dropout_multiplier=dropout,
                 tokens_per_second=tokens_since / max(now - last_time, 1e-9),
                 mfu=step_flops / seconds / peak, step_seconds=seconds,
                 # The host's wait for batches: a slow input pipeline shows here, not in MFU.
                 data_wait_fraction=data_wait.take() / max(now - last_time, 1e-9),
                 nonfinite_skipped=float(jax.device_get(state.nonfinite_skipped)))
        if state.loss_scale is not None:
          m["overflow_skipped"] = float(jax.device_get(state.loss_scale["overflows"]))
        history.append(m)
        writer.write_scalars(step, {k: v for k, v in m.items() if k != "step"})
        logging.info("step %d %s", step, _format(m))
        if bar is None:
          print(f"step {step}: {_format(m)}", flush=True)
        last_time, last_step, tokens_since = now, step, 0.0
      save()
      if stop.requested(step):
        save(force=True)
        stopped_by = "sigterm"
        print(f"SIGTERM: saved the checkpoint of step {step}, exiting", flush=True)
        break
  profiler.stop()  # a run that ended inside the window still writes its trace
  if stopped_by == "num_steps":
    save(force=True)
  ckpt.close()
  if hasattr(data, "close"):
    data.close()
  writer.flush()
  if bar is not None:
    bar.close()
  _write_history(model_dir, peak, peak_how, history)
  return TrainResult(step, resumed_from, history, stopped_by, state)


def _write_history(model_dir: str, peak: float, peak_how: str,
                   history: list[dict[str, float]]) -> None:
  """MODEL_DIR/train_history.json: every logged step of this run and its earlier starts."""
  if jax.process_index() != 0:
    return
  path = os.path.join(model_dir, "train_history.json")
  with open(path + ".tmp", "w") as f:
    json.dump({"peak_flops": peak, "peak_source": peak_how, "history": history}, f, indent=1)
  os.replace(path + ".tmp", path)  # never a half-written file


def _earlier_history(model_dir: str, resumed_from: int | None) -> list[dict[str, float]]:
  """The logged steps of earlier starts up to `resumed_from` (later ones are redone)."""
  path = os.path.join(model_dir, "train_history.json")
  if resumed_from is None or not os.path.exists(path):
    return []
  with open(path) as f:
    return [m for m in json.load(f).get("history", []) if m["step"] <= resumed_from]


def _check_data_shards(data: Any, nlu_batch_size: int, nlg_batch_size: int,
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


def _check_lengths(sequence_length: int, nlg_segment_length: int, nlg_batch_size: int,
                   progressive: ProgressiveSchedule) -> None:
  """Lengths any model and input can take (the pre-training tasks' own minimums are
  checked in `_check_pretrain_input`)."""
  if sequence_length < 1:
    raise ValueError(f"train.sequence_length={sequence_length}; valid range: >= 1")
  if nlg_batch_size and nlg_segment_length < 2:
    raise ValueError(f"train.nlg_segment_length={nlg_segment_length}; valid range: >= 2 "
                     "(a segment needs an input and a next-token target)")
  if progressive.steps > 0 and progressive.start_length < 1:
    raise ValueError(f"ProgressiveSchedule.start_length={progressive.start_length}; valid "
                     "range: >= 1")


def _check_pretrain_input(cfg: Ernie3Config, data: Any, shortest: int, longest: int) -> None:
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


def _check_checkpoints(model_dir: str, init_from: str | None, abstract: Any) -> None:
  """The checkpoint a run would resume from (or, starting fresh, `train.init_from`) must
  fit the model; checked from metadata before anything is written."""
  own = os.path.join(model_dir, "checkpoints")
  steps = checkpointing.complete_steps(own) if os.path.isdir(own) else []
  # The newest checkpoint whose metadata reads is the one a resume ends up on (restore
  # verifies the arrays and falls back past damaged checkpoints).
  for step in reversed(steps):
    try:
      saved = checkpointing.saved_shapes(os.path.join(own, str(step), "state"), step)
    except checkpointing.CheckpointCorruptError:
      continue
    problems = checkpointing.shape_mismatches(saved, abstract)
    if problems:
      raise checkpointing.CheckpointMismatchError(
          f"cannot resume from the checkpoint of step {step} in {own!r}: it was written "
          f"by a different model or train config: "
          f"{checkpointing.summarize_mismatches(problems)}. Use the config it was written "
          "with (MODEL_DIR/config.gin), or a new MODEL_DIR.")
    return  # resuming: init_from is not used
  if steps:
    return  # every checkpoint is damaged: the restore reports them, naming each
  if init_from:
    try:
      state_dir, step = checkpointing.latest_checkpoint_dir(init_from)
    except FileNotFoundError as e:
      raise FileNotFoundError(f"train.init_from={init_from!r}: {e}") from None
    # New parameters (fresh heads) and unused ones are fine; differing shapes are not.
    problems = [p for p in checkpointing.shape_mismatches(
        checkpointing.saved_shapes(state_dir), {"params": abstract.params}, prefix="params[")
                if " has shape " in p]
    if problems:
      raise checkpointing.CheckpointMismatchError(
          f"train.init_from={init_from!r}: the checkpoint of step {step} was written by a "
          f"different model config: {checkpointing.summarize_mismatches(problems)}")


def _format(m: dict[str, float]) -> str:
  # A task that no row of the logged steps had shows "-" (its loss is undefined).
  losses = " ".join(f"{k.split('/')[0]}={_number(v)}" for k, v in sorted(m.items())
                    if k.endswith("/loss"))
  return (f"loss={m['loss']:.3f} [{losses}] lr={m['learning_rate']:.2e} "
          f"len={m['sequence_length']} batch={m['batch_size']} "
          f"tok/s={m['tokens_per_second']:.0f} mfu={m['mfu']:.1%} "
          f"step={m['step_seconds']:.3f}s data_wait={m['data_wait_fraction']:.0%}" +
          (f" loss_scale={m['loss_scale']:g} overflow_skipped={m['overflow_skipped']:.0f}"
           if "overflow_skipped" in m else ""))


def _number(value: float) -> str:
  return f"{value:.3f}" if np.isfinite(value) else "-"


def _metric_writer(model_dir: str):
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  return metric_writers.create_default_writer(
      os.path.join(model_dir, "tensorboard"), just_logging=jax.process_index() > 0)


def _progress_bar(total: int, initial: int, enabled: bool | None):
  if enabled is None:
    enabled = sys.stderr.isatty()
  if not enabled or jax.process_index() > 0:
    return None
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
