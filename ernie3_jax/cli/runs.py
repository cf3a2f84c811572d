"""What `--run_mode` runs: train, eval or infer, with MODEL_DIR from gin."""

from __future__ import annotations

import json
import math
import os

import gin
import jax

from ernie3_jax.runtime import storage


@gin.configurable
def model_dir(path: str = gin.REQUIRED) -> str:
  """MODEL_DIR: where checkpoints, summaries and the effective config go: a local
  folder (made absolute) or an object-store URI such as gs://bucket/run."""
  return storage.resolve(path, "model_dir.path (MODEL_DIR)")


def summarize_training(history: list[dict[str, float]]) -> str:
  """A table of each task's loss at the first and last logged step."""
  if not history:
    return "no steps were logged"
  first, last = history[0], history[-1]
  lines = [f"{'task':24s} {'step ' + str(int(first['step'])):>12s} "
           f"{'step ' + str(int(last['step'])):>12s}"]
  number = lambda v: f"{v:12.3f}" if math.isfinite(v) else f"{'-':>12s}"
  for key in sorted(k for k in last if k.endswith("/loss")):
    lines.append(f"{key.split('/')[0]:24s} {number(first.get(key, float('nan')))} "
                 f"{number(last[key])}")
  return "\n".join(lines)


def configured_job() -> str:
  """The gin-bound `run.job` ('pretrain' when unbound)."""
  try:
    return str(gin.query_parameter("run.job"))
  except ValueError:
    return "pretrain"


@gin.configurable
def run(run_mode: str, directory: str, prompts: tuple[str, ...] = (),
        max_new_tokens: int = 32, job: str = "pretrain") -> dict:
  """Dispatches on run_mode; returns what it measured (also printed).

  `job` selects what the run modes act on: 'pretrain' (below) or 'finetune'
  (ernie3_jax/cli/finetune_runs.py).
  """
  if job == "finetune":
    from ernie3_jax.cli import finetune_runs  # pylint: disable=g-import-not-at-top
    return finetune_runs.run(run_mode, directory)
  if job != "pretrain":
    raise ValueError(f"run.job={job!r}; expected 'pretrain' or 'finetune'")
  if run_mode == "train":
    from ernie3_jax.training import train as train_lib  # pylint: disable=g-import-not-at-top
    result = train_lib.train(directory)
    if result.resumed_from is not None and result.resumed_from == result.final_step:
      print(f"{directory} already holds a checkpoint of step {result.final_step}, the "
            "configured train.num_steps: nothing to train. Raise NUM_STEPS (train.num_steps and "
            "train.schedule_steps) to continue, "
            "or use a new MODEL_DIR (or delete this one) to start fresh.")
      return {"final_step": result.final_step, "stopped_by": "already_done"}
    print(f"training stopped at step {result.final_step} ({result.stopped_by})")
    print(summarize_training(result.history))
    return {"final_step": result.final_step, "stopped_by": result.stopped_by}
  if run_mode == "eval":
    from ernie3_jax.training import evaluate  # pylint: disable=g-import-not-at-top
    metrics = evaluate.evaluate(directory)
    # Every process evaluated its share (the metrics are global sums); process 0 writes.
    if jax.process_index() == 0:
      storage.write_atomic(os.path.join(directory, "eval_metrics.json"),
                           json.dumps(metrics, indent=1))
      print("evaluation: " + " ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())))
    return metrics
  if run_mode == "infer":
    from ernie3_jax.inference import generation  # pylint: disable=g-import-not-at-top
    # Decoded on the run's mesh (make_mesh) by every process; process 0 prints.
    outputs = generation.generate_from_checkpoint(directory, list(prompts), max_new_tokens)
    if jax.process_index() == 0:
      for prompt, text in zip(prompts, outputs):
        print(f"prompt: {prompt}\ncontinuation: {text}")
    return {"generations": outputs}
  raise ValueError(f"--run_mode={run_mode!r}; expected train, eval or infer")
