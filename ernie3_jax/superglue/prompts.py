"""Prompt templates and label verbalisers for zero-/few-shot SuperGLUE.

Every task turns one raw SuperGLUE row (the official JSON layout, labels as bools,
official strings or TFDS class ids) into one or more `Question`s: a prompt, the
candidate continuations the NLG stack scores after it, and which candidates are
correct. Rank classification picks the candidate the model finds most likely.
MultiRC asks one question per answer option (true/false); ReCoRD one question per
query, with each candidate entity filled into the query (the candidates and their order
are fine-tuning's: `formats.record_candidates`; a passage without entities is answered
with the empty one and scores 0).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ernie3_jax.superglue import formats

TASKS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc", "axb", "axg")
# Few-shot demonstrations are separated from each other and from the question by this.
SHOT_SEPARATOR = "\n\n"


@dataclasses.dataclass(frozen=True)
class Question:
  """One rank-classification question.

  `correct` lists the indices of the candidates that count as right (ReCoRD may name
  several); it is empty for unlabelled rows (test splits), and for a labelled ReCoRD
  query whose gold answers match no candidate entity (a question nothing can answer
  right, which still counts: see `labelled`). `key` identifies the question in the
  official format (e.g. MultiRC's paragraph/question/answer ids).
  """

  prompt: str
  candidates: tuple[str, ...]
  correct: tuple[int, ...]
  key: str
  label: Any = None  # the official label value, for metrics that want it
  names: tuple[str, ...] = ()  # short names of the candidates (ReCoRD: the entities)
  # The official ids (example, question or query, answer; -1 where unused or absent), as
  # fine-tuning's rows carry them (`sources.official_idx` writes them out).
  idx: tuple[int, int, int] = (-1, -1, -1)

  @property
  def labelled(self) -> bool:
    """Whether the row has a gold label (None on test rows; ReCoRD: its gold answers), so
    that the question is scored, even when no candidate is right."""
    return bool(self.correct) or self.label is not None

  @property
  def solved(self) -> str:
    """The prompt followed by its (first) correct continuation: a demonstration."""
    if not self.correct:
      raise ValueError(f"question {self.key!r} has no label and cannot be a demonstration")
    return self.prompt + self.candidates[self.correct[0]]


_TRUE_STRINGS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def bool_label(value: Any, where: str) -> bool | None:
  """A boolean label from a bool, 0/1 or "true"/"false"; None for -1/None (unlabelled)."""
  if value is None or (isinstance(value, int) and not isinstance(value, bool) and value == -1):
    return None
  if isinstance(value, bool):
    return value
  if isinstance(value, int) and value in (0, 1):
    return bool(value)
  if isinstance(value, str) and value.strip().lower() in _TRUE_STRINGS:
    return _TRUE_STRINGS[value.strip().lower()]
  raise ValueError(f"{where}: label {value!r} is not a boolean (true/false, 0/1)")


def class_label(value: Any, names: Sequence[str], where: str) -> int | None:
  """Index of an official string label, or a TFDS class id; None when unlabelled."""
  if value is None or (isinstance(value, int) and value == -1):
    return None
  if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
    return value
  if isinstance(value, str) and value in names:
    return names.index(value)
  raise ValueError(f"{where}: label {value!r} is not one of {list(names)}")


def _id(value: Any) -> int:
  """An official id as an int; -1 when absent or not a number."""
  value = value.tolist() if hasattr(value, "tolist") else value
  if isinstance(value, int) and not isinstance(value, bool):
    return value
  if isinstance(value, str) and value.strip().lstrip("-").isdigit():
    return int(value)
  return -1


def _field(row: Mapping[str, Any], name: str, task: str) -> Any:
  if name not in row:
    raise KeyError(f"{task} row {row.get('idx', '?')!r} lacks the field {name!r} "
                   f"(fields: {sorted(row)})")
  return row[name]


def _one(task: str, row, prompt: str, candidates: Sequence[str], gold: int | None,
         label: Any) -> list[Question]:
  correct = () if gold is None else (gold,)
  return [Question(prompt, tuple(candidates), correct, str(row.get("idx", "")), label,
                   idx=(_id(row.get("idx")), -1, -1))]


def _yes_no(task: str, row, prompt: str, label: bool | None) -> list[Question]:
  return _one(task, row, prompt, (" yes", " no"), None if label is None else int(not label),
              label)


def boolq(row: Mapping[str, Any]) -> list[Question]:
  question = str(_field(row, "question", "boolq")).strip().rstrip("?")
  prompt = f"{_field(row, 'passage', 'boolq')}\nQuestion: {question}?\nAnswer:"
  return _yes_no("boolq", row, prompt, bool_label(row.get("label"), "boolq"))


CB_LABELS = ("entailment", "contradiction", "neutral")  # TFDS class order


def cb(row: Mapping[str, Any]) -> list[Question]:
  prompt = (f"{_field(row, 'premise', 'cb')}\nQuestion: {_field(row, 'hypothesis', 'cb')} "
            "True, False, or Neither?\nAnswer:")
  gold = class_label(row.get("label"), CB_LABELS, "cb")
  return _one("cb", row, prompt, (" true", " false", " neither"), gold,
              None if gold is None else CB_LABELS[gold])


def _lower_first(text: str) -> str:
  # "The man..." continues "... because the man...": sentence case inside the prompt.
  return text[:1].lower() + text[1:] if text[:2] != "I " else text


def copa(row: Mapping[str, Any]) -> list[Question]:
  premise = str(_field(row, "premise", "copa")).strip().rstrip(".")
  relation = str(_field(row, "question", "copa"))
  if relation not in ("cause", "effect"):
    raise ValueError(f"copa row {row.get('idx')!r}: question {relation!r} is not cause/effect")
  connective = " because" if relation == "cause" else " so"
  candidates = tuple(" " + _lower_first(str(_field(row, c, "copa")).strip())
                     for c in ("choice1", "choice2"))
  gold = class_label(row.get("label"), ("0", "1"), "copa")
  return _one("copa", row, premise + connective, candidates, gold, gold)


ENTAILMENT_LABELS = ("entailment", "not_entailment")  # RTE, AX-b, AX-g (TFDS order)


def _entailment(task: str, row, premise_key: str, hypothesis_key: str) -> list[Question]:
  hypothesis = str(_field(row, hypothesis_key, task)).strip()
  prompt = f"{_field(row, premise_key, task)}\nQuestion: {hypothesis} Yes or no?\nAnswer:"
  gold = class_label(row.get("label"), ENTAILMENT_LABELS, task)
  return _one(task, row, prompt, (" yes", " no"), gold,
              None if gold is None else ENTAILMENT_LABELS[gold])


def rte(row: Mapping[str, Any]) -> list[Question]:
  return _entailment("rte", row, "premise", "hypothesis")


def axb(row: Mapping[str, Any]) -> list[Question]:
  return _entailment("axb", row, "sentence1", "sentence2")


def axg(row: Mapping[str, Any]) -> list[Question]:
  return _entailment("axg", row, "premise", "hypothesis")


def wic(row: Mapping[str, Any]) -> list[Question]:
  word = _field(row, "word", "wic")
  prompt = (f"{_field(row, 'sentence1', 'wic')}\n{_field(row, 'sentence2', 'wic')}\n"
            f"Question: Is the word '{word}' used with the same meaning or a different "
            "meaning in the two sentences?\nAnswer:")
  label = bool_label(row.get("label"), "wic")
  return _one("wic", row, prompt, (" same", " different"),
              None if label is None else int(not label), label)


def wsc(row: Mapping[str, Any]) -> list[Question]:
  target = row.get("target", row)  # official layout nests the spans; TFDS flattens them
  span1, span2 = _field(target, "span1_text", "wsc"), _field(target, "span2_text", "wsc")
  prompt = (f"{_field(row, 'text', 'wsc')}\nQuestion: In the passage above, does the pronoun "
            f"'{span2}' refer to {span1}?\nAnswer:")
  return _yes_no("wsc", row, prompt, bool_label(row.get("label"), "wsc"))


def multirc(row: Mapping[str, Any]) -> list[Question]:
  """One true/false question per answer option; key = "paragraph/question/answer"."""
  passage = _field(row, "passage", "multirc")
  questions = passage.get("questions") if isinstance(passage, Mapping) else None
  if questions is None:  # TFDS: one answer per row, flat fields
    return [_multirc_question(row, str(passage), str(_field(row, "question", "multirc")),
                              str(_field(row, "answer", "multirc")), row.get("label"),
                              row.get("idx", {}))]
  out = []
  for q in questions:
    for a in q["answers"]:
      idx = {"paragraph": row.get("idx"), "question": q.get("idx"), "answer": a.get("idx")}
      out.append(_multirc_question(row, str(passage["text"]), str(q["question"]),
                                   str(a["text"]), a.get("label"), idx))
  return out


def _multirc_question(row, text: str, question: str, answer: str, raw_label, idx) -> Question:
  text = re.sub(r"<br>|<b>Sent \d+: </b>", " ", text)  # official passages carry markup
  text = " ".join(text.split())
  prompt = (f"{text}\nQuestion: {question}\nAnswer: {answer}\n"
            "Is that answer true or false?\nAnswer:")
  label = bool_label(raw_label, "multirc")
  key = idx if isinstance(idx, str) else "/".join(
      str(idx.get(k)) for k in ("paragraph", "question", "answer"))
  ids = tuple(_id(idx.get(k)) for k in ("paragraph", "question", "answer")) if isinstance(
      idx, Mapping) else (-1, -1, -1)
  return Question(prompt, (" true", " false"), () if label is None else (int(not label),), key,
                  label, idx=ids)


def _record_entities(row) -> list[str]:
  """The candidate entities, as fine-tuning scores them (`formats.record_candidates`:
  distinct, sorted; [""] for a passage without entities)."""
  passage = row["passage"]
  if isinstance(passage, Mapping):
    text = passage["text"]
    # Normalised rows list entity strings; raw official rows give inclusive char spans.
    names = [e if isinstance(e, str) else text[e["start"]:e["end"] + 1]
             for e in passage.get("entities", [])]
  else:  # flat TFDS rows: entity strings
    names = list(row.get("entities", []))
  return formats.record_candidates(names)


def record(row: Mapping[str, Any]) -> list[Question]:
  """Candidates: the passage's entities filled into the query's @placeholder."""
  passage = _field(row, "passage", "record")
  text = passage["text"] if isinstance(passage, Mapping) else str(passage)
  text = text.replace("@highlight\n", "- ")  # highlights become bullet points
  qas = row.get("qas")
  flat = qas is None
  if flat:  # TFDS: one query per row
    qas = [{"query": _field(row, "query", "record"), "answers": row.get("answers", []),
            "idx": row.get("idx")}]
  entities = _record_entities(row)
  out = []
  for qa in qas:
    query = str(qa["query"])
    if "@placeholder" not in query:
      raise ValueError(f"record query {qa.get('idx')!r} has no @placeholder: {query!r}")
    # Unlabelled (test) queries carry no answers; their label is None. (Flat TFDS rows
    # cannot tell an unlabelled query from one without answers: empty is unlabelled.)
    raw = qa.get("answers")
    answers = None if raw is None or (flat and not raw) else tuple(
        a["text"] if isinstance(a, Mapping) else str(a) for a in raw)
    candidates = tuple(" " + query.replace("@placeholder", e) for e in entities)
    correct = tuple(i for i, e in enumerate(entities) if e in (answers or ()))
    ids = qa.get("idx")
    ids = ((_id(ids.get("passage")), _id(ids.get("query")), -1) if isinstance(ids, Mapping)
           else (_id(row.get("idx")), _id(ids), -1))
    out.append(Question(text.strip(), candidates, correct, str(qa.get("idx", "")),
                        answers, tuple(entities), idx=ids))
  return out


BUILDERS: dict[str, Callable[[Mapping[str, Any]], list[Question]]] = {
    "boolq": boolq, "cb": cb, "copa": copa, "multirc": multirc, "record": record,
    "rte": rte, "wic": wic, "wsc": wsc, "axb": axb, "axg": axg}


def questions(task: str, rows: Iterator[Mapping[str, Any]] | Sequence[Mapping[str, Any]]
              ) -> Iterator[Question]:
  """Every question of every row of `task`."""
  if task not in BUILDERS:
    raise ValueError(f"unknown SuperGLUE task {task!r}; expected one of {list(BUILDERS)}")
  for row in rows:
    yield from BUILDERS[task](row)


def with_shots(question: Question, demonstrations: Sequence[Question]) -> Question:
  """`question` with solved demonstrations prepended to its prompt."""
  prefix = "".join(d.solved + SHOT_SEPARATOR for d in demonstrations)
  return dataclasses.replace(question, prompt=prefix + question.prompt)


def choose_shots(pool: Sequence[Question], k: int, seed: int, position: int,
                 exclude_key: str | None = None) -> list[Question]:
  """k labelled demonstrations for the question at `position`, seeded by (seed, position)."""
  if k <= 0:
    return []
  eligible = [q for q in pool if q.correct and q.key != exclude_key]
  if len(eligible) < k:
    raise ValueError(f"num_shots={k} but only {len(eligible)} labelled demonstrations exist")
  rng = np.random.default_rng([seed, position])
  return [eligible[i] for i in rng.choice(len(eligible), size=k, replace=False)]
