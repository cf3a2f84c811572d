"""What the training loops do around each step: averaging and logging metrics, the
progress bar, TensorBoard, the history file, and saving checkpoints.

Pre-training (`train.py`) and fine-tuning (`finetune.py`) share these.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

from absl import logging
import jax
import numpy as np

from ernie3_jax.training import checkpointing
from ernie3_jax.runtime import storage


def window_average(pending: list[dict]) -> dict[str, float]:
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


def format_line(m: dict[str, float]) -> str:
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


def metric_writer(model_dir: str, subdir: str = "tensorboard", just_logging: bool | None = None):
  """clu's TensorBoard writer for MODEL_DIR/`subdir` (process 0 writes event files).

  TensorBoard's event writer reaches object stores only through TensorFlow's gfile; for
  a gs:// MODEL_DIR the events are written to a local folder and copied into the store
  (`MirroredWriter`), so the one GCS client of `storage` serves everything.
  """
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  if just_logging is None:
    just_logging = jax.process_index() > 0
  target = os.path.join(model_dir, subdir)
  if just_logging or not storage.is_uri(target):
    return metric_writers.create_default_writer(target, just_logging=just_logging)
  import tempfile  # pylint: disable=g-import-not-at-top
  local = tempfile.mkdtemp(prefix="ernie3_tensorboard_")
  return MirroredWriter(metric_writers.create_default_writer(local), local, target)


class MirroredWriter:
  """A metric writer whose event files live in `local_dir` and are copied to
  `remote_dir` at most every `every_seconds` while writing, and at every flush."""

  def __init__(self, inner: Any, local_dir: str, remote_dir: str, every_seconds: float = 10.0):
    self.inner, self.local_dir, self.remote_dir = inner, local_dir, remote_dir
    self.every_seconds, self.last_upload = every_seconds, 0.0

  def __getattr__(self, name: str) -> Any:
    return getattr(self.inner, name)

  def write_scalars(self, step: int, scalars: dict) -> None:
    self.inner.write_scalars(step, scalars)
    if time.monotonic() - self.last_upload >= self.every_seconds:
      self.flush()

  def flush(self) -> None:
    self.inner.flush()
    storage.upload_tree(self.local_dir, self.remote_dir)
    self.last_upload = time.monotonic()

  def close(self) -> None:
    self.flush()
    self.inner.close()


def progress_bar(total: int, initial: int, enabled: bool | None):
  if enabled is None:
    enabled = sys.stderr.isatty()
  if not enabled or jax.process_index() > 0:
    return None
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def write_history(model_dir: str, peak: float, peak_how: str,
                  history: list[dict[str, float]],
                  evaluations: list[dict[str, float]] | None = None) -> None:
  """MODEL_DIR/train_history.json: every logged step of this run and its earlier starts,
  and every held-out evaluation (`train.eval_every`)."""
  if jax.process_index() != 0:
    return
  # Never a half-written file: replaced whole (storage.write_atomic).
  storage.write_atomic(os.path.join(model_dir, "train_history.json"), json.dumps(
      {"peak_flops": peak, "peak_source": peak_how, "history": history,
       "evaluations": evaluations or []}, indent=1))


def earlier_history(model_dir: str, resumed_from: int | None, key: str = "history",
                    filename: str = "train_history.json") -> list[dict[str, float]]:
  """The records under `key` of earlier starts up to `resumed_from` (later ones are
  redone): logged steps ("history") or evaluations ("evaluations")."""
  path = os.path.join(model_dir, filename)
  if resumed_from is None or not storage.exists(path):
    return []
  return [m for m in json.loads(storage.read_text(path)).get(key, [])
          if m["step"] <= resumed_from]


class CheckpointHook:
  """Saves at the checkpointer's cadence (or when forced) with the history beside it;
  a failed save stops the run unless `on_save_error == 'continue'`."""

  def __init__(self, ckpt: checkpointing.Checkpointer, data: Any,
               history_writer: Callable[[], None], on_save_error: str):
    self.ckpt, self.data = ckpt, data
    self.history_writer, self.on_save_error = history_writer, on_save_error

  def __call__(self, step: int, state: Any, force: bool = False) -> None:
    try:
      # A failed asynchronous save stops the run at the first step after the failure is
      # known (poll never waits); at the latest the next save, which waits, reports it.
      self.ckpt.poll()
      if self.ckpt.save(step, state, self.data.state(), force=force):
        # The history travels with the checkpoints, so a killed run keeps it too.
        try:
          self.history_writer()
        except OSError as e:
          self.ckpt.wait()  # a full disk fails the checkpoint too: that error names the step
          raise checkpointing.CheckpointSaveError(
              f"writing train_history.json with the checkpoint of step {step} failed "
              f"({e}); the checkpoint itself was saved") from e
    except checkpointing.CheckpointSaveError as e:
      if self.on_save_error == "stop":
        raise
      print(f"warning: {e} Training continues (train.on_save_error='continue').", flush=True)


class StepLogger:
  """Every `log_every` steps (and at the last): the window's averaged metrics with the
  step time, throughput, MFU and host data wait, to the history, TensorBoard, the log
  and the console (or a progress bar in a terminal). `line` formats the console line."""

  def __init__(self, model_dir: str, history: list[dict[str, float]], step: int,
               num_steps: int, log_every: int, progress: bool | None,
               peak_flops: float | None,
               line: Callable[[dict[str, float]], str] = format_line):
    self.history, self.num_steps, self.log_every = history, num_steps, log_every
    self.line = line
    self.writer = metric_writer(model_dir)
    self.bar = progress_bar(num_steps, step, progress)
    self.peak_flops = peak_flops
    self.pending: list[dict] = []
    self.last_time, self.last_step, self.tokens = time.perf_counter(), step, 0.0

  def after_step(self, step: int, metrics: dict, tokens: float) -> bool:
    """Records one step; True when this step is logged (call `log` then)."""
    self.pending.append(metrics)
    self.tokens += tokens
    if self.bar is not None:
      self.bar.update(1)
    return step % self.log_every == 0 or step == self.num_steps

  def log(self, step: int, step_flops: float | None, data_wait_seconds: float,
          **extra: float) -> dict[str, float]:
    """Logs the window since the last log; `step_flops` None (not counted) omits MFU."""
    m = window_average(self.pending)
    self.pending = []
    now = time.perf_counter()
    elapsed = max(now - self.last_time, 1e-9)
    seconds = (now - self.last_time) / max(step - self.last_step, 1)
    m.update(step=step, **extra, tokens_per_second=self.tokens / elapsed,
             step_seconds=seconds,
             # The host's wait for batches: a slow input pipeline shows here, not in MFU.
             data_wait_fraction=data_wait_seconds / elapsed)
    if step_flops is not None and self.peak_flops:
      m["mfu"] = step_flops / seconds / self.peak_flops
    self.history.append(m)
    self.writer.write_scalars(step, {k: v for k, v in m.items() if k != "step"})
    line = self.line(m)
    logging.info("step %d %s", step, line)
    if self.bar is None:
      print(f"step {step}: {line}", flush=True)
    self.last_time, self.last_step, self.tokens = now, step, 0.0
    return m

  def close(self) -> None:
    self.writer.flush()
    if self.bar is not None:
      self.bar.close()


class EvalHook:
  """Every `every` steps and at the last step: held-out figures of the current state,
  appended to `evaluations`, written to TensorBoard under "eval/" and printed as one line.

  `evaluate(state)` returns {name: value}; `extra(step, figures)` may add to the record
  (the fine-tuning loop's best-checkpoint bookkeeping). Off when `every` is 0.
  """

  def __init__(self, evaluate: Callable[[Any], dict[str, float]], every: int, num_steps: int,
               evaluations: list[dict[str, float]], writer: Any,
               line: Callable[[dict[str, float]], str] | None = None):
    if every < 0:
      raise ValueError(f"eval_every={every}; expected 0 (off) or a step count")
    self.evaluate, self.every, self.num_steps = evaluate, every, num_steps
    self.evaluations, self.writer = evaluations, writer
    self.line = line or _eval_line

  def due(self, step: int) -> bool:
    return self.every > 0 and (step % self.every == 0 or step == self.num_steps)

  def __call__(self, step: int, state: Any) -> dict[str, float] | None:
    """Evaluates at `step` when due; returns the record (None when not due)."""
    if not self.due(step) or any(e["step"] == step for e in self.evaluations):
      return None
    start = time.perf_counter()
    figures = self.evaluate(state)
    record = {"step": step, **{f"eval/{k}": float(v) for k, v in figures.items()},
              "eval_seconds": time.perf_counter() - start}
    self.evaluations.append(record)
    self.writer.write_scalars(step, {k: v for k, v in record.items() if k != "step"})
    self.writer.flush()
    text = self.line(record)
    logging.info("eval step %d %s", step, text)
    if jax.process_index() == 0:
      print(f"eval step {step}: {text}", flush=True)
    return record


def _eval_line(record: dict[str, float]) -> str:
  """Each task's held-out loss and accuracy: 'masked_lm=4.512/0.213 ...'."""
  tasks = sorted({k.split("/")[1] for k in record if k.startswith("eval/") and
                  k.endswith("/loss")})
  return " ".join(f"{t}={_number(record[f'eval/{t}/loss'])}/"
                  f"{_number(record.get(f'eval/{t}/accuracy', float('nan')))}"
                  for t in tasks) + f" (loss/accuracy, {record['eval_seconds']:.1f}s)"
