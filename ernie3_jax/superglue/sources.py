"""Reading SuperGLUE: the official jsonl layout or prepared TFDS `super_glue`, as one form.

`read_split(task, split, source)` yields one dict per official example, in the shape of
the official jsonl files, whichever source it reads, with these normalisations (so that
both sources give identical dicts for the same data):

- only the fields both sources carry are kept (e.g. WiC's "version", AX-b's diagnostic
  categories and AX-g's "pair_id" are dropped);
- ids and character/word offsets are Python ints (AX-b's jsonl writes "idx" as a string);
- boolean labels (BoolQ, WiC, WSC, MultiRC answers) are Python bools; the jsonl may hold
  JSON booleans, the strings "true"/"false" (any case) or 0/1;
- CB, RTE, AX-b and AX-g labels stay strings from the official label set; COPA's label is
  the int index of the right choice (0: choice1, 1: choice2);
- rows without a label (test splits) have no "label" key;
- ReCoRD is the one task whose jsonl holds more than TFDS keeps: its dicts carry
  `passage.entities` as the sorted distinct entity strings (not character spans) and
  `qas[i].answers` as the sorted distinct answer strings (absent on test rows).

Shapes, per task (plus "idx" and "label" where noted above):
  boolq: question, passage            cb, rte, axg: premise, hypothesis
  copa: premise, choice1, choice2, question ("cause" or "effect")
  wic: word, sentence1, sentence2, start1, end1, start2, end2 (end exclusive)
  wsc: text, target {span1_index, span1_text, span2_index, span2_text} (word indices)
  axb: sentence1, sentence2
  multirc: passage {text, questions [{idx, question, answers [{idx, text, label}]}]}
  record: passage {text, entities [str]}, qas [{idx, query, answers [str]}]

A source is "tfds" (TFDS `super_glue/<config>` from the default data dir), "tfds:DATA_DIR",
or a directory in the official layout `<Task>/train.jsonl`, `val.jsonl`, `test.jsonl`
(diagnostics: `AX-b/AX-b.jsonl`, `AX-g/AX-g.jsonl`). TFDS is read with download=False, so
it works offline once prepared (`tfds build super_glue/<config>` where there is network).
TFDS stores examples in its own order; they come back sorted by idx, which is file order
for the official files.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator

import gin

from ernie3_jax.runtime import storage

TASKS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc", "axb", "axg")
MAIN_TASKS = TASKS[:8]
DIAGNOSTIC_TASKS = ("axb", "axg")
SPLITS = ("train", "validation", "test")

OFFICIAL_DIRS = {"boolq": "BoolQ", "cb": "CB", "copa": "COPA", "multirc": "MultiRC",
                 "record": "ReCoRD", "rte": "RTE", "wic": "WiC", "wsc": "WSC",
                 "axb": "AX-b", "axg": "AX-g"}
SPLIT_FILES = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}
# TFDS's "wsc" config is the raw data; "wsc.fixed" repairs span texts that are not
# substrings of the text, which the inline span markers need.
TFDS_CONFIGS = {t: t for t in TASKS} | {"wsc": "wsc.fixed"}

STRING_LABELS = {
    "cb": ("entailment", "contradiction", "neutral"),
    "rte": ("entailment", "not_entailment"),
    "axb": ("entailment", "not_entailment"),
    "axg": ("entailment", "not_entailment"),
}
BOOL_LABEL_TASKS = ("boolq", "wic", "wsc")  # and MultiRC's answers
STRING_IDX_TASKS = ("axb",)  # whose official files write "idx" as a string of digits
TFDS_PREFIX = "tfds"


class SuperGlueDataError(ValueError):
  """A SuperGLUE file or dataset row that does not have the official shape."""


@gin.configurable
def superglue_source(path: str = "tfds") -> str:
  """The default source of `read_split`: "tfds", "tfds:DATA_DIR" or an official-layout dir."""
  return path


def canonical_task(task: str) -> str:
  """"cb" or "superglue_cb" -> "cb"; unknown names raise."""
  name = task[len("superglue_"):] if task.startswith("superglue_") else task
  if name not in TASKS:
    raise ValueError(f"unknown SuperGLUE task {task!r}; expected one of {TASKS}")
  return name


def _check_split(task: str, split: str) -> None:
  allowed = ("test",) if task in DIAGNOSTIC_TASKS else SPLITS
  if split not in allowed:
    raise ValueError(f"SuperGLUE task {task!r} has no split {split!r}; expected one of {allowed}")


def split_path(task: str, split: str, directory: str) -> str:
  """The official file of (task, split) under an official-layout `directory`."""
  task = canonical_task(task)
  _check_split(task, split)
  folder = OFFICIAL_DIRS[task]
  name = f"{folder}.jsonl" if task in DIAGNOSTIC_TASKS else SPLIT_FILES[split]
  return os.path.join(directory, folder, name)


def read_split(task: str, split: str, source: str | None = None) -> Iterator[dict[str, Any]]:
  """The normalised official examples of one split (see the module docstring).

  `source` defaults to the gin-configurable `superglue_source()`.
  """
  return (row for _, row in read_located(task, split, source))


def read_located(task: str, split: str, source: str | None = None
                 ) -> Iterator[tuple[str, dict[str, Any]]]:
  """(where, example) for every example of `read_split`: `where` names it in errors
  ("<file>:<line>", or the TFDS dataset, split and example number)."""
  task = canonical_task(task)
  _check_split(task, split)
  source = superglue_source() if source is None else source
  if source == TFDS_PREFIX or source.startswith(TFDS_PREFIX + ":"):
    data_dir = source[len(TFDS_PREFIX) + 1:] or None
    return _read_tfds(task, split, data_dir)
  if not storage.isdir(source):
    raise FileNotFoundError(f"SuperGLUE source {source!r} is neither 'tfds', 'tfds:DATA_DIR' "
                            "nor a directory in the official layout")
  return _read_jsonl(task, split_path(task, split, source))


def official_idx(task: str, idx: Any) -> Any:
  """A row's idx triple (example, question or query, answer; -1 where unused) -> its idx as
  the official files write it: MultiRC {"paragraph", "question", "answer"}, ReCoRD
  {"passage", "query"}, AX-b a string of digits, the others an int."""
  task = canonical_task(task)
  idx = idx.tolist() if hasattr(idx, "tolist") else idx  # numpy arrays and scalars
  ids = [int(i) for i in (idx if isinstance(idx, (list, tuple)) else [idx])] + [-1, -1]
  if task == "multirc":
    return {"paragraph": ids[0], "question": ids[1], "answer": ids[2]}
  if task == "record":
    return {"passage": ids[0], "query": ids[1]}
  return str(ids[0]) if task in STRING_IDX_TASKS else ids[0]


def located_error(where: str, error: Exception) -> SuperGlueDataError:
  """`error` (raised while using the example at `where`) as a SuperGlueDataError naming it."""
  message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  return SuperGlueDataError(f"{where}: {message}")


# --------------------------------------------------------------------------- jsonl


def _read_jsonl(task: str, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
  if not storage.isfile(path):
    raise FileNotFoundError(f"SuperGLUE file {path!r} does not exist")
  with storage.open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise SuperGlueDataError(f"{where}: invalid JSON ({e.msg.removesuffix(' at')} at column {e.colno})") from None
      yield where, normalise(task, row, where)


# --------------------------------------------------------------------------- normalising


def _field(row: Any, name: str, where: str) -> Any:
  if not isinstance(row, dict):
    raise SuperGlueDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
  if name not in row:
    raise SuperGlueDataError(f"{where}: missing field {name!r}")
  return row[name]


def _text(row: Any, name: str, where: str) -> str:
  value = _field(row, name, where)
  if not isinstance(value, str):
    raise SuperGlueDataError(f"{where}: field {name!r} must be a string, got {value!r}")
  return value


def _int(row: Any, name: str, where: str) -> int:
  value = _field(row, name, where)
  # AX-b writes idx as a string of digits; bools are not ids.
  if isinstance(value, str) and value.strip().lstrip("-").isdigit():
    return int(value)
  if isinstance(value, bool) or not isinstance(value, int):
    raise SuperGlueDataError(f"{where}: field {name!r} must be an integer, got {value!r}")
  return value


def to_bool(value: Any, where: str) -> bool:
  """JSON booleans, "true"/"false" strings (any case) and 0/1 -> bool; anything else raises."""
  if isinstance(value, bool):
    return value
  if isinstance(value, str) and value.lower() in ("true", "false"):
    return value.lower() == "true"
  if isinstance(value, int) and value in (0, 1):
    return bool(value)
  raise SuperGlueDataError(f"{where}: unknown boolean label {value!r}; expected true/false")


def _label(task: str, row: dict[str, Any], where: str) -> dict[str, Any]:
  if "label" not in row or row["label"] is None:
    return {}
  value = row["label"]
  if task in BOOL_LABEL_TASKS:
    return {"label": to_bool(value, where)}
  if task == "copa":
    if isinstance(value, bool) or value not in (0, 1):
      raise SuperGlueDataError(f"{where}: unknown COPA label {value!r}; expected 0 or 1")
    return {"label": int(value)}
  names = STRING_LABELS[task]
  if value not in names:
    raise SuperGlueDataError(f"{where}: unknown {task} label {value!r}; expected one of {names}")
  return {"label": value}


def _simple(fields: tuple[str, ...], ints: tuple[str, ...] = ()) -> Callable:
  def build(task: str, row: Any, where: str) -> dict[str, Any]:
    out = {name: _text(row, name, where) for name in fields}
    out.update({name: _int(row, name, where) for name in ints})
    out["idx"] = _int(row, "idx", where)
    out.update(_label(task, row, where))
    return out
  return build


def _wsc(task: str, row: Any, where: str) -> dict[str, Any]:
  target = _field(row, "target", where)
  out = {"text": _text(row, "text", where),
         "target": {"span1_index": _int(target, "span1_index", where + " target"),
                    "span1_text": _text(target, "span1_text", where + " target"),
                    "span2_index": _int(target, "span2_index", where + " target"),
                    "span2_text": _text(target, "span2_text", where + " target")},
         "idx": _int(row, "idx", where)}
  out.update(_label(task, row, where))
  return out


def _multirc(task: str, row: Any, where: str) -> dict[str, Any]:
  del task
  passage = _field(row, "passage", where)
  questions = []
  for q_num, q in enumerate(_field(passage, "questions", where)):
    q_where = f"{where} question {q_num}"
    answers = []
    for a_num, a in enumerate(_field(q, "answers", q_where)):
      a_where = f"{q_where} answer {a_num}"
      answer = {"idx": _int(a, "idx", a_where), "text": _text(a, "text", a_where)}
      if a.get("label") is not None:
        answer["label"] = to_bool(a["label"], a_where)
      answers.append(answer)
    questions.append({"idx": _int(q, "idx", q_where), "question": _text(q, "question", q_where),
                      "answers": answers})
  return {"idx": _int(row, "idx", where),
          "passage": {"text": _text(passage, "text", where + " passage"),
                      "questions": questions}}


def _record_strings(items: Any, text: str, where: str, what: str) -> list[str]:
  """Entity/answer lists: official {start, end (inclusive)[, text]} dicts or plain strings."""
  if not isinstance(items, list):
    raise SuperGlueDataError(f"{where}: {what} must be a list, got {items!r}")
  out = set()
  for item in items:
    if isinstance(item, str):
      out.add(item)
    elif isinstance(item, dict) and "text" in item:
      out.add(_text(item, "text", where))
    elif isinstance(item, dict):
      start, end = _int(item, "start", where), _int(item, "end", where)
      if not 0 <= start <= end < len(text):
        raise SuperGlueDataError(f"{where}: {what} span [{start}, {end}] outside the passage")
      out.add(text[start:end + 1])
    else:
      raise SuperGlueDataError(f"{where}: bad {what} item {item!r}")
  return sorted(out)


def _record(task: str, row: Any, where: str) -> dict[str, Any]:
  del task
  passage = _field(row, "passage", where)
  text = _text(passage, "text", where + " passage")
  qas = []
  for q_num, qa in enumerate(_field(row, "qas", where)):
    q_where = f"{where} query {q_num}"
    query = {"idx": _int(qa, "idx", q_where), "query": _text(qa, "query", q_where)}
    if "@placeholder" not in query["query"]:
      raise SuperGlueDataError(f"{q_where}: query has no @placeholder")
    if qa.get("answers") is not None:
      query["answers"] = _record_strings(qa["answers"], text, q_where, "answers")
    qas.append(query)
  return {"idx": _int(row, "idx", where),
          "passage": {"text": text, "entities": _record_strings(
              _field(passage, "entities", where), text, where, "entities")},
          "qas": qas}


_NORMALISERS = {
    "boolq": _simple(("question", "passage")),
    "cb": _simple(("premise", "hypothesis")),
    "rte": _simple(("premise", "hypothesis")),
    "axb": _simple(("sentence1", "sentence2")),
    "axg": _simple(("premise", "hypothesis")),
    "copa": _simple(("premise", "choice1", "choice2", "question")),
    "wic": _simple(("word", "sentence1", "sentence2"), ("start1", "end1", "start2", "end2")),
    "wsc": _wsc,
    "multirc": _multirc,
    "record": _record,
}


def normalise(task: str, row: Any, where: str) -> dict[str, Any]:
  """One official example -> the normalised dict; `where` (file:line) names it in errors."""
  task = canonical_task(task)
  out = _NORMALISERS[task](task, row, where)
  if task == "copa" and out["question"] not in ("cause", "effect"):
    raise SuperGlueDataError(f"{where}: COPA question must be 'cause' or 'effect', "
                             f"got {out['question']!r}")
  return out


# --------------------------------------------------------------------------- TFDS

# ClassLabel names in TFDS super_glue, by config (label ints index these; -1 = no label).
_TFDS_LABELS = {"cb": STRING_LABELS["cb"], "rte": STRING_LABELS["rte"],
                "axb": STRING_LABELS["axb"], "axg": STRING_LABELS["axg"]}


def _decode(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if hasattr(value, "tolist"):  # numpy scalars and arrays
    return _decode(value.tolist())
  if isinstance(value, list):
    return [_decode(v) for v in value]
  if isinstance(value, dict):
    return {k: _decode(v) for k, v in value.items()}
  return value


def _tfds_label(task: str, label: int) -> Any:
  """A TFDS ClassLabel int -> the official jsonl label (None when unlabeled)."""
  if label < 0:
    return None
  if task in _TFDS_LABELS:
    return _TFDS_LABELS[task][label]
  return label  # bool tasks: 0/1 = False/True; COPA: 0/1 = choice1/choice2


def tfds_rows_to_official(task: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Decoded TFDS `super_glue/<config>` examples -> official-shaped rows, sorted by idx.

  MultiRC (one TFDS example per answer) and ReCoRD (one per query) are regrouped into
  one row per paragraph / passage.
  """
  task = canonical_task(task)
  if task == "multirc":
    return _tfds_multirc(rows)
  if task == "record":
    return _tfds_record(rows)
  out = []
  for ex in rows:
    row = {k: v for k, v in ex.items() if k != "label"}
    if task == "wsc":
      row = {"text": ex["text"], "idx": ex["idx"],
             "target": {k: ex[k] for k in ("span1_index", "span1_text", "span2_index",
                                           "span2_text")}}
    label = _tfds_label(task, ex["label"])
    if label is not None:
      row["label"] = label
    out.append(row)
  return sorted(out, key=lambda r: r["idx"])


