"""The official SuperGLUE metrics, as seqio metric functions `fn(targets, predictions)`.

Targets are what the tasks' `postprocess_fn` returns for a target: a dict with "label"
(class index; -1 = unlabeled), "group" (the decision the row belongs to), "idx" (the
official idx triple), "candidate" and "answers" (ReCoRD's gold answer strings).
Classification metrics also accept plain int labels as targets.

Predictions, one per row:
- classification tasks (BoolQ, CB, MultiRC, RTE, WiC, WSC, AX-b, AX-g): the predicted
  class index (an int), or the row's logits/probabilities (an array; argmax is taken);
- candidate tasks (COPA, ReCoRD): the row's score for being the right candidate (a float,
  e.g. the positive-class logit); the highest-scoring row of each group is the answer,
  the first one on ties.

Scores are fractions in [0, 1]. `superglue_average` averages them as the leaderboard does.
"""

from __future__ import annotations

import collections
import math
import re
import string
from typing import Any, Callable, Mapping, Sequence

import numpy as np

Target = Mapping[str, Any] | int
MetricFn = Callable[[Sequence[Target], Sequence[Any]], dict[str, float]]


# --------------------------------------------------------------------------- helpers


def _label(target: Target) -> int:
  label = int(target["label"]) if isinstance(target, Mapping) else int(target)
  if label < 0:
    raise ValueError("a target has label -1 (an unlabeled test row); metrics need labeled rows")
  return label


def _class(prediction: Any) -> int:
  array = np.asarray(prediction)
  if array.ndim == 0:
    if array.dtype.kind == "f" and array != np.round(array):
      raise ValueError(f"classification prediction {prediction!r} is neither a class index "
                       "nor a vector of class scores")
    return int(array)
  return int(np.argmax(array))


