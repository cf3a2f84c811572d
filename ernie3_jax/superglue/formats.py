"""SuperGLUE examples as encoder inputs: text segments, class labels and decision groups.

`format_example(task, example)` turns one normalised official example (see
`superglue_sources`) into its decisions; a decision is the list of rows a metric scores
together (one row for classification tasks; one row per candidate for COPA and ReCoRD;
one row per answer of a MultiRC question). Each row is a `FormattedRow`:

- BoolQ: (question, passage); label False/True = 0/1.
- CB, RTE, AX-g: (premise, hypothesis); AX-b: (sentence1, sentence2); label = index in
  `superglue_sources.STRING_LABELS[task]`.
- COPA: one row per choice, (premise, "because <choice>" or "so <choice>"); label 1 for
  the right choice.
- MultiRC: one row per answer, (paragraph, question + " " + answer); label 0/1.
- ReCoRD: one row per distinct candidate entity, (passage, query with @placeholder
  replaced by the entity); label 1 when the entity is a gold answer. "@highlight" lines
  of the passage become "- " bullets.
- WiC: (sentence1, sentence2), each with the target word's span marked inline.
- WSC: one segment, the text with the noun phrase (span1) and pronoun (span2) marked
  inline by different markers; truncation keeps the marked stretch (`FormattedRow.keep`)
  and cuts the text around it.

Unlabeled rows (test splits) get label -1. Markers are gin-configurable: `"*"` around
the WiC word and the WSC noun phrase, `"#"` around the WSC pronoun. A vocabulary without
these characters maps them to <unk>, which still marks where the spans are.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import gin

from ernie3_jax.superglue import sources

NO_LABEL = -1
COPA_CONNECTIVES = {"cause": "because", "effect": "so"}


@dataclasses.dataclass(frozen=True)
class FormattedRow:
  """One encoder input: [CLS] text_a [SEP] (text_b [SEP]) and what the metric needs."""
  text_a: str
  text_b: str | None
  label: int
  idx: tuple[int, int, int]
  candidate: str = ""  # COPA: the choice; ReCoRD: the entity; MultiRC: the answer
  answers: tuple[str, ...] = ()  # ReCoRD: the gold answers of the query
  # Characters [start, end) of text_a that truncation must keep (WSC: the marked spans).
  keep: tuple[int, int] | None = None


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SpanMarkers:
  """Characters put around marked spans (WiC word, WSC noun phrase / pronoun)."""
  word: tuple[str, str] = ("*", "*")
  pronoun: tuple[str, str] = ("#", "#")


def _bool_label(example: dict[str, Any]) -> int:
  return int(example["label"]) if "label" in example else NO_LABEL


def _class_label(task: str, example: dict[str, Any]) -> int:
  if "label" not in example:
    return NO_LABEL
  return sources.STRING_LABELS[task].index(example["label"])


def _single(example: dict[str, Any]) -> tuple[int, int, int]:
  return (example["idx"], -1, -1)


def mark_chars(text: str, start: int, end: int, marks: tuple[str, str]) -> str:
  """`text` with text[start:end] wrapped in the two marks (spaces keep them separate pieces)."""
  if not 0 <= start < end <= len(text):
    raise ValueError(f"span [{start}, {end}) is outside a text of {len(text)} characters")
  return f"{text[:start]}{marks[0]} {text[start:end]} {marks[1]}{text[end:]}"


def _word_spans(text: str) -> list[tuple[int, int]]:
  return [m.span() for m in re.finditer(r"\S+", text)]


def _normal_words(words: str) -> list[str]:
  return [w.strip(".,;:!?'\"()").lower() for w in words.split()]


def wsc_span(text: str, index: int, span_text: str) -> tuple[int, int]:
  """Character span of the WSC phrase `span_text` said to start at word `index`.

  The official word index is used when the words there match the phrase (ignoring case
  and edge punctuation); otherwise the occurrence of the phrase nearest that word
  (a handful of official rows have off-by-some indices or phrases the text writes
  differently); failing both, the words at `index`.
  """
  words = _word_spans(text)
  n = max(1, len(span_text.split()))
  if not words:
    raise ValueError("WSC text has no words")
  index = min(max(index, 0), len(words) - 1)
  end_word = min(index + n, len(words)) - 1
  at_index = (words[index][0], words[end_word][1])
  if _normal_words(text[at_index[0]:at_index[1]]) == _normal_words(span_text):
    return at_index
  hits = [m.start() for m in re.finditer(re.escape(span_text), text, flags=re.IGNORECASE)]
  if hits:
    start = min(hits, key=lambda h: abs(h - words[index][0]))
    return start, start + len(span_text)
  return at_index


def _wsc(example: dict[str, Any], markers: SpanMarkers) -> list[FormattedRow]:
  text, target = example["text"], example["target"]
  noun = wsc_span(text, target["span1_index"], target["span1_text"])
  pronoun = wsc_span(text, target["span2_index"], target["span2_text"])
  if noun[0] < pronoun[1] and pronoun[0] < noun[1]:
    # Overlapping spans cannot both be wrapped; the pronoun mark carries the question.
    spans = [(pronoun, markers.pronoun)]
  else:
    spans = [(noun, markers.word), (pronoun, markers.pronoun)]
  marked = text
  # Mark the later span first so the earlier offsets stay valid.
  for span, marks in sorted(spans, key=lambda s: -s[0][0]):
    marked = mark_chars(marked, *span, marks)
  # Every inserted character lies before the end of the last span.
  keep = (min(s[0] for s, _ in spans), max(s[1] for s, _ in spans) + len(marked) - len(text))
  return [FormattedRow(marked, None, _bool_label(example), _single(example),
                       candidate=target["span1_text"], keep=keep)]


def _wic(example: dict[str, Any], markers: SpanMarkers) -> list[FormattedRow]:
  a = mark_chars(example["sentence1"], example["start1"], example["end1"], markers.word)
  b = mark_chars(example["sentence2"], example["start2"], example["end2"], markers.word)
  return [FormattedRow(a, b, _bool_label(example), _single(example), candidate=example["word"])]


def lower_first_word(sentence: str) -> str:
  """"She lost ..." -> "she lost ...", but "I", "I'm" and acronyms ("NASA") stay as written."""
  first = sentence.split(" ", 1)[0]
  if first == "I" or first.startswith("I'") or (len(first) > 1 and first.isupper()):
    return sentence
  return sentence[:1].lower() + sentence[1:]


def _copa(example: dict[str, Any]) -> list[FormattedRow]:
  connective = COPA_CONNECTIVES[example["question"]]
  rows = []
  for choice_index, key in enumerate(("choice1", "choice2")):
    choice = example[key]
    choice = lower_first_word(choice)
    label = NO_LABEL if "label" not in example else int(example["label"] == choice_index)
    rows.append(FormattedRow(example["premise"], f"{connective} {choice}", label,
                             _single(example), candidate=example[key]))
  return rows


def _multirc(example: dict[str, Any]) -> list[list[FormattedRow]]:
  passage = example["passage"]
  decisions = []
  for question in passage["questions"]:
    decisions.append([
        FormattedRow(passage["text"], f"{question['question']} {answer['text']}",
                     int(answer["label"]) if "label" in answer else NO_LABEL,
                     (example["idx"], question["idx"], answer["idx"]), candidate=answer["text"])
        for answer in question["answers"]])
  return decisions


def record_passage(text: str) -> str:
  """ReCoRD passage text with its "@highlight" lines turned into "- " bullets."""
  return re.sub(r"\n?@highlight\n", "\n- ", text)


def record_candidates(entities: list[str]) -> list[str]:
  """ReCoRD's candidate answers, in the order every path scores and writes them: the
  passage's distinct entity strings, sorted (as `superglue_sources` gives them). A
  passage without entities still answers each query: with the empty candidate, which
  scores 0, as the official script scores a query left unanswered (not dropped)."""
  return sorted(set(entities)) or [""]


def _record(example: dict[str, Any]) -> list[list[FormattedRow]]:
  passage = record_passage(example["passage"]["text"])
  decisions = []
  for qa in example["qas"]:
    answers = tuple(qa.get("answers", ()))
    labeled = "answers" in qa
    entities = record_candidates(example["passage"]["entities"])
    decisions.append([
        FormattedRow(passage, qa["query"].replace("@placeholder", entity),
                     int(entity in answers) if labeled else NO_LABEL,
                     (example["idx"], qa["idx"], -1), candidate=entity, answers=answers)
        for entity in entities])
  return decisions


def format_example(task: str, example: dict[str, Any],
                   markers: SpanMarkers | None = None) -> list[list[FormattedRow]]:
  """The decisions (each a list of rows scored together) of one normalised example."""
  task = sources.canonical_task(task)
  markers = markers or SpanMarkers()
  if task == "multirc":
    return _multirc(example)
  if task == "record":
    return _record(example)
  if task == "copa":
    return [_copa(example)]
  if task == "wsc":
    return [_wsc(example, markers)]
  if task == "wic":
    return [_wic(example, markers)]
  if task == "boolq":
    return [[FormattedRow(example["question"], example["passage"], _bool_label(example),
                          _single(example))]]
  first, second = ("sentence1", "sentence2") if task == "axb" else ("premise", "hypothesis")
  return [[FormattedRow(example[first], example[second], _class_label(task, example),
                        _single(example))]]
