r"""Pre-training data preprocessing on Apache Beam: UKTP alignment and seqio caches.

  python -m ernie3_jax.tools.preprocess --output_dir=/data/ernie3 \
      --gin_file=my_data.gin --gin.DataConfig.corpus="'/data/wiki/*.jsonl'" \
      --alignment_splits=train,validation \
      --cache_tasks=knowledge_masked_lm,sentence_reordering,sentence_distance,uktp \
      -- --runner=DirectRunner --direct_num_workers=2

Step 1 aligns the KG to the corpus (`beam_alignment`) into OUTPUT_DIR/uktp_alignment.
Step 2 caches the `<task>_cached` seqio tasks (`tasks/pretraining_cached.py`) into
OUTPUT_DIR/<task>_cached/ (UKTP reads step 1's alignment); a task directory gets its
COMPLETED file only after its pipeline succeeded, so seqio never reads a partial
cache. Each output folder (`uktp_alignment/<split>`, `<task>_cached`) is written into a
fresh folder beside it and replaces the old one only once the pipeline succeeded, so a
re-run never mixes its files with an earlier run's (other shard counts, a stale
COMPLETED); a task's cache folder is replaced whole, so cache every split a run needs
in one call. Everything after `--` configures Beam (runner, project, workers; see
`beam_runner`: more than one local worker runs in as many processes); workers
re-read the same gin files and bindings. Train from the caches with
`--gin.PretrainInput.cache_dir="'OUTPUT_DIR'"`.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Sequence

from absl import app
from absl import flags

from ernie3_jax.config import gin_utils
from ernie3_jax.config.gin_utils import rewrite_gin_args
from ernie3_jax.tools import beam_runner
from ernie3_jax.runtime import output_folder
from ernie3_jax.runtime import storage

ALIGNMENT_DIR = "uktp_alignment"

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where alignment and caches go.")
_GIN_FILES = flags.DEFINE_multi_string("gin_file", [], "Gin files (the DataConfig).")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings NAME=VALUE.")
_GIN_SEARCH_PATHS = flags.DEFINE_list("gin_search_paths", [], "Where gin files are looked up.")
_ALIGNMENT_SPLITS = flags.DEFINE_list("alignment_splits", ["train", "validation"],
                                      "Splits to align (empty: skip the alignment).")
_CACHE_TASKS = flags.DEFINE_list(
    "cache_tasks", ["knowledge_masked_lm", "sentence_reordering", "sentence_distance", "uktp"],
    "NLU pre-training tasks to cache (empty: none).")
_CACHE_SPLITS = flags.DEFINE_list("cache_splits", ["train", "validation"], "Splits to cache.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 0, "Output files per split (0: Beam decides).")


def configure_worker(gin_files: Sequence[str], bindings: Sequence[str],
                     search_paths: Sequence[str]) -> None:
  """Gives a Beam worker the driver's gin configuration and task registry."""
  import ernie3_jax.tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  gin_utils.parse_gin(gin_files, bindings, search_paths)


def run_alignment(config, splits: Sequence[str], output_dir: str,
                  pipeline_args: Sequence[str], num_shards: int = 0) -> str:
  """Aligns `splits` with Beam; returns the alignment directory."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from ernie3_jax.data import beam_alignment  # pylint: disable=g-import-not-at-top
  out = os.path.join(output_dir, ALIGNMENT_DIR)
  staging = output_folder.new_staging(out)
  try:
    with beam.Pipeline(options=beam_runner.pipeline_options(pipeline_args)) as pipeline:
      for split in splits:
        beam_alignment.align_triples_pipeline(pipeline, config, split, staging, num_shards)
    for split in splits:  # each split replaces its own folder; other splits stay
      output_folder.publish(os.path.join(staging, split), os.path.join(out, split))
  finally:
    storage.rmtree(staging)
  return out


def run_caching(task_names: Sequence[str], splits: Sequence[str], output_dir: str,
                pipeline_args: Sequence[str], worker_setup, num_shards: int = 0) -> list[str]:
  """Writes seqio caches of `<task>_cached` for `task_names`; returns their directories."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  from ernie3_jax.tasks import pretraining_cached  # pylint: disable=g-import-not-at-top
  known = sorted(pretraining_cached.pretraining.NLU_PREPROCESSORS)
  unknown = [n for n in task_names if n not in known]
  if unknown:
    raise ValueError(f"--cache_tasks: {unknown} cannot be cached; cacheable tasks: {known}")
  directories, staged = [], []
  staging = output_folder.new_staging(os.path.join(output_dir, "caches"))
  try:
    with beam.Pipeline(options=beam_runner.pipeline_options(pipeline_args)) as pipeline:
      for name in task_names:
        task = seqio.get_mixture_or_task(name + pretraining_cached.SUFFIX)
        task_name = seqio.utils.get_task_dir_from_name(task.name)
        directories.append(os.path.join(output_dir, task_name))
        staged.append(os.path.join(staging, task_name))
        _cache_task(pipeline, task, staged[-1], splits, worker_setup, num_shards)
    # Only after every split of every task succeeded: COMPLETED, then into place.
    for task_dir, final in zip(staged, directories):
      storage.write_atomic(os.path.join(task_dir, "COMPLETED"), "")
      output_folder.publish(task_dir, final)
  finally:
    storage.rmtree(staging)
  return directories


