"""Distant supervision for UKTP: pairs each knowledge-graph triple with a sentence.

A triple aligns to a corpus sentence naming both its head and its tail, preferring the
head's own article (`align_triples`); literal tails (dates, numbers) match as whole words.
The report counts every triple: aligned in the head's article, elsewhere, or not at all.
`data/beam_alignment.py` computes the same pairs on Apache Beam; `data/uktp.py` turns
each pair into a training example.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import re
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
from absl import logging

from ernie3_jax.data.entity_matcher import EntityMatcher
from ernie3_jax.data.knowledge_graph import KnowledgeGraph, Triple
from ernie3_jax.data.sentences import sentence_spans
from ernie3_jax.runtime.tf_runtime import tf


class AlignedExample(NamedTuple):
  triple: Triple
  sentence: str
  doc_title: str
  head_span: tuple[int, int]  # character offsets in `sentence` of a head mention
  tail_span: tuple[int, int]  # ... and of the tail (a name, or the literal's text)
  mention_spans: tuple[tuple[int, int], ...] = ()  # every entity mention in the sentence
  tail_is_entity: bool = True
  in_head_article: bool = True


@dataclasses.dataclass
class AlignmentReport:
  """How the triples fared; total == in_head_article + elsewhere + not_aligned."""

  total: int = 0
  in_head_article: int = 0
  elsewhere: int = 0
  not_aligned: int = 0
  # Triples whose head has no article; they can only align elsewhere (a subset count).
  heads_without_article: int = 0
  not_aligned_by_relation: dict[str, int] = dataclasses.field(default_factory=dict)
  unaligned: list[Triple] = dataclasses.field(default_factory=list, repr=False)

  def __str__(self) -> str:
    def pct(n: int) -> str:
      return f"{n} ({100.0 * n / max(self.total, 1):.1f}%)"
    return (f"{self.total} triples: aligned in the head's article {pct(self.in_head_article)}"
            f", elsewhere {pct(self.elsewhere)}, not aligned {pct(self.not_aligned)}; "
            f"{self.heads_without_article} triples have no head article")


def relation_text(relation: str) -> str:
  """`born_in` -> "born in": relations are written as words in the input (a relation
  made only of underscores stays as it is rather than becoming empty)."""
  return " ".join(relation.replace("_", " ").split()) or relation


@functools.lru_cache(maxsize=4096)
def _literal_pattern(value: str) -> re.Pattern:
  # Whole-word, case-insensitive ("As an organist" / "Organist ...").
  return re.compile(r"(?<![^\W_])" + re.escape(value) + r"(?![^\W_])", re.IGNORECASE)


def find_literal(sentence: str, value: str,
                 avoid: tuple[int, int] | None = None) -> tuple[int, int] | None:
  """Span of the first whole-word occurrence of `value` not overlapping `avoid`, or None.

  `avoid` is the head mention: the genre "hymn" must not be found inside "Hymn to X".
  """
  for m in _literal_pattern(value).finditer(sentence):
    if avoid is None or m.end() <= avoid[0] or avoid[1] <= m.start():
      return m.span()
  return None


class SentenceRecord(NamedTuple):
  """A corpus sentence with its entity mentions (what alignment needs of it)."""

  text: str
  first: dict[str, tuple[int, int]]  # entity -> span of its first mention
  mentions: tuple[tuple[int, int], ...]  # every mention, in order


def sentence_records(text: str, matcher: EntityMatcher) -> list[SentenceRecord]:
  """The sentences of one document, in order, with their mentions."""
  records = []
  for start, end in sentence_spans(text):
    sentence = text[start:end]
    mentions = matcher.find(sentence)
    first: dict[str, tuple[int, int]] = {}
    for m in mentions:
      first.setdefault(m.entity, (m.start, m.end))
    records.append(SentenceRecord(sentence, first,
                                  tuple((m.start, m.end) for m in mentions)))
  return records


def locate(record: SentenceRecord, triple: Triple,
           literal: bool) -> tuple[tuple[int, int], tuple[int, int]] | None:
  """(head span, tail span) if `record` states both ends of `triple`, else None.

  An entity tail must be a matcher mention; a literal tail (year, occupation) must
  occur as whole words (case-insensitive).
  """
  head = record.first.get(triple.head)
  if head is None:
    return None
  if literal:
    tail = find_literal(record.text, triple.tail, avoid=head)
  else:
    tail = record.first.get(triple.tail)
    if tail == head:
      return None
  return None if tail is None else (head, tail)


def aligned_example(triple: Triple, record: SentenceRecord, doc_title: str,
                    spans: tuple[tuple[int, int], tuple[int, int]], literal: bool,
                    in_article: bool) -> AlignedExample:
  head_span, tail_span = spans
  mention_spans = record.mentions
  if literal and tail_span not in mention_spans:
    mention_spans = tuple(sorted(mention_spans + (tail_span,)))
  return AlignedExample(triple, record.text, doc_title, head_span, tail_span, mention_spans,
                        not literal, in_article)


def count_triple(report: AlignmentReport, triple: Triple, example: AlignedExample | None,
                 head_has_article: bool) -> None:
  """Adds one triple's outcome to `report` (shared by the in-process and Beam paths)."""
  report.total += 1
  if not head_has_article:
    report.heads_without_article += 1
  if example is None:
    report.not_aligned += 1
    report.unaligned.append(triple)
    report.not_aligned_by_relation[triple.relation] = (
        report.not_aligned_by_relation.get(triple.relation, 0) + 1)
  elif example.in_head_article:
    report.in_head_article += 1
  else:
    report.elsewhere += 1


