"""A small sentence splitter and sentence-level tokenisation for the structure-aware tasks.

Rules (deliberately simple; abbreviations such as "Dr." are not special-cased):
* Paragraphs are separated by a blank line (a line holding only whitespace); "\\r\\n", "\\r"
  and U+2029 PARAGRAPH SEPARATOR are normalised first.
* A sentence ends after a run of terminators (. ! ? U+2026) plus any closing quotes or
  brackets, when whitespace follows; after the CJK full-width terminators (U+3002, U+FF01,
  U+FF1F, U+FF0E) no whitespace is needed. Text without a terminator is one sentence.
* Sentences keep their terminator, lose surrounding whitespace, and are never empty.

The splitter works on any Python string (including empty text and arbitrary unicode).
"""

from __future__ import annotations

import re
from typing import Sequence

_CLOSERS = "\"'\u2019\u201d\u00bb\u300d\u300f\uff09)\\]}"
_SENTENCE_END = re.compile(
    rf"[.!?\u2026]+[{_CLOSERS}]*(?=\s)|[\u3002\uff01\uff1f\uff0e]+[{_CLOSERS}]*")
# A blank line (two line breaks with only horizontal space between) or U+2029.
_PARAGRAPH_BREAK = re.compile(r"(?:\r\n|\r|\n)[^\S\r\n]*(?:\r\n|\r|\n)\s*|\u2029\s*")


_HANGING_ABBREVIATION = re.compile(
    r"(?:^|[\s(])(?:Dr|Mr|Mrs|Ms|Mme|St|Ste|Gen|Col|Lt|Capt|Cmdr|Adm|Sgt|Maj|Prof|Rev|Fr|"
    r"Sen|Rep|Gov|Pres|Hon|Jr|Sr|Mt|Ft|No|Nos|Vol|vol|pp?|ch|cf|ca|approx|fig|Fig|viz|"
    r"vs|al|e\.g|i\.e)\.$")
_ONLY_INITIALS = re.compile(r"^(?:[A-Z]\.\s*)+$")


def _trimmed(text: str, start: int, end: int) -> tuple[int, int] | None:
  while start < end and text[start].isspace():
    start += 1
  while end > start and text[end - 1].isspace():
    end -= 1
  return (start, end) if start < end else None


def paragraph_spans(text: str) -> list[tuple[int, int]]:
  """Character spans of the non-empty paragraphs of `text` (whitespace trimmed)."""
  spans, start = [], 0
  for match in _PARAGRAPH_BREAK.finditer(text):
    span = _trimmed(text, start, match.start())
    if span:
      spans.append(span)
    start = match.end()
  span = _trimmed(text, start, len(text))
  return spans + [span] if span else spans


def sentence_spans(text: str) -> list[tuple[int, int]]:
  """Character spans of every sentence of `text`, in order, into the original text.

  Tasks that need offsets (entity masking, UKTP alignment) use the spans; the others
  use `split_sentences`, which returns the same sentences as strings.
  """
  spans = []
  for p_start, p_end in paragraph_spans(text):
    start = p_start
    for match in _SENTENCE_END.finditer(text, p_start, p_end):
      span = _trimmed(text, start, match.end())
      if span:
        spans.append(span)
      start = match.end()
    span = _trimmed(text, start, p_end)
    if span:
      spans.append(span)
  return spans


def split_lines_into_sentences(paragraph: str) -> list[str]:
  """Sentences of a paragraph of prepared text (a dump's article), abbreviation-aware.

  Unlike `split_sentences` (the splitter of the embedded corpus and the objectives, which
  breaks after any "." before a space), this one is blingfire's sentence breaker, a
  finite-state model compiled into the wheel (nothing is downloaded at run time): it does
  not break after "i.e.", "e.g.", "Dr.", "U.S.", an initial ("William B. Greene") or
  inside a number. Every line break is also a sentence break, so that list items, one
  per line, stay apart. Sentences are stripped and never empty.
  """
  try:
    import blingfire  # pylint: disable=g-import-not-at-top
  except OSError as e:  # the wheel carries x86-64 libraries only
    raise RuntimeError(f"blingfire's native library does not load on this machine ({e}); "
                       "the dump corpus's sentence splitter needs an x86-64 host") from e
  out = []
  for line in paragraph.split("\n"):
    if not line.strip():
      continue
    pieces = [s.strip() for s in blingfire.text_to_sentences(line).split("\n") if s.strip()]
    merged = pieces[:1]
    for piece in pieces[1:]:
      # blingfire still breaks after a title before a name ("Dr. Samuel") and after a
      # run of initials at a line's start ("H. N. Abrams"): such a piece joins the next.
      if _HANGING_ABBREVIATION.search(merged[-1]) or _ONLY_INITIALS.match(merged[-1]):
        merged[-1] = f"{merged[-1]} {piece}"
      else:
        merged.append(piece)
    out.extend(merged)
  return out


def split_paragraphs(text: str) -> list[str]:
  """Non-empty, stripped paragraphs of `text`, in order."""
  return [text[s:e] for s, e in paragraph_spans(text)]


def _split_paragraph(paragraph: str) -> list[str]:
  return [paragraph[s:e] for s, e in sentence_spans(paragraph)]


def split_sentences(text: str) -> list[str]:
  """All sentences of `text`; paragraph breaks are also sentence breaks."""
  return [text[s:e] for s, e in sentence_spans(text)]


def split_document(text: str) -> list[list[str]]:
  """Paragraphs of sentences; every paragraph has at least one sentence."""
  return [_split_paragraph(p) for p in split_paragraphs(text)]


def encode_document(tokenizer, text: str, special_ids: Sequence[int] = (),
                    replacement_id: int = 2) -> list[list[list[int]]]:
  """Paragraphs -> sentences -> SentencePiece ids.

  Sentences that encode to nothing (e.g. only zero-width characters) are dropped, and so
  are paragraphs left empty. Text that literally spells a user-defined piece ("[SEP]")
  would encode to that piece's id and corrupt the layout of an example, so ids listed in
  `special_ids` are replaced by `replacement_id` (UNK by default).
  """
  paragraphs = split_document(text)
  flat = [s for p in paragraphs for s in p]
  if not flat:
    return []
  encoded = tokenizer.encode(flat)
  special = set(special_ids)
  out, i = [], 0
  for paragraph in paragraphs:
    sentences = []
    for sentence in paragraph:
      ids = encoded[i]
      # Only text containing "[" can spell a special piece; skip the scan otherwise.
      if special and "[" in flat[i]:
        ids = [replacement_id if t in special else t for t in ids]
      i += 1
      if ids:
        sentences.append(ids)
    if sentences:
      out.append(sentences)
  return out
