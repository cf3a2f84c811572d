"""The corpus cleaning of ERNIE 3.0 (its pre-training data section), rule by rule, counted.

1. Characters: a run of one repeated whitespace or punctuation character ("!!!", "   ",
   "-----") becomes that character once. Letters and digits are never touched (1000,
   "Mississippi"); newlines keep paragraph breaks (a run of blank lines becomes one).
2. Paragraphs: a paragraph identical to the one before it is removed.
3. Sentences: sentences of fewer than 10 words are removed. Sentences are found by an
   abbreviation-aware splitter (`sentences.split_lines_into_sentences`: blingfire's),
   so "i.e.", "Dr." or an initial does not cut a sentence into pieces that this rule
   would then drop; a line break (a list item's end) is a sentence break too.
4. Documents: documents whose three longest sentences have the same MD5 key as an
   earlier document's are duplicates; the first (smallest title, then text) is kept.
A document left without text is dropped. `clean_document` applies 1-3 and returns what
each rule removed; `CleanCorpus` runs all four on Beam and counts them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Iterator

from ernie3_jax.data.sentences import split_lines_into_sentences

MIN_SENTENCE_WORDS = 10
_REPEATED = re.compile(r"([^\w\n])\1+")
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")
_WORD = re.compile(r"\w+")


@dataclasses.dataclass
class Removed:
  characters: int = 0
  paragraphs: int = 0
  sentences: int = 0


def collapse_characters(text: str) -> tuple[str, int]:
  """Rule 1; returns the text and how many characters went."""
  out = _BLANK_LINES.sub("\n\n", _REPEATED.sub(r"\1", text))
  return out, len(text) - len(out)


def drop_repeated_paragraphs(paragraphs: list[str]) -> tuple[list[str], int]:
  """Rule 2 on a document's paragraphs."""
  kept = [p for i, p in enumerate(paragraphs) if i == 0 or p != paragraphs[i - 1]]
  return kept, len(paragraphs) - len(kept)


def sentences(paragraph: str) -> list[str]:
  return split_lines_into_sentences(paragraph)


def drop_short_sentences(paragraph: str) -> tuple[str, int]:
  """Rule 3 on one paragraph; its lines (list items) stay on lines of their own."""
  lines, dropped = [], 0
  for line in paragraph.split("\n"):
    parts = sentences(line)
    kept = [s for s in parts if len(_WORD.findall(s)) >= MIN_SENTENCE_WORDS]
    dropped += len(parts) - len(kept)
    if kept:
      lines.append(" ".join(kept))
  return "\n".join(lines), dropped


def clean_document(text: str) -> tuple[str, Removed]:
  """Rules 1-3; the cleaned text (paragraphs separated by a blank line)."""
  removed = Removed()
  text, removed.characters = collapse_characters(text)
  paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
  paragraphs, removed.paragraphs = drop_repeated_paragraphs(paragraphs)
  kept = []
  for paragraph in paragraphs:
    paragraph, dropped = drop_short_sentences(paragraph)
    removed.sentences += dropped
    if paragraph:
      kept.append(paragraph)
  return "\n\n".join(kept), removed


def duplicate_key(text: str) -> str:
  """Rule 4's key: the MD5 digests of the document's three longest sentences, summed."""
  longest = sorted((s for p in text.split("\n\n") for s in sentences(p)),
                   key=lambda s: (-len(s), s))[:3]
  total = sum(int(hashlib.md5(s.encode("utf-8")).hexdigest(), 16) for s in longest)
  return f"{total:x}"


def clean_events(title: str, text: str) -> Iterator[tuple[str, object]]:
  """("document", (key, title, text)) for a document that keeps text, and ("count", event)
  for what rules 1-3 did: (what, amount) pairs and one-off events."""
  cleaned, removed = clean_document(text)
  yield "count", "documents read"
  for what, amount in (("characters removed (rule 1)", removed.characters),
                       ("repeated paragraphs removed (rule 2)", removed.paragraphs),
                       ("short sentences removed (rule 3)", removed.sentences)):
    if amount:
      yield "count", (what, amount)
  if not cleaned:
    yield "count", "documents dropped: no text left"
    return
  yield "document", (duplicate_key(cleaned), title, cleaned)


def CleanCorpus(documents, label: str = "clean"):  # pylint: disable=invalid-name
  """Beam: (title, text) -> (title, cleaned text), deduplicated (rule 4). Returns (the
  kept documents, [PCollections of count events for `beam_counts.write_report`])."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top

  def clean(element):
    title, text = element
    for tag, value in clean_events(title, text):
      yield beam.pvalue.TaggedOutput(tag, value)

  def first_of_key(element):
    _, group = element
    ordered = sorted(group)
    yield beam.pvalue.TaggedOutput("count", "documents kept")
    for _ in ordered[1:]:
      yield beam.pvalue.TaggedOutput("count", "documents dropped: duplicate (rule 4)")
    yield ordered[0]

  outputs = documents | f"{label}/rules" >> beam.FlatMap(clean).with_outputs(
      "count", "document")
  unique = (outputs.document
            | f"{label}/keyed" >> beam.Map(lambda d: (d[0], (d[1], d[2])))
            | f"{label}/by_key" >> beam.GroupByKey()
            | f"{label}/dedupe" >> beam.FlatMap(first_of_key).with_outputs("count",
                                                                            main="kept"))
  return unique.kept, [outputs["count"], unique["count"]]
