r"""Examples per second of each pre-training task's pipeline, and of the mixture.

  python benchmarks/data_throughput.py --examples=2000 --sequence_length=128

Prints one JSON line: settings and, per task, examples/s (after a warm-up of
--warmup examples, which absorbs pipeline start-up and the UKTP alignment); then
the examples/s the demo's training step consumes of each task (its step timed on
synthetic batches of the demo's shapes, see demo_step.py) and, per task, the
ratio pipeline / consumption (above 1: the pipeline keeps up).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_EXAMPLES = flags.DEFINE_integer("examples", 2000, "Examples timed per task.")
_WARMUP = flags.DEFINE_integer("warmup", 200, "Examples read before timing.")
_LENGTH = flags.DEFINE_integer("sequence_length", 128, "Tokens per example.")
_BATCH = flags.DEFINE_integer("batch", 64, "Rows per tf.data batch when reading.")
_TASKS = flags.DEFINE_list("tasks", ["knowledge_masked_lm", "uktp", "sentence_reordering",
                                     "sentence_distance", "document_lm", "ernie3_pretrain"],
                           "Tasks and mixtures to read.")
_DEMO_GIN = flags.DEFINE_string("demo_gin", "gin_configs/experiments/demo.gin",
                                "Experiment whose training step's consumption is compared "
                                "('' to skip).")
_DEMO_STEPS = flags.DEFINE_integer("demo_steps", 5, "Timed steps of the demo's training step.")
_OUTPUT = flags.DEFINE_string("output", None, "Append the JSON line to this file.")


def measure(name: str, length: int, examples: int, warmup: int, batch: int) -> float:
  import seqio  # pylint: disable=g-import-not-at-top
  ds = seqio.get_mixture_or_task(name).get_dataset(
      {"tokens": length}, split="train", shuffle=True, seed=0, num_epochs=None,
      trim_output_features=False, use_cached=False).batch(batch)
  it = ds.as_numpy_iterator()
  seen = 0
  while seen < warmup:
    seen += len(next(it)["tokens"])
  start, seen = time.perf_counter(), 0
  while seen < examples:
    seen += len(next(it)["tokens"])
  return seen / (time.perf_counter() - start)


def main(argv):
  del argv
  import ernie3_jax.tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import bench_common  # pylint: disable=g-import-not-at-top
  results = {n: round(measure(n, _LENGTH.value, _EXAMPLES.value, _WARMUP.value, _BATCH.value),
                      1) for n in _TASKS.value}
  record = {"benchmark": "data_throughput", "unit": "examples/s",
            "sequence_length": _LENGTH.value, "examples": _EXAMPLES.value,
            "machine": bench_common.machine(),
            # The demo step below is timed in this process, as started (see the Makefile).
            "host_memory_tunables_active": bench_common.host_memory.active(),
            "results": results}
  if _DEMO_GIN.value:
    import demo_step  # pylint: disable=g-import-not-at-top
    demo = demo_step.measure(_DEMO_GIN.value, _DEMO_STEPS.value)
    record["demo_consumption"] = demo
    record["pipeline_over_demo_consumption"] = {
        n: round(results[n] / demo["examples_per_s"][n], 2)
        for n in results if demo["examples_per_s"].get(n)}
  bench_common.emit(record, _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