def _cache_task(pipeline, task, task_dir: str, splits: Sequence[str], worker_setup,
                num_shards: int) -> None:
  """Adds the seqio cache of `task`'s `splits` (written into `task_dir`) to `pipeline`."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  from seqio import beam_utils  # pylint: disable=g-import-not-at-top
  for split in splits:
    label = f"{task.name}_{split}"
    examples = (pipeline
                | f"{label}/preprocess" >> beam_utils.PreprocessTask(
                    task, split, setup_fn=worker_setup, modules_to_import=("tasks",))
                | f"{label}/shuffle" >> beam.Reshuffle())
    _ = examples | f"{label}/write" >> beam_utils.WriteExampleTfRecord(
        seqio.get_cached_tfrecord_prefix(task_dir, split), num_shards=num_shards)
    _ = (examples | f"{label}/info" >> beam_utils.GetInfo(num_shards or 1)
         | f"{label}/write_info" >> beam_utils.WriteJson(
             seqio.get_cached_info_path(task_dir, split)))
    _ = (examples | f"{label}/stats" >> beam_utils.GetStats(task.output_features)
         | f"{label}/write_stats" >> beam_utils.WriteJson(
             seqio.get_cached_stats_path(task_dir, split)))


def main(argv: Sequence[str]) -> None:
  pipeline_args = [a for a in argv[1:] if a != "--"]
  if not _OUTPUT_DIR.value:
    raise app.UsageError("--output_dir is required")
  output_dir = storage.resolve(_OUTPUT_DIR.value, "--output_dir")
  from ernie3_jax.data import data_config as dc  # pylint: disable=g-import-not-at-top
  bindings = list(_GIN_BINDINGS.value)
  configure_worker(_GIN_FILES.value, bindings, _GIN_SEARCH_PATHS.value)
  storage.makedirs(output_dir)
  print(beam_runner.describe(beam_runner.pipeline_options(pipeline_args)), flush=True)
  if _ALIGNMENT_SPLITS.value:
    out = run_alignment(dc.current(), _ALIGNMENT_SPLITS.value, output_dir, pipeline_args,
                        _NUM_SHARDS.value)
    print(f"aligned {_ALIGNMENT_SPLITS.value} into {out}", flush=True)
    # The cached UKTP task (and training) read this alignment from here on.
    bindings.append(f"DataConfig.uktp_alignment = {out!r}")
    configure_worker(_GIN_FILES.value, bindings, _GIN_SEARCH_PATHS.value)
  if _CACHE_TASKS.value:
    setup = functools.partial(configure_worker, list(_GIN_FILES.value), bindings,
                              list(_GIN_SEARCH_PATHS.value))
    dirs = run_caching(_CACHE_TASKS.value, _CACHE_SPLITS.value, output_dir, pipeline_args,
                       setup, _NUM_SHARDS.value)
    print(f"cached {len(dirs)} tasks into {output_dir}", flush=True)
  storage.write_atomic(os.path.join(output_dir, "config.gin"), gin_utils.effective_config())


def _parse_flags(argv: list[str]) -> list[str]:
  """absl takes its flags; the rest (after `--` or unknown) goes to Beam."""
  return flags.FLAGS(rewrite_gin_args(argv), known_only=True)


if __name__ == "__main__":
  app.run(main, argv=sys.argv, flags_parser=_parse_flags)
