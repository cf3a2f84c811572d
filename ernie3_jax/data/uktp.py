"""Universal Knowledge-Text Prediction (UKTP), the ERNIE 3.0 knowledge task.

Distant supervision pairs each knowledge-graph triple with a corpus sentence naming
both its head and its tail (`align_triples`). An example is

  [CLS] head relation tail [SEP] sentence [SEP]     (segment 0 ... | segment 1 ...)

in which either the relation is masked (the model must read the relation off the
sentence) or words of the sentence are (the model may use the triple's knowledge).
With `tail_mask_prob` > 0 some sentence-side examples instead mask the tail in both
the triple and the sentence, so the answer cannot be copied and must come from memory.
A triple without a sentence (`sentence=""`) makes a triple-only example,
`[CLS] head relation tail [SEP]`, with the relation or the tail masked.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import re
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
from absl import logging

from ernie3_jax.data import knowledge_masking as km
from ernie3_jax.data.entity_matcher import EntityMatcher
from ernie3_jax.data.knowledge_graph import KnowledgeGraph, Triple
from ernie3_jax.data.sentences import sentence_spans
from ernie3_jax.runtime.tf_runtime import tf

# [CLS], one piece each of head, relation and tail, [SEP], one sentence piece, [SEP].
MIN_SEQUENCE_LENGTH = 8


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


class UktpBuilder:
  """Builds one UKTP example from a triple and its sentence (pure numpy)."""

  def __init__(self, vocab: Any, sequence_length: int, relation_mask_prob: float = 0.5,
               level_weights: Sequence[float] = km.DEFAULT_LEVEL_WEIGHTS,
               mask_ratio: float = 0.15, tail_mask_prob: float = 0.0):
    if sequence_length < MIN_SEQUENCE_LENGTH:
      raise ValueError(f"sequence_length={sequence_length} cannot hold [CLS] head relation "
                       f"tail [SEP] sentence [SEP]; use at least {MIN_SEQUENCE_LENGTH}")
    if not 0.0 <= relation_mask_prob <= 1.0:
      raise ValueError(f"relation_mask_prob must be in [0, 1], got {relation_mask_prob}")
    if not 0.0 < mask_ratio <= 1.0:
      raise ValueError(f"mask_ratio must be in (0, 1], got {mask_ratio}")
    if not 0.0 <= tail_mask_prob <= 1.0:
      raise ValueError(f"tail_mask_prob must be in [0, 1], got {tail_mask_prob}")
    self.vocab = vocab
    self.tail_mask_prob = tail_mask_prob
    self.info = km.vocab_ids(vocab)
    self.level_share = km.normalize_level_weights(tuple(float(w) for w in level_weights))
    self.is_special = km.id_tables(self.info.vocab_size, self.info.special_ids)[0]
    self.cls_id, self.sep_id = int(vocab.cls_id), int(vocab.sep_id)
    self.sequence_length = sequence_length
    self.relation_mask_prob = relation_mask_prob
    self.mask_ratio = mask_ratio
    # Heads, relations and tails repeat across examples; encode each string once.
    self._encode = functools.lru_cache(maxsize=1 << 16)(self._encode_uncached)

  def _encode_uncached(self, text: str) -> np.ndarray:
    ids = np.asarray(self.vocab.tokenizer.encode(text), np.int32)
    # A name spelling "[SEP]" must not break the layout: such pieces become unk.
    ids[self.is_special[ids]] = self.vocab.tokenizer.unk_id()
    if text and not len(ids):
      # Only characters the tokenizer drops (e.g. U+200B): one unk keeps the triple's
      # layout instead of failing the whole input pipeline.
      ids = np.asarray([self.vocab.tokenizer.unk_id()], np.int32)
    return ids

  def example(self, head: str, relation: str, tail: str, sentence: str,
              rng: np.random.Generator,
              head_span: Sequence[int] | None = None,
              tail_span: Sequence[int] | None = None,
              mention_spans: Sequence[Sequence[int]] = (),
              stats: km.PreprocessStats | None = None) -> dict[str, np.ndarray]:
    """tokens, segment_ids, mlm_targets (int32[L]) and mlm_weights (float32[L]).

    Spans are character offsets into `sentence`; a missing head/tail span is searched
    for as the whole-word name. Rows of -1 in mention_spans are padding.
    """
    h, r, t = self._encode(head), self._encode(relation_text(relation)), self._encode(tail)
    if not (len(h) and len(r) and len(t)):
      raise ValueError(f"empty head, relation or tail in ({head!r}, {relation!r}, {tail!r})")
    length = self.sequence_length
    triple_len = 2 + len(h) + len(r) + len(t)
    if not sentence:
      return self._triple_only(h, r, t, rng, stats, (head, relation, tail))
    room = length - triple_len - 1  # sentence pieces; the final [SEP] takes the last slot
    if room < 1:
      raise ValueError(f"sequence_length={length} is too small for the triple ({head!r}, "
                       f"{relation!r}, {tail!r}): it needs {triple_len} pieces plus at least "
                       "2 for the sentence; raise sequence_length")
    spans = [(int(s), int(e)) for s, e in mention_spans if 0 <= s < e <= len(sentence)]
    anchors, tail_anchor = [], None
    for which, (span, name) in enumerate(((head_span, head), (tail_span, tail))):
      if span is None or not 0 <= span[0] < span[1] <= len(sentence):
        span = find_literal(sentence, name)
      if span is not None:
        span = (int(span[0]), int(span[1]))
        spans.append(span)
        anchors.append(span)
        if which == 1:
          tail_anchor = span
    seg = km.segment(sentence, self.vocab, mention_spans=spans)
    ids, units = seg.ids, seg.units
    if len(ids) > room:
      ids = ids[:room]
      units = units[units[:, 0] < room].copy()
      units[:, 1] = np.minimum(units[:, 1], room)
      if stats is not None:
        stats.add(truncated_sentences=1)
    sentence_len = len(ids)

    tokens = np.zeros(length, np.int32)
    segment_ids = np.zeros(length, np.int32)
    targets = np.zeros(length, np.int32)
    weights = np.zeros(length, np.float32)
    tokens[:triple_len] = np.concatenate([[self.cls_id], h, r, t, [self.sep_id]])
    end = triple_len + sentence_len
    tokens[triple_len:end] = ids
    tokens[end] = self.sep_id
    segment_ids[triple_len:end + 1] = 1

    maskable = ~self.is_special[ids]
    if rng.random() < self.relation_mask_prob or not maskable.any():
      self._mask_slot(tokens, targets, weights, slice(1 + len(h), 1 + len(h) + len(r)))
      if stats is not None:
        stats.add(examples=1, relation_masked=1)
    elif rng.random() < self.tail_mask_prob:
      # The tail in the triple and its mention in the sentence: nothing left to copy.
      self._mask_slot(tokens, targets, weights, slice(1 + len(h) + len(r), triple_len - 1))
      if tail_anchor is not None:
        pieces = np.flatnonzero((seg.char_spans[:sentence_len, 0] < tail_anchor[1])
                                & (seg.char_spans[:sentence_len, 1] > tail_anchor[0]))
        self._mask_slot(tokens, targets, weights, triple_len + pieces)
      if stats is not None:
        stats.add(examples=1, tail_masked=1)
    else:
      preferred = []
      for start, _ in anchors:  # the entity units holding the head and tail mentions
        piece = int(np.searchsorted(seg.char_spans[:, 1], start, side="right"))
        k = int(np.searchsorted(units[:, 0], piece, side="right")) - 1
        if 0 <= k < len(units) and units[k, 1] > piece and units[k, 2] == km.ENTITY:
          preferred.append(k)
      preferred = [preferred[i] for i in rng.permutation(len(preferred))]
      inputs, tgt, wgt = km.mask_units_unchecked(
          ids, maskable, units, rng, self.mask_ratio, self.level_share, self.info, preferred)
      tokens[triple_len:end], targets[triple_len:end], weights[triple_len:end] = (
          inputs, tgt, wgt)
      if stats is not None:
        stats.add(examples=1, sentence_masked=1)
    return {"tokens": tokens, "segment_ids": segment_ids, "mlm_targets": targets,
            "mlm_weights": weights}

  def _mask_slot(self, tokens: np.ndarray, targets: np.ndarray, weights: np.ndarray,
                 where: Any) -> None:
    """Every piece at `where` becomes [MASK] and a target."""
    targets[where] = tokens[where]
    weights[where] = 1.0
    tokens[where] = self.info.mask_id

  def _triple_only(self, h: np.ndarray, r: np.ndarray, t: np.ndarray,
                   rng: np.random.Generator, stats: km.PreprocessStats | None,
                   names: tuple[str, str, str]) -> dict[str, np.ndarray]:
    """[CLS] head relation tail [SEP] with the relation (relation_mask_prob) or the tail
    masked."""
    triple_len = 2 + len(h) + len(r) + len(t)
    if triple_len > self.sequence_length:
      raise ValueError(f"sequence_length={self.sequence_length} is too small for the triple "
                       f"{names}: it needs {triple_len} pieces; raise sequence_length")
    tokens = np.zeros(self.sequence_length, np.int32)
    targets = np.zeros(self.sequence_length, np.int32)
    weights = np.zeros(self.sequence_length, np.float32)
    tokens[:triple_len] = np.concatenate([[self.cls_id], h, r, t, [self.sep_id]])
    if rng.random() < self.relation_mask_prob:
      self._mask_slot(tokens, targets, weights, slice(1 + len(h), 1 + len(h) + len(r)))
      kind = "relation_masked"
    else:
      self._mask_slot(tokens, targets, weights, slice(1 + len(h) + len(r), triple_len - 1))
      kind = "tail_masked"
    if stats is not None:
      stats.add(examples=1, triple_only=1, **{kind: 1})
    return {"tokens": tokens, "segment_ids": np.zeros_like(tokens), "mlm_targets": targets,
            "mlm_weights": weights}


def uktp(dataset: tf.data.Dataset,
         seed: int | None = None,
         *,
         vocab: Any,
         sequence_length: int | Mapping[str, int],
         relation_mask_prob: float = 0.5,
         task_id: int = 4,
         level_weights: Sequence[float] = km.DEFAULT_LEVEL_WEIGHTS,
         mask_ratio: float = 0.15,
         tail_mask_prob: float = 0.0,
         stats: km.PreprocessStats | None = None) -> tf.data.Dataset:
  """Aligned triples -> UKTP examples (one per input example).

  Input features: head, relation, tail, sentence (string); optional head_span,
  tail_span int32[2] and mention_spans int32[M, 2] (as made by `examples_to_dataset`).
  Output features, as for knowledge_masked_lm: tokens, segment_ids (0 for [CLS] triple
  [SEP], 1 for sentence [SEP]), mlm_targets, mlm_weights, label=0, label_weight=0.0,
  task_id. With probability relation_mask_prob every relation piece is [MASK] and is
  the target; otherwise, with probability tail_mask_prob, the tail is masked in the
  triple and the sentence; otherwise sentence units are masked as in `mask_units`
  (~mask_ratio of the sentence pieces), trying the head/tail mentions first. An empty
  sentence makes a triple-only example (relation or tail masked). Sentences that do not fit
  are truncated (counted in `stats` as truncated_sentences). A triple too long for
  sequence_length raises ValueError (inside the pipeline TensorFlow reports it as
  InvalidArgumentError with the same message). Example i uses
  `example_rng(seed, i, fields)`; seed None means 0.
  """
  km.check_features(dataset, ["head", "relation", "tail", "sentence"], "uktp")
  length = km.resolve_sequence_length(sequence_length)
  builder = UktpBuilder(vocab, length, relation_mask_prob, level_weights, mask_ratio,
                        tail_mask_prob)
  base_seed = 0 if seed is None else int(seed)
  spec = dataset.element_spec

  def build(index, head, relation, tail, sentence, head_span, tail_span, mention_spans):
    fields = (head, relation, tail, sentence)
    rng = km.example_rng(base_seed, int(index), b"\t".join(fields))
    head, relation, tail, sentence = (f.decode("utf-8", "replace") for f in fields)
    out = builder.example(head, relation, tail, sentence, rng, head_span, tail_span,
                          mention_spans.reshape(-1, 2), stats)
    return out["tokens"], out["segment_ids"], out["mlm_targets"], out["mlm_weights"]

  def to_example(index: tf.Tensor, ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    no_span = tf.constant([-1, -1], tf.int32)
    args = [index, ex["head"], ex["relation"], ex["tail"], ex["sentence"],
            tf.cast(ex["head_span"], tf.int32) if "head_span" in spec else no_span,
            tf.cast(ex["tail_span"], tf.int32) if "tail_span" in spec else no_span,
            tf.cast(ex["mention_spans"], tf.int32) if "mention_spans" in spec
            else tf.zeros([0, 2], tf.int32)]
    tokens, segment_ids, targets, weights = tf.numpy_function(
        build, args, (tf.int32, tf.int32, tf.int32, tf.float32), stateful=False)
    for x in (tokens, segment_ids, targets, weights):
      x.set_shape([length])
    return {"tokens": tokens, "segment_ids": segment_ids, "mlm_targets": targets,
            "mlm_weights": weights, "label": tf.constant(0, tf.int32),
            "label_weight": tf.constant(0.0, tf.float32),
            "task_id": tf.constant(task_id, tf.int32)}

  return dataset.enumerate().map(to_example)
