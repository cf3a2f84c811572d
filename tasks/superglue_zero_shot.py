"""seqio tasks `superglue_<task>_zero_shot`: rank classification rows for the NLG stack.

A row is one (prompt, candidate) pair: `inputs` is the (few-shot) prompt, `targets`
the candidate continuation, and `group` / `candidate` / `is_correct` place it in its
question (`choice` names the candidate: ReCoRD's entity, else the verbaliser; `idx` is
the official idx as JSON, as `sources.official_idx` writes it). The score metric
functions take one log-likelihood per row (seqio's "score" path), pick the best
candidate per group and compute the task's metrics.
Prompts longer than `ZeroShotConfig.max_length` minus the candidate lose their
beginning; `truncated_prompts` counts the questions that did.

Raw rows come from `ernie3_jax.superglue.sources.read_split`
(`ZeroShotConfig.source`: "tfds" or a directory in the official layout).
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any, Iterator, Mapping, Sequence

import gin

from ernie3_jax.runtime import tf_runtime  # noqa: F401  (first: hides GPUs from TensorFlow)
import numpy as np
import seqio

from ernie3_jax.data import data_config as dc
from ernie3_jax.data.vocabulary import EMBEDDED_VOCAB
from ernie3_jax.superglue import metrics as superglue_metrics
from ernie3_jax.superglue import prompts as prompts_lib
from ernie3_jax.superglue import sources as superglue_sources
from ernie3_jax.runtime.tf_runtime import tf

SPLITS = ("train", "validation", "test")
# AX-b and AX-g ship one labelled split, which TFDS and the official files call test.
DIAGNOSTIC_SPLITS = ("test",)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ZeroShotConfig:
  """How the zero-shot rows are built (read when a dataset is built, like DataConfig)."""

  source: str = "tfds"  # or a directory in the official SuperGLUE layout
  num_shots: int = 0
  shot_seed: int = 0
  shot_split: str = "train"
  max_length: int = 128  # prompt + candidate pieces (the demo trains 128-piece contexts)


def task_name(task: str) -> str:
  return f"superglue_{task}_zero_shot"


def read_rows(task: str, split: str, source: str) -> Iterator[Mapping[str, Any]]:
  """Raw rows of a split (the shared SuperGLUE reader)."""
  return superglue_sources.read_split(task, split, source)


def read_questions(task: str, split: str, source: str) -> list[prompts_lib.Question]:
  """Every question of a split; an example no prompt can be built for is an error naming
  its file and line."""
  out = []
  for where, row in superglue_sources.read_located(task, split, source):
    try:
      out.extend(prompts_lib.BUILDERS[task](row))
    except (ValueError, KeyError) as e:
      raise superglue_sources.located_error(where, e) from None
  return out


def check_split(task: str, split: str, source: str, num_shots: int = 0,
                shot_split: str = "train") -> int:
  """Reads every example of `split` (and of `shot_split` for few-shot) and builds its
  questions, as the task's dataset will, so that a bad row anywhere, an empty split or
  too few demonstrations is an error (naming the file) before any model work. Returns
  the number of questions."""
  questions = _questions(task, split, source)
  if num_shots:
    pool = questions if shot_split == split else _questions(task, shot_split, source)
    labelled = sum(1 for q in pool if q.correct)
    # From the question's own split, a question is never its own demonstration.
    if labelled < num_shots + (shot_split == split):
      raise ValueError(f"{task_name(task)}: num_shots={num_shots} but the {shot_split!r} "
                       f"split ({_where(task, shot_split, source)}) has {labelled} labelled "
                       "demonstrations")
  return len(questions)


def _questions(task: str, split: str, source: str) -> list[prompts_lib.Question]:
  questions = read_questions(task, split, source)
  if not questions:
    raise ValueError(f"{task_name(task)}: the {split!r} split is empty "
                     f"({_where(task, split, source)})")
  return questions


def _where(task: str, split: str, source: str) -> str:
  """The file a split is read from, or its source, for error messages."""
  if source == superglue_sources.TFDS_PREFIX or source.startswith(
      superglue_sources.TFDS_PREFIX + ":"):
    return f"source {source!r}"
  return superglue_sources.split_path(task, split, source)


def build_rows(task: str, questions: Sequence[prompts_lib.Question],
               pool: Sequence[prompts_lib.Question] = (), num_shots: int = 0,
               shot_seed: int = 0, same_split: bool = False) -> dict[str, list]:
  """Columns of the (prompt, candidate) rows of `questions`, demonstrations prepended."""
  cols: dict[str, list] = collections.defaultdict(list)
  for position, q in enumerate(questions):
    shots = prompts_lib.choose_shots(pool, num_shots, shot_seed, position,
                                   exclude_key=q.key if same_split else None)
    q = prompts_lib.with_shots(q, shots)
    gold = q.label if task == "record" else ()
    for c, cand in enumerate(q.candidates):
      cols["inputs"].append(q.prompt)
      cols["targets"].append(cand)
      cols["group"].append(position)
      cols["candidate"].append(c)
      cols["is_correct"].append(int(c in q.correct))
      cols["labelled"].append(int(q.labelled))
      cols["key"].append(q.key)
      cols["idx"].append(json.dumps(superglue_sources.official_idx(task, q.idx)))
      cols["choice"].append(q.names[c] if q.names else cand.strip())
      cols["gold"].append("\t".join(gold or ()))
  return cols


def _source_fn(task: str):
  def dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None):
    del shuffle_files, seed  # rows keep file order: groups must stay contiguous
    cfg = ZeroShotConfig()
    questions = _questions(task, split, cfg.source)
    pool: list[prompts_lib.Question] = []
    if cfg.num_shots:
      pool = (questions if cfg.shot_split == split else
              _questions(task, cfg.shot_split, cfg.source))
    cols = build_rows(task, questions, pool, cfg.num_shots, cfg.shot_seed,
                      same_split=cfg.shot_split == split)
    return tf.data.Dataset.from_tensor_slices(
        {k: tf.constant(v, tf.string if isinstance(v[0], str) else tf.int32)
         for k, v in cols.items()})
  return dataset_fn


def fit_to_length(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Cuts `inputs` from the left so inputs + targets fit ZeroShotConfig.max_length."""
  max_length = ZeroShotConfig().max_length

  def fit(ex):
    room = max_length - tf.size(ex["targets"])
    tf.debugging.assert_positive(room, message=(
        f"a candidate fills ZeroShotConfig.max_length={max_length}; raise it"))
    ex = dict(ex)
    length = tf.size(ex["inputs"])
    ex["inputs"] = ex["inputs"][tf.maximum(length - room, 0):]
    ex["truncated"] = tf.cast(length > room, tf.int32)
    return ex

  return dataset.map(fit, num_parallel_calls=tf.data.AUTOTUNE)


