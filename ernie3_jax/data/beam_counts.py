"""Counted reports of Beam pipelines: nothing they drop goes unreported.

Stages emit an event per thing kept or dropped: a string ("items kept", "statements
dropped: deprecated rank") counts 1, a (string, n) pair counts n. `write_report` sums
them into a JSON report with the first few examples of what was skipped (file:line and
why).
"""

from __future__ import annotations

import json
from typing import Sequence

import apache_beam as beam

from ernie3_jax.runtime import storage

MAX_EXAMPLES = 20


def _as_pair(event) -> tuple[str, int]:
  """An event as (what, n); anything else is an error, never a guessed count (a runner
  that merged a multi-output step's outputs would hand other elements here)."""
  if isinstance(event, str):
    return event, 1
  if (isinstance(event, tuple) and len(event) == 2 and isinstance(event[0], str)
      and isinstance(event[1], int) and not isinstance(event[1], bool)):
    return event
  raise TypeError(f"not a count event (a string or a (string, int) pair): {event!r:.200}")


def write_report(events: Sequence[beam.PCollection], examples: beam.PCollection | None,
                 path: str, label: str) -> None:
  """Writes {"counts": {event: n}, "skipped_examples": [...]} to `path` (one file)."""
  pipeline = events[0].pipeline
  counts = (tuple(events) | f"{label}/events" >> beam.Flatten()
            | f"{label}/pairs" >> beam.Map(_as_pair).with_output_types(tuple[str, int])
            | f"{label}/sum" >> beam.CombinePerKey(sum)
            | f"{label}/table" >> beam.combiners.ToDict())
  if examples is None:
    examples = pipeline | f"{label}/no_examples" >> beam.Create([])
  first = examples | f"{label}/examples" >> beam.combiners.Top.Smallest(MAX_EXAMPLES)

  def render(_, table, sample):
    return json.dumps({"counts": dict(sorted(table.items())), "skipped_examples": sample},
                      indent=1)

  _ = (pipeline | f"{label}/one" >> beam.Create([None])
       | f"{label}/render" >> beam.Map(render, beam.pvalue.AsSingleton(counts),
                                       beam.pvalue.AsSingleton(first))
       | f"{label}/write_report" >> beam.io.WriteToText(path, shard_name_template=""))


def read_report(path: str) -> dict:
  return json.loads(storage.read_text(path))
