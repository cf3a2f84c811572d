"""SuperGLUE leaderboard files: one jsonl per task, official file names and label vocabulary.

`write_submission(task, rows, predictions, out_dir)` takes the rows of a task's test
split (the task's examples or their `postprocess`ed targets: dicts with "idx", "group",
"candidate" and "candidate_index") and one prediction per row, with the conventions of
`superglue_metrics` (class index or class scores; candidate score for COPA and ReCoRD).
Lines, sorted by idx:

  BoolQ, WiC           {"idx": 3, "label": "true"}          ("true"/"false")
  WSC                  {"idx": 3, "label": "True"}          ("True"/"False", as jiant,
                                                             the benchmark's own writer)
  CB, RTE, AX-b, AX-g  {"idx": 3, "label": "entailment"}
  COPA                 {"idx": 3, "label": 1}               (index of the chosen choice)
  ReCoRD               {"idx": 7, "label": "Obama"}         (query idx, chosen entity)
  MultiRC              {"idx": 0, "passage": {"questions": [{"idx": 0, "answers":
                         [{"idx": 0, "label": 1}, ...]}, ...]}}   (one line per paragraph)
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from ernie3_jax.superglue import sources
from ernie3_jax.runtime import storage

FILE_NAMES = {t: f"{d}.jsonl" for t, d in sources.OFFICIAL_DIRS.items()}
# The words jiant (the SuperGLUE authors' toolkit) writes for class 0 and 1.
_BOOL_LABELS = {"boolq": ("false", "true"), "wic": ("false", "true"),
                "wsc": ("False", "True")}


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _idx(row: Mapping[str, Any]) -> tuple[int, ...]:
  return tuple(int(i) for i in np.asarray(row["idx"]).reshape(-1))


def _class(prediction: Any, num_classes: int) -> int:
  array = np.asarray(prediction)
  label = int(array) if array.ndim == 0 else int(np.argmax(array))
  if not 0 <= label < num_classes:
    raise ValueError(f"predicted class {label} is not in [0, {num_classes})")
  return label


def _best_rows(rows: Sequence[Mapping[str, Any]],
               predictions: Sequence[Any]) -> list[Mapping[str, Any]]:
  """The highest-scoring row of each group (the first on ties), in order of first appearance."""
  best: dict[int, tuple[float, int]] = {}
  for i, (row, score) in enumerate(zip(rows, predictions)):
    group, score = int(row["group"]), float(np.asarray(score).reshape(()))
    if group not in best or score > best[group][0]:
      best[group] = (score, i)
  return [rows[i] for _, i in best.values()]


def _multirc_lines(rows, predictions) -> list[dict[str, Any]]:
  nested: dict[int, dict[int, list[dict[str, int]]]] = collections.defaultdict(
      lambda: collections.defaultdict(list))
  for row, prediction in zip(rows, predictions):
    paragraph, question, answer = _idx(row)
    nested[paragraph][question].append({"idx": answer, "label": _class(prediction, 2)})
  return [{"idx": p, "passage": {"questions": [
      {"idx": q, "answers": sorted(answers, key=lambda a: a["idx"])}
      for q, answers in sorted(questions.items())]}} for p, questions in sorted(nested.items())]


def submission_lines(task: str, rows: Sequence[Mapping[str, Any]],
                     predictions: Sequence[Any]) -> list[dict[str, Any]]:
  """The leaderboard lines of one task (see the module docstring), sorted by idx."""
  task = sources.canonical_task(task)
  if len(rows) != len(predictions):
    raise ValueError(f"{task}: {len(rows)} rows but {len(predictions)} predictions")
  if not rows:
    raise ValueError(f"{task}: no rows to write")
  if task == "multirc":
    return _multirc_lines(rows, predictions)
  if task == "copa":
    lines = [{"idx": _idx(r)[0], "label": int(r["candidate_index"])}
             for r in _best_rows(rows, predictions)]
  elif task == "record":
    lines = [{"idx": _idx(r)[1], "label": _text(r["candidate"])}
             for r in _best_rows(rows, predictions)]
  elif task in _BOOL_LABELS:
    lines = [{"idx": _idx(r)[0], "label": _BOOL_LABELS[task][_class(p, 2)]}
             for r, p in zip(rows, predictions)]
  else:
    names = sources.STRING_LABELS[task]
    lines = [{"idx": _idx(r)[0], "label": names[_class(p, len(names))]}
             for r, p in zip(rows, predictions)]
  counts = collections.Counter(line["idx"] for line in lines)
  repeated = sorted(i for i, n in counts.items() if n > 1)
  if repeated:
    raise ValueError(f"{task}: idx {repeated[:5]} appear in more than one row")
  return sorted(lines, key=lambda line: line["idx"])


def write_submission(task: str, rows: Sequence[Mapping[str, Any]], predictions: Sequence[Any],
                     out_dir: str) -> str:
  """Writes `out_dir/<Official>.jsonl` for one task and returns its path."""
  lines = submission_lines(task, rows, predictions)
  storage.makedirs(out_dir)
  path = os.path.join(out_dir, FILE_NAMES[sources.canonical_task(task)])
  storage.write_atomic(path, "".join(json.dumps(line) + "\n" for line in lines))
  return path
