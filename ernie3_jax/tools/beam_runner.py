"""Beam pipeline options for the preprocessing tools: which runner, and real parallelism.

The tools (`preprocess`, `prepare_dumps`) pass everything after `--` here. Two things
are decided for the user:

* A local run names Beam's batch engine, `FnApiRunner`, explicitly. Beam's
  `DirectRunner` (the default) first tries its Prism runner, which it downloads at
  start-up, and falls back to the same FnApiRunner when it cannot; naming the engine
  skips that attempt. `--runner=PrismRunner` still asks for Prism.
* With more than one local worker (`--direct_num_workers=N`, N > 1, or 0 for every
  core) the run uses `--direct_running_mode=multi_processing`: one SDK worker process
  per worker. Beam's default mode (`in_memory`) runs every bundle in the launching
  process whatever `direct_num_workers` says. An explicit `multi_threading` is kept.

Any other runner (Dataflow, Flink, Spark, `ernie3_jax.tools.dask_runner.DaskRunner`) gets
the options as given.
"""

from __future__ import annotations

from typing import Sequence

LOCAL_ENGINE = "FnApiRunner"
# Names that mean "Beam's local batch runner" (any case, with or without the module).
_LOCAL_NAMES = ("direct", "directrunner", "switchingdirectrunner", "fnapi", "fnapirunner")


def _is_local(runner: str | None) -> bool:
  return runner is None or runner.rsplit(".", 1)[-1].lower() in _LOCAL_NAMES


def _given(args: Sequence[str], name: str) -> bool:
  return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args)


def pipeline_options(args: Sequence[str]):
  """`PipelineOptions` from the Beam arguments of a command line (see the module doc)."""
  from apache_beam.options import pipeline_options as po  # pylint: disable=g-import-not-at-top
  options = po.PipelineOptions(list(args))
  standard = options.view_as(po.StandardOptions)
  if not _is_local(standard.runner):
    return options
  standard.runner = LOCAL_ENGINE
  direct = options.view_as(po.DirectOptions)
  workers = direct.direct_num_workers
  keep = direct.direct_running_mode == "multi_threading" and _given(args, "direct_running_mode")
  if workers != 1 and not keep:
    direct.direct_running_mode = "multi_processing"
  return options


def describe(options) -> str:
  """One line naming the runner and, for a local run, its workers and mode."""
  from apache_beam.options import pipeline_options as po  # pylint: disable=g-import-not-at-top
  runner = options.view_as(po.StandardOptions).runner
  if runner != LOCAL_ENGINE:
    return f"Beam runner {runner}"
  direct = options.view_as(po.DirectOptions)
  return (f"Beam runner {runner}, direct_num_workers={direct.direct_num_workers}, "
          f"direct_running_mode={direct.direct_running_mode}")
