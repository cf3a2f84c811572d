"""SuperGLUE seqio tasks `superglue_<task>` and the `superglue` mixture of the 8 main tasks.

Every task yields unbatched, unpadded rows with the features in `OUTPUT_FEATURES`:
  input_ids    int32 [L]  [CLS] segment A [SEP] (segment B [SEP]), ids of the vocabulary
                          `DataConfig.vocabulary`;
  segment_ids  int32 [L]  0 for [CLS], A and its [SEP]; 1 for B and its [SEP];
  label        int32 []   class index (`LABEL_NAMES`), 1/0 for candidate rows, -1 unlabeled;
  group        int32 []   running index of the decision the row belongs to within the split
                          (COPA example, MultiRC question, ReCoRD query; else the example);
  idx          int32 [3]  official idx: MultiRC (paragraph, question, answer), ReCoRD
                          (passage, query, -1), others (idx, -1, -1).
Tasks also pass through `candidate` (string: COPA choice, ReCoRD entity, MultiRC answer,
WiC word, WSC noun phrase), `candidate_index` (int32: the row's position in its group, so
COPA's choice index) and `answers` (string [n], ReCoRD's gold answers) for `postprocess`,
metrics and submissions; the mixture drops them (seqio keeps only the output features).
Input formats: `ernie3_jax/superglue/formats.py`.

Data comes from `superglue_sources.read_split` with the gin-configurable default source
`superglue_source.path` ("tfds" or an official-layout directory), read when a dataset is
built. Rows longer than `sequence_length["input_ids"]` are truncated (the longer segment
loses its tail first), never dropped; `STATS[task_name]` counts rows, truncated rows and
tokens cut, and the counts are logged at the end of each pass.

The mixture rate of a task is its number of official training decisions
(`TRAIN_EXAMPLES`: examples; MultiRC questions; ReCoRD queries), examples-proportional as
in T5, optionally capped by `superglue_mixing_rate.maximum`, or 1 for every task with
`superglue_mixing_rate.equal = True`.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from absl import logging
from ernie3_jax.runtime import tf_runtime  # noqa: F401  (first: hides GPUs from TensorFlow)
import gin
import numpy as np
import seqio

from ernie3_jax.data import data_config as dc
from ernie3_jax.data.knowledge_masking import PreprocessStats
from ernie3_jax.data.vocabulary import UNK_ID
from ernie3_jax.superglue import formats
from ernie3_jax.superglue import metrics
from ernie3_jax.superglue import sources
from ernie3_jax.runtime.tf_runtime import tf

TASK_NAMES = tuple(f"superglue_{t}" for t in sources.TASKS)
MIXTURE_NAME = "superglue"
MIXTURE_TASKS = tuple(f"superglue_{t}" for t in sources.MAIN_TASKS)
MIN_SEQUENCE_LENGTH = 8

NUM_CLASSES = {name: 3 if name == "superglue_cb" else 2 for name in TASK_NAMES}
# The official label vocabulary of each task, indexed by `label`. COPA's official label is
# the index of the right choice and MultiRC's is 0/1; ReCoRD's rows are candidates
# (False/True) and its submissions carry the chosen entity's text.
LABEL_NAMES: dict[str, tuple[Any, ...]] = {
    "superglue_boolq": (False, True),
    "superglue_cb": sources.STRING_LABELS["cb"],
    "superglue_copa": (0, 1),
    "superglue_multirc": (0, 1),
    "superglue_record": (False, True),
    "superglue_rte": sources.STRING_LABELS["rte"],
    "superglue_wic": (False, True),
    "superglue_wsc": (False, True),
    "superglue_axb": sources.STRING_LABELS["axb"],
    "superglue_axg": sources.STRING_LABELS["axg"],
}
# Official training decisions per task (SuperGLUE v2 files): the mixture's default rates.
TRAIN_EXAMPLES = {"superglue_boolq": 9427, "superglue_cb": 250, "superglue_copa": 400,
                  "superglue_multirc": 5100, "superglue_record": 100730,
                  "superglue_rte": 2490, "superglue_wic": 5428, "superglue_wsc": 554}

STATS: dict[str, PreprocessStats] = {name: PreprocessStats() for name in TASK_NAMES}


def _feature(rank: int) -> seqio.Feature:
  return seqio.Feature(seqio.PassThroughVocabulary(size=0), add_eos=False, required=True,
                       dtype=tf.int32, rank=rank)


OUTPUT_FEATURES = {"input_ids": _feature(1), "segment_ids": _feature(1), "label": _feature(0),
                   "group": _feature(0), "idx": _feature(1)}

_TEXT_SIGNATURE = {
    "text_a": tf.TensorSpec([], tf.string), "text_b": tf.TensorSpec([], tf.string),
    "has_b": tf.TensorSpec([], tf.bool), "label": tf.TensorSpec([], tf.int32),
    "group": tf.TensorSpec([], tf.int32), "idx": tf.TensorSpec([3], tf.int32),
    "candidate": tf.TensorSpec([], tf.string), "candidate_index": tf.TensorSpec([], tf.int32),
    "answers": tf.TensorSpec([None], tf.string), "keep": tf.TensorSpec([2], tf.int32),
}
_ROW_SIGNATURE = {
    "input_ids": tf.TensorSpec([None], tf.int32), "segment_ids": tf.TensorSpec([None], tf.int32),
    "label": tf.TensorSpec([], tf.int32), "group": tf.TensorSpec([], tf.int32),
    "idx": tf.TensorSpec([3], tf.int32), "candidate": tf.TensorSpec([], tf.string),
    "candidate_index": tf.TensorSpec([], tf.int32), "answers": tf.TensorSpec([None], tf.string),
}


def task_of(task_name: str) -> str:
  """"superglue_cb" -> "cb"."""
  return sources.canonical_task(task_name)


def text_rows(task: str, split: str, source: str | None = None) -> Iterator[dict[str, Any]]:
  """The formatted rows of a split, before tokenisation, with their running group ids.

  A ReCoRD query without candidate entities has no row to score and is counted in
  `STATS` as queries_without_candidates.
  """
  task = sources.canonical_task(task)
  stats = STATS[f"superglue_{task}"]
  markers = formats.SpanMarkers()
  group = 0
  for where, example in sources.read_located(task, split, source):
    for decision in _format(task, example, markers, where):
      if not decision:
        stats.add(queries_without_candidates=1)
        continue
      for position, row in enumerate(decision):
        yield {"text_a": row.text_a, "text_b": row.text_b or "", "has_b": row.text_b is not None,
               "label": row.label, "group": group, "idx": np.asarray(row.idx, np.int32),
               "candidate": row.candidate, "candidate_index": position,
               "answers": np.asarray(row.answers, dtype=object),
               "keep": np.asarray(row.keep or (-1, -1), np.int32)}
      group += 1


def _format(task: str, example: dict[str, Any], markers: formats.SpanMarkers,
            where: str) -> list[list[formats.FormattedRow]]:
  """`formats.format_example`, its errors naming the example's file and line."""
  try:
    return formats.format_example(task, example, markers)
  except (ValueError, KeyError) as e:
    raise sources.located_error(where, e) from None