def row_info(output: Any, example: Mapping[str, Any] | None = None,
             is_target: bool = False) -> Any:
  """Postprocessor: a target becomes its row's place in its question."""
  if not is_target or example is None:
    return output
  text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)
  return {"group": int(example["group"]), "candidate": int(example["candidate"]),
          "is_correct": bool(example["is_correct"]), "labelled": bool(example["labelled"]),
          "key": text(example["key"]), "choice": text(example["choice"]),
          "gold": [g for g in text(example["gold"]).split("\t") if g],
          "truncated": bool(example.get("truncated", 0))}


# -- metrics over per-row scores ------------------------------------------------


@dataclasses.dataclass
class Decided:
  """One question: its rows' infos and the index of the best-scoring candidate."""
  rows: list[dict]
  best: int

  @property
  def right(self) -> bool:
    return self.rows[self.best]["is_correct"]


def decide(targets: Sequence[Mapping[str, Any]], scores: Sequence[float]) -> list[Decided]:
  """Groups rows by question (in order) and picks the argmax of each."""
  if len(targets) != len(scores):
    raise ValueError(f"{len(targets)} rows but {len(scores)} scores")
  groups: dict[int, list[int]] = collections.OrderedDict()
  for i, t in enumerate(targets):
    groups.setdefault(t["group"], []).append(i)
  out = []
  for rows in groups.values():
    best = int(np.argmax([scores[i] for i in rows]))  # ties: the first candidate
    out.append(Decided([dict(targets[i]) for i in rows], best))
  return out


