"""What `--run_mode` runs for a fine-tuning config (`run.job = 'finetune'`).

train: fine-tune (or resume) the configured task or mixture (with finetune.eval_every,
scoring the validation splits while training and keeping the best checkpoint); eval:
the best checkpoint's metrics (the latest without one) on the validation split through
seqio.Evaluator; infer: the test-split predictions of the same checkpoint written as
leaderboard files under MODEL_DIR/submission.
"""

from __future__ import annotations

from typing import Any


def run(run_mode: str, directory: str) -> dict[str, Any]:
  """Dispatches one fine-tuning run mode; returns what it measured (also printed)."""
  if run_mode == "train":
    from ernie3_jax.training import finetune  # pylint: disable=g-import-not-at-top
    from ernie3_jax.evaluation import seqio_eval  # pylint: disable=g-import-not-at-top
    # finetune.eval_every scores the validation splits with the official metrics.
    result = finetune.finetune(directory, evaluator_factory=seqio_eval.ValidationEvaluator)
    if result.resumed_from is not None and result.resumed_from == result.final_step:
      print(f"{directory} already holds a checkpoint of step {result.final_step}, the "
            "configured finetune.num_steps: nothing to train.")
      return {"final_step": result.final_step, "stopped_by": "already_done"}
    print(f"fine-tuning stopped at step {result.final_step} ({result.stopped_by})")
    if result.history:
      first, last = result.history[0], result.history[-1]
      print(f"loss {first['loss']:.4f} (step {int(first['step'])}) -> {last['loss']:.4f} "
            f"(step {int(last['step'])})")
    if result.evaluations:
      best = max(result.evaluations, key=lambda e: e["step"])
      print("last evaluation (step %d): %s" % (best["step"], " ".join(
          f"{k[5:]}={v:.4f}" for k, v in sorted(best.items()) if k.startswith("eval/"))))
    return {"final_step": result.final_step, "stopped_by": result.stopped_by}
  from ernie3_jax.evaluation import seqio_eval  # pylint: disable=g-import-not-at-top
  if run_mode == "eval":
    out = seqio_eval.evaluate_checkpoint(directory)
    print(f"evaluation of step {out['step']} ({out['checkpoint']} checkpoint) on "
          f"{out['split']}:")
    for task, values in sorted(out["tasks"].items()):
      print(f"  {task:24s} " + " ".join(f"{k}={v:.4f}" for k, v in sorted(values.items())))
    if "superglue_average" in out:
      print(f"  superglue average {out['superglue_average']:.4f}")
    return out
  if run_mode == "infer":
    written = seqio_eval.infer_checkpoint(directory)
    for task, path in sorted(written.items()):
      print(f"{task}: {path}")
    return {"submission_files": written}
  raise ValueError(f"--run_mode={run_mode!r}; expected train, eval or infer")