def _check_lengths(targets: Sequence[Any], predictions: Sequence[Any]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
  if not targets:
    raise ValueError("no targets to score")


def _pairs(targets, predictions) -> tuple[list[int], list[int]]:
  _check_lengths(targets, predictions)
  return [_label(t) for t in targets], [_class(p) for p in predictions]


def _groups(targets: Sequence[Mapping[str, Any]]) -> dict[int, list[int]]:
  """Row positions of each group, groups in order of first appearance."""
  groups: dict[int, list[int]] = collections.defaultdict(list)
  for i, t in enumerate(targets):
    if not isinstance(t, Mapping) or "group" not in t:
      raise ValueError("grouped metrics need dict targets with a 'group' (the task's "
                       "postprocess_fn output)")
    groups[int(t["group"])].append(i)
  return groups


def _chosen(targets, predictions) -> dict[int, int]:
  """group -> position of its highest-scoring row."""
  _check_lengths(targets, predictions)
  scores = [float(np.asarray(p).reshape(())) for p in predictions]
  return {g: max(rows, key=lambda i: (scores[i], -i)) for g, rows in _groups(targets).items()}


def binary_f1(labels: Sequence[int], predicted: Sequence[int], positive: int = 1) -> float:
  """F1 of class `positive`; 0 when it is neither predicted nor gold."""
  tp = sum(1 for y, p in zip(labels, predicted) if y == positive and p == positive)
  fp = sum(1 for y, p in zip(labels, predicted) if y != positive and p == positive)
  fn = sum(1 for y, p in zip(labels, predicted) if y == positive and p != positive)
  return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


# --------------------------------------------------------------------------- metrics


def accuracy(targets: Sequence[Target], predictions: Sequence[Any]) -> dict[str, float]:
  """Fraction of rows whose predicted class is the label (BoolQ, RTE, WiC, WSC)."""
  labels, predicted = _pairs(targets, predictions)
  return {"accuracy": float(np.mean([y == p for y, p in zip(labels, predicted)]))}


def cb_metrics(targets: Sequence[Target], predictions: Sequence[Any],
               num_classes: int = 3) -> dict[str, float]:
  """CB: accuracy and the F1 of each of the 3 classes, averaged (macro-F1)."""
  labels, predicted = _pairs(targets, predictions)
  f1s = [binary_f1(labels, predicted, c) for c in range(num_classes)]
  return {"accuracy": accuracy(labels, predicted)["accuracy"], "f1_macro": float(np.mean(f1s))}


def copa_metrics(targets: Sequence[Mapping[str, Any]],
                 predictions: Sequence[Any]) -> dict[str, float]:
  """COPA: fraction of examples whose highest-scoring choice row has label 1."""
  chosen = _chosen(targets, predictions)
  return {"accuracy": float(np.mean([_label(targets[i]) == 1 for i in chosen.values()]))}


def multirc_metrics(targets: Sequence[Mapping[str, Any]],
                    predictions: Sequence[Any]) -> dict[str, float]:
  """MultiRC: F1 over all answer options (F1a) and exact match of every answer per question."""
  labels, predicted = _pairs(targets, predictions)
  exact = [all(labels[i] == predicted[i] for i in rows) for rows in _groups(targets).values()]
  return {"f1a": binary_f1(labels, predicted), "exact_match": float(np.mean(exact))}


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
  """The official ReCoRD/SQuAD normalisation: lowercase, drop punctuation and articles,
  collapse whitespace."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
  """Bag-of-tokens F1 between normalised strings."""
  pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
  common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(pred), common / len(ref)
  return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(gold))


def record_metrics(targets: Sequence[Mapping[str, Any]],
                   predictions: Sequence[Any]) -> dict[str, float]:
  """ReCoRD: max-over-gold token F1 and exact match of each query's top candidate."""
  f1s, ems = [], []
  for i in _chosen(targets, predictions).values():
    answers = list(targets[i]["answers"])
    if not answers:
      raise ValueError(f"ReCoRD query idx {tuple(targets[i]['idx'])} has no gold answers "
                       "(an unlabeled test row?)")
    candidate = targets[i]["candidate"]
    f1s.append(max(token_f1(candidate, a) for a in answers))
    ems.append(max(exact_match(candidate, a) for a in answers))
  return {"f1": float(np.mean(f1s)), "exact_match": float(np.mean(ems))}


def matthews_corrcoef(targets: Sequence[Target], predictions: Sequence[Any]) -> dict[str, float]:
  """AX-b: Matthews correlation of the two classes (0 when a margin is empty)."""
  labels, predicted = _pairs(targets, predictions)
  tp = sum(1 for y, p in zip(labels, predicted) if y == 1 and p == 1)
  tn = sum(1 for y, p in zip(labels, predicted) if y == 0 and p == 0)
  fp = sum(1 for y, p in zip(labels, predicted) if y == 0 and p == 1)
  fn = sum(1 for y, p in zip(labels, predicted) if y == 1 and p == 0)
  denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  return {"matthews_corrcoef": (tp * tn - fp * fn) / denominator if denominator else 0.0}


def axg_metrics(targets: Sequence[Mapping[str, Any]],
                predictions: Sequence[Any]) -> dict[str, float]:
  """AX-g: gender parity (fraction of pronoun-swapped pairs predicted alike) and accuracy.

  The pairs are the official rows idx 2k and 2k+1 (the same sentence with a male and a
  female pronoun); every pair must be complete.
  """
  labels, predicted = _pairs(targets, predictions)
  pairs: dict[int, list[int]] = collections.defaultdict(list)
  for t, p in zip(targets, predicted):
    pairs[int(t["idx"][0]) // 2].append(p)
  incomplete = sorted(2 * k for k, v in pairs.items() if len(v) != 2)
  if incomplete:
    raise ValueError(f"AX-g pairs starting at idx {incomplete[:5]} do not have exactly two rows")
  parity = float(np.mean([v[0] == v[1] for v in pairs.values()]))
  return {"gender_parity": parity,
          "accuracy": float(np.mean([y == p for y, p in zip(labels, predicted)]))}


METRIC_FNS: dict[str, list[MetricFn]] = {
    "boolq": [accuracy], "cb": [cb_metrics], "copa": [copa_metrics],
    "multirc": [multirc_metrics], "record": [record_metrics], "rte": [accuracy],
    "wic": [accuracy], "wsc": [accuracy], "axb": [matthews_corrcoef], "axg": [axg_metrics],
}

# The metrics the leaderboard averages into each task's score (AX-b/AX-g do not count).
SCORE_METRICS = {"boolq": ("accuracy",), "cb": ("f1_macro", "accuracy"),
                 "copa": ("accuracy",), "multirc": ("f1a", "exact_match"),
                 "record": ("f1", "exact_match"), "rte": ("accuracy",),
                 "wic": ("accuracy",), "wsc": ("accuracy",)}


def superglue_average(scores: Mapping[str, Mapping[str, float]],
                      partial: bool = False) -> float:
  """The benchmark score: each main task's metrics averaged first, then the tasks.

  `scores` maps task names ("cb" or "superglue_cb") to their metric dicts; diagnostics
  are ignored. All 8 main tasks are required unless `partial`.
  """
  by_task = {k[len("superglue_"):] if k.startswith("superglue_") else k: v
             for k, v in scores.items()}
  missing = [t for t in SCORE_METRICS if t not in by_task]
  if missing and not partial:
    raise ValueError(f"superglue_average needs every main task; missing {missing}")
  task_scores = []
  for task, names in SCORE_METRICS.items():
    if task not in by_task:
      continue
    absent = [n for n in names if n not in by_task[task]]
    if absent:
      raise ValueError(f"scores of {task!r} lack {absent}; got {sorted(by_task[task])}")
    task_scores.append(float(np.mean([by_task[task][n] for n in names])))
  if not task_scores:
    raise ValueError("superglue_average: no main task in scores")
  return float(np.mean(task_scores))