def _labelled(decided: list[Decided]) -> list[Decided]:
  labelled = [d for d in decided if d.rows[0]["labelled"]]
  if not labelled:
    raise ValueError("no labelled question: metrics need a labelled split")
  return labelled


def _gold(d: Decided) -> int:
  return next(r["candidate"] for r in d.rows if r["is_correct"])


# Official class index (superglue_metrics' label convention, TFDS ClassLabel order) of
# each task's candidates in prompts.py order: BoolQ/WSC (" yes", " no") -> True=1,
# False=0; CB (" true", " false", " neither") is already (entailment, contradiction,
# neutral); RTE/AX (" yes", " no") is (entailment, not_entailment); WiC (" same",
# " different") and MultiRC (" true", " false") -> True=1.
_CLASS_OF_CANDIDATE = {"boolq": (1, 0), "wsc": (1, 0), "wic": (1, 0), "multirc": (1, 0),
                       "cb": (0, 1, 2), "rte": (0, 1), "axb": (0, 1), "axg": (0, 1)}


def metric_fn(task: str):
  """The score metric of `task`: argmax per question, then the official metrics."""
  official = superglue_metrics.METRIC_FNS[task]

  def fn(targets: Sequence[Mapping[str, Any]], scores: Sequence[float]) -> dict[str, float]:
    decided = decide(targets, scores)
    labelled = _labelled(decided)
    # A MultiRC decision is one answer option; its question is the key's "p/q" part.
    questions = ({d.rows[0]["key"].rsplit("/", 1)[0] for d in labelled} if task == "multirc"
                 else labelled)
    out = {"accuracy": float(np.mean([d.right for d in labelled])),
           "num_questions": float(len(questions)), "num_decisions": float(len(labelled)),
           "truncated_prompts": float(sum(d.rows[0]["truncated"] for d in decided))}
    if task in _CLASS_OF_CANDIDATE:  # one prediction per question, a class index
      cls = _CLASS_OF_CANDIDATE[task]
      # MultiRC's exact match groups the answers of one question (key "p/q/a").
      questions = {k: i for i, k in enumerate(dict.fromkeys(
          d.rows[0]["key"].rsplit("/", 1)[0] for d in labelled))}
      metric_targets = [{"label": cls[_gold(d)], "idx": (_int_key(d.rows[0]["key"]),),
                         "group": questions[d.rows[0]["key"].rsplit("/", 1)[0]]}
                        for d in labelled]
      predictions = [cls[d.best] for d in labelled]
    else:  # COPA, ReCoRD: one score per candidate row
      metric_targets, predictions = [], []
      for g, d in enumerate(labelled):
        for r in d.rows:
          metric_targets.append({"group": g, "label": int(r["is_correct"]),
                                 "candidate": r["choice"], "answers": r["gold"],
                                 "idx": (_int_key(r["key"]),)})
        predictions.extend(1.0 if i == d.best else 0.0 for i in range(len(d.rows)))
    for official_fn in official:
      out.update(official_fn(metric_targets, predictions))
    return out

  fn.__name__ = f"{task}_zero_shot_metrics"
  return fn


def _int_key(key: str) -> int:
  head = key.split("/", 1)[0]
  return int(head) if head.lstrip("-").isdigit() else -1


def register() -> None:
  # The model's vocabulary: rows are scored by a model trained with it.
  vocab = dc.vocabulary(EMBEDDED_VOCAB)
  features = {k: seqio.Feature(vocab, add_eos=False, required=True)
              for k in ("inputs", "targets")}
  for task in prompts_lib.TASKS:
    splits = DIAGNOSTIC_SPLITS if task in ("axb", "axg") else SPLITS
    seqio.TaskRegistry.add(
        task_name(task), source=seqio.FunctionDataSource(_source_fn(task), splits=splits),
        preprocessors=[seqio.preprocessors.tokenize, fit_to_length],
        output_features=features, postprocess_fn=row_info,
        metric_fns=[metric_fn(task)])


if task_name("boolq") not in seqio.TaskRegistry.names():
  register()