def _tfds_multirc(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  paragraphs: dict[int, dict[str, Any]] = {}
  for ex in sorted(rows, key=lambda e: (e["idx"]["paragraph"], e["idx"]["question"],
                                        e["idx"]["answer"])):
    ids = ex["idx"]
    para = paragraphs.setdefault(ids["paragraph"], {
        "idx": ids["paragraph"], "passage": {"text": ex["paragraph"], "questions": []}})
    questions = para["passage"]["questions"]
    if not questions or questions[-1]["idx"] != ids["question"]:
      questions.append({"idx": ids["question"], "question": ex["question"], "answers": []})
    answer = {"idx": ids["answer"], "text": ex["answer"]}
    label = _tfds_label("multirc", ex["label"])
    if label is not None:
      answer["label"] = label
    questions[-1]["answers"].append(answer)
  return list(paragraphs.values())


def _tfds_record(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  passages: dict[int, dict[str, Any]] = {}
  for ex in sorted(rows, key=lambda e: (e["idx"]["passage"], e["idx"]["query"])):
    ids = ex["idx"]
    passage = passages.setdefault(ids["passage"], {
        "idx": ids["passage"], "passage": {"text": ex["passage"], "entities": set()},
        "qas": []})
    passage["passage"]["entities"].update(ex["entities"])
    qa = {"idx": ids["query"], "query": ex["query"]}
    # TFDS cannot tell an unlabeled query from one without answers; test rows are unlabeled.
    if ex["answers"]:
      qa["answers"] = list(ex["answers"])
    passage["qas"].append(qa)
  for passage in passages.values():
    passage["passage"]["entities"] = sorted(passage["passage"]["entities"])
  return list(passages.values())


def _read_tfds(task: str, split: str, data_dir: str | None
               ) -> Iterator[tuple[str, dict[str, Any]]]:
  # tf_runtime first: it hides GPUs from TensorFlow before tfds imports it.
  from ernie3_jax.runtime import tf_runtime  # noqa: F401  pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name = f"super_glue/{TFDS_CONFIGS[task]}"
  try:
    ds = tfds.load(name, split=split, data_dir=data_dir, download=False, shuffle_files=False)
  except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as e:
    raise FileNotFoundError(
        f"TFDS {name} split {split!r} is not prepared under data_dir={data_dir!r} ({e}); run "
        f"`tfds build {name}` where there is network, or point superglue_source.path at a "
        "directory in the official jsonl layout") from None
  rows = [_decode(ex) for ex in tfds.as_numpy(ds)]
  for i, row in enumerate(tfds_rows_to_official(task, rows)):
    where = f"tfds {name} split {split} example {i}"
    yield where, normalise(task, row, where)