def check_split(task: str, split: str, source: str | None = None) -> int:
  """Reads and formats every example of a split (no tokenising: cheap next to a model's
  pass over it) and returns its number of rows, so that a bad row anywhere in the file
  is an error naming its file and line before any model work."""
  task = sources.canonical_task(task)
  markers = formats.SpanMarkers()
  return sum(len(decision) for where, example in sources.read_located(task, split, source)
             for decision in _format(task, example, markers, where))


def _source_fn(task: str):
  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # rows come in official order; seqio shuffles after preprocessing

    def rows():
      for row in text_rows(task, split):
        row = dict(row)
        row["answers"] = [a.encode("utf-8") for a in row["answers"]]
        yield row

    return tf.data.Dataset.from_generator(rows, output_signature=_TEXT_SIGNATURE)
  return dataset_fn


def resolve_length(sequence_length: int | Mapping[str, int] | None) -> int | None:
  """seqio's {feature: length} (its "input_ids" entry), an int, or None (no limit)."""
  if isinstance(sequence_length, Mapping):
    sequence_length = sequence_length.get("input_ids")
  if sequence_length is None:
    return None
  if isinstance(sequence_length, bool) or int(sequence_length) != sequence_length:
    raise ValueError(f"sequence_length['input_ids'] must be an integer, got {sequence_length!r}")
  if sequence_length < MIN_SEQUENCE_LENGTH:
    raise ValueError(f"sequence_length['input_ids'] must be >= {MIN_SEQUENCE_LENGTH} for "
                     f"SuperGLUE, got {sequence_length}")
  return int(sequence_length)


def fit_segments(segments: list[list[int]], budget: int) -> tuple[list[list[int]], int]:
  """Cuts the tail of the longest segment until the total fits; returns (segments, cut).

  Every non-empty segment keeps at least one token.
  """
  if budget < len(segments):
    raise ValueError(f"a budget of {budget} tokens cannot hold {len(segments)} segments")
  lengths = [len(s) for s in segments]
  excess = sum(lengths) - budget
  cut_total = max(0, excess)
  while excess > 0:
    i = int(np.argmax(lengths))
    cut = min(excess, lengths[i] - 1)  # > 0: sum > budget >= len(segments)
    lengths[i] -= cut
    excess -= cut
  return [s[:n] for s, n in zip(segments, lengths)], cut_total


def fit_around(before: list[int], focus: list[int], after: list[int],
               budget: int) -> tuple[list[int], int]:
  """before + focus + after within `budget`, cutting the longer side first (`before` from
  its start, `after` from its end) and `focus`'s tail only when the sides are gone."""
  excess = len(before) + len(focus) + len(after) - budget
  cut_total = max(0, excess)
  while excess > 0 and (before or after):
    side_cut = min(excess, max(len(before), len(after)) - min(len(before), len(after))) or 1
    if len(before) >= len(after):
      before = before[side_cut:]
    else:
      after = after[:len(after) - side_cut]
    excess -= side_cut
  if excess > 0:
    focus = focus[:len(focus) - excess]
  return before + focus + after, cut_total


