"""`python -m ernie3_jax.evaluation.zero_shot`: zero-/few-shot SuperGLUE through the NLG stack.

  python -m ernie3_jax.evaluation.zero_shot --model_dir=runs/demo --source=tfds \\
      [--num_shots=k --normalization=sum|mean --gin=make_mesh.tensor=8]

The command sits apart from the library (`zero_shot.py`) because it reads the task
registry (`ernie3_jax.tasks`), which is built on the library.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

import jax

from ernie3_jax.evaluation.zero_shot import NORMALIZATIONS, load_scorer, score_task
from ernie3_jax.superglue import prompts as prompts_lib
from ernie3_jax.runtime import compilation_cache
from ernie3_jax.runtime import storage


def _parse_tasks(value: str) -> list[str]:
  tasks = [t.strip() for t in value.split(",") if t.strip()]
  bad = [t for t in tasks if t not in prompts_lib.TASKS]
  if bad:
    raise ValueError(f"--tasks: unknown {bad}; expected a comma-separated subset of "
                     f"{list(prompts_lib.TASKS)}")
  return tasks


def main(argv: Iterable[str] | None = None) -> None:
  """`python -m ernie3_jax.evaluation.zero_shot --model_dir=... --source=DIR`."""
  import argparse  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--source", default="tfds",
                      help='"tfds" or a directory in the official SuperGLUE layout')
  parser.add_argument("--tasks", default="boolq,cb,copa,multirc,rte,wic,wsc")
  parser.add_argument("--split", default="validation")
  parser.add_argument("--normalization", default="sum", choices=NORMALIZATIONS)
  parser.add_argument("--num_shots", type=int, default=0)
  parser.add_argument("--shot_seed", type=int, default=0)
  parser.add_argument("--shot_split", default="train")
  parser.add_argument("--max_length", type=int, default=128)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--gin", action="append", default=[], metavar="NAME=VALUE",
                      help="gin binding applied after MODEL_DIR/config.gin (repeatable), "
                      "e.g. make_mesh.tensor=8 to shard the model over 8 devices")
  parser.add_argument("--output_dir", default=None,
                      help="metrics.json and per-row <task>.<split>.jsonl go here (default: "
                      "MODEL_DIR/zero_shot/<split>_<normalization>_<k>shot)")
  compilation_cache.add_arguments(parser)
  args = parser.parse_args(argv)
  compilation_cache.setup_from_args(args)
  tasks = _parse_tasks(args.tasks)
  args.model_dir = storage.resolve(args.model_dir, "--model_dir")
  from ernie3_jax.tasks import superglue_zero_shot as zs  # pylint: disable=g-import-not-at-top
  # Every row of every split the run reads is checked before the model loads: a bad row
  # in the last task is named now, not after scoring the others.
  for task in tasks:
    zs.check_split(task, args.split, args.source, args.num_shots, args.shot_split)
  scorer = load_scorer(args.model_dir, args.max_length, args.batch_size, args.gin)
  output_dir = args.output_dir or os.path.join(
      args.model_dir, "zero_shot", f"{args.split}_{args.normalization}_{args.num_shots}shot")
  # Every process scores (the model is sharded over all of them); process 0 writes.
  writer = jax.process_index() == 0
  if writer:
    storage.makedirs(output_dir)
  results = {}
  for task in tasks:
    with gin.unlock_config():
      gin.bind_parameter("ZeroShotConfig.source", args.source)
      gin.bind_parameter("ZeroShotConfig.num_shots", args.num_shots)
      gin.bind_parameter("ZeroShotConfig.shot_seed", args.shot_seed)
      gin.bind_parameter("ZeroShotConfig.shot_split", args.shot_split)
      gin.bind_parameter("ZeroShotConfig.max_length", args.max_length)
    results[task] = score_task(zs.task_name(task), scorer, args.split, args.normalization,
                               predictions_path=os.path.join(
                                   output_dir, f"{task}.{args.split}.jsonl") if writer else None)
    if not writer:
      continue
    # Full precision on disk, after every task (a later failure keeps the finished ones).
    storage.write_atomic(os.path.join(output_dir, "metrics.json"),
                         json.dumps({"settings": vars(args), "tasks": results}, indent=1))
    print(f"{task:12s} " + " ".join(f"{k}={v:.4f}" for k, v in sorted(results[task].items())),
          flush=True)
  if writer:
    print(f"written to {output_dir}")


if __name__ == "__main__":
  main()