def align_triples(documents: Iterable[Any], kg: KnowledgeGraph,
                  matcher: EntityMatcher) -> tuple[list[AlignedExample], AlignmentReport]:
  """Pairs each triple with a sentence naming its head (name or alias) and tail.

  A triple whose head titles an article is looked up first in that article's sentences
  (in order), then in every other sentence stating both ends (the first in corpus
  order). Triples found nowhere are counted, not dropped silently
  (`AlignmentReport.unaligned` lists them). `beam_alignment.AlignTriples` computes the
  same result as a distributed pipeline.
  """
  records: list[SentenceRecord] = []
  sentence_doc: list[int] = []
  titles: list[str] = []
  article_of: dict[str, int] = {}
  article_range: list[tuple[int, int]] = []
  index: dict[str, list[int]] = collections.defaultdict(list)
  for d, doc in enumerate(documents):
    titles.append(doc.title)
    entity = matcher.entity_of(doc.title.strip())
    if entity is not None:
      article_of.setdefault(entity, d)
    begin = len(records)
    for record in sentence_records(doc.text, matcher):
      for entity in record.first:
        index[entity].append(len(records))
      records.append(record)
      sentence_doc.append(d)
    article_range.append((begin, len(records)))

  report = AlignmentReport()
  examples: list[AlignedExample] = []
  for triple in kg.triples:
    literal = kg.is_literal(triple)
    head_sids = index.get(triple.head, [])
    article = article_of.get(triple.head)
    lo, hi = article_range[article] if article is not None else (0, 0)
    found = None
    # The head's article first: the sentences of [lo, hi) that mention the head.
    for sid in head_sids[bisect.bisect_left(head_sids, lo):bisect.bisect_left(head_sids, hi)]:
      spans = locate(records[sid], triple, literal)
      if spans is not None:
        found = (sid, spans, True)
        break
    if found is None:
      candidates = head_sids
      if not literal and len(index.get(triple.tail, [])) < len(head_sids):
        candidates = index[triple.tail]  # the rarer end is the shorter scan (same first hit)
      for sid in candidates:
        if lo <= sid < hi:
          continue
        spans = locate(records[sid], triple, literal)
        if spans is not None:
          found = (sid, spans, False)
          break
    example = None
    if found is not None:
      sid, spans, in_article = found
      example = aligned_example(triple, records[sid], titles[sentence_doc[sid]], spans,
                                literal, in_article)
      examples.append(example)
    count_triple(report, triple, example, article is not None)
  report.not_aligned_by_relation = dict(sorted(report.not_aligned_by_relation.items()))
  return examples, report


def examples_to_dataset(examples: Sequence[AlignedExample]) -> tf.data.Dataset:
  """Aligned examples as a tf.data.Dataset with the features `uktp` reads.

  Features: head, relation, tail, sentence, doc_title (string); tail_is_entity (bool);
  head_span, tail_span int32[2] and mention_spans int32[M, 2] (character offsets in the
  sentence; mention_spans padded with -1 rows to the largest count M).
  """
  width = max([len(e.mention_spans) for e in examples] + [1])
  mention_spans = np.full((len(examples), width, 2), -1, np.int32)
  for i, e in enumerate(examples):
    if e.mention_spans:
      mention_spans[i, :len(e.mention_spans)] = e.mention_spans

  def strings(values: list[str]) -> tf.Tensor:
    return tf.constant(values, dtype=tf.string, shape=[len(values)])

  return tf.data.Dataset.from_tensor_slices({
      "head": strings([e.triple.head for e in examples]),
      "relation": strings([e.triple.relation for e in examples]),
      "tail": strings([e.triple.tail for e in examples]),
      "sentence": strings([e.sentence for e in examples]),
      "doc_title": strings([e.doc_title for e in examples]),
      "tail_is_entity": np.asarray([e.tail_is_entity for e in examples], bool),
      "head_span": np.asarray([e.head_span for e in examples], np.int32).reshape(-1, 2),
      "tail_span": np.asarray([e.tail_span for e in examples], np.int32).reshape(-1, 2),
      "mention_spans": mention_spans,
  })


def aligned_dataset(documents: Iterable[Any], kg: KnowledgeGraph,
                    matcher: EntityMatcher) -> tf.data.Dataset:
  """`align_triples` then `examples_to_dataset`; the report is logged."""
  examples, report = align_triples(documents, kg, matcher)
  logging.info("UKTP alignment: %s", report)
  return examples_to_dataset(examples)