def _encode(vocab, text: str) -> list[int]:
  # Special pieces typed in the text ("[SEP]") become <unk>: only the packing adds them.
  specials = {vocab.cls_id, vocab.sep_id, vocab.mask_id}
  return [UNK_ID if t in specials else t for t in vocab.tokenizer.encode(text)]


def encode_pair(vocab, text_a: str, text_b: str | None, length: int | None,
                keep: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
  """(input_ids, segment_ids, tokens cut) of [CLS] a [SEP] (b [SEP]) within `length`.

  `keep` = characters [start, end) of a one-segment `text_a` that truncation cuts around
  rather than through (the three parts are encoded apart, at word boundaries).
  """
  cut = 0
  if keep is not None and text_b is None:
    start, end = keep
    parts = [_encode(vocab, t) for t in (text_a[:start], text_a[start:end], text_a[end:])]
    if length is None:
      segments = [parts[0] + parts[1] + parts[2]]
    else:
      ids, cut = fit_around(*parts, length - 2)
      segments = [ids]
  else:
    segments = [_encode(vocab, t) for t in ([text_a] if text_b is None else [text_a, text_b])]
    if length is not None:
      segments, cut = fit_segments(segments, length - 1 - len(segments))
  ids, seg = [vocab.cls_id], [0]
  for i, piece in enumerate(segments):
    ids += piece + [vocab.sep_id]
    seg += [i] * (len(piece) + 1)
  return np.asarray(ids, np.int32), np.asarray(seg, np.int32), cut


def tokenize_rows(dataset: tf.data.Dataset, sequence_length: Any, *, vocab,
                  stats: PreprocessStats, name: str = "superglue") -> tf.data.Dataset:
  """Text rows (see `text_rows`) -> the task's rows; truncations counted in `stats`."""
  length = resolve_length(sequence_length)

  def rows():
    counts = PreprocessStats()
    for ex in dataset.as_numpy_iterator():
      text_b = ex["text_b"].decode("utf-8") if ex["has_b"] else None
      keep = tuple(int(k) for k in ex["keep"]) if ex["keep"][0] >= 0 else None
      ids, segments, cut = encode_pair(vocab, ex["text_a"].decode("utf-8"), text_b, length,
                                       keep)
      # The shared counters are updated per row, so a pass stopped early still counts.
      for c in (counts, stats):
        c.add(rows=1, truncated_rows=int(cut > 0), truncated_tokens=cut)
      yield {"input_ids": ids, "segment_ids": segments, "label": ex["label"],
             "group": ex["group"], "idx": ex["idx"], "candidate": ex["candidate"],
             "candidate_index": ex["candidate_index"], "answers": ex["answers"]}
    done = counts.as_dict()
    logging.info("%s: %d rows, %d truncated to %s tokens (%d tokens cut)", name,
                 done.get("rows", 0), done.get("truncated_rows", 0), length,
                 done.get("truncated_tokens", 0))

  return tf.data.Dataset.from_generator(rows, output_signature=_ROW_SIGNATURE)


def _preprocessor(task_name: str):
  def tokenize(dataset: tf.data.Dataset, sequence_length=None) -> tf.data.Dataset:
    return tokenize_rows(dataset, sequence_length,
                         vocab=dc.vocabulary(dc.current().vocabulary),
                         stats=STATS[task_name], name=task_name)
  return tokenize


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def postprocess(output: Any, example: Mapping[str, Any] | None = None,
                is_target: bool = False) -> Any:
  """seqio postprocess_fn: targets become the dicts the metrics read; predictions pass."""
  if not is_target:
    return output
  if example is None:
    raise ValueError("SuperGLUE targets are postprocessed from their example; pass example=")
  return {"label": int(example["label"]), "group": int(example["group"]),
          "idx": tuple(int(i) for i in np.asarray(example["idx"]).reshape(-1)),
          "candidate": _text(example.get("candidate", b"")),
          "candidate_index": int(example.get("candidate_index", 0)),
          "answers": [_text(a) for a in np.asarray(example.get("answers", [])).reshape(-1)]}


@gin.configurable("superglue_mixing_rate")
def mixing_rate(task: seqio.Task, maximum: float | None = None, equal: bool = False) -> float:
  """Rate of a task in the `superglue` mixture (see the module docstring)."""
  if equal:
    return 1.0
  rate = float(TRAIN_EXAMPLES[task.name])
  return rate if maximum is None else min(rate, float(maximum))


def register() -> None:
  for name in TASK_NAMES:
    task = task_of(name)
    splits = ("test",) if task in sources.DIAGNOSTIC_TASKS else sources.SPLITS
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(_source_fn(task), splits=splits),
        preprocessors=[_preprocessor(name)], output_features=OUTPUT_FEATURES,
        postprocess_fn=postprocess, metric_fns=metrics.METRIC_FNS[task])
  seqio.MixtureRegistry.add(MIXTURE_NAME, [(name, mixing_rate) for name in MIXTURE_TASKS])


if MIXTURE_NAME not in seqio.MixtureRegistry.names():
  register()
