"""Universal Knowledge-Text Prediction (UKTP), the ERNIE 3.0 knowledge task.

Distant supervision pairs each knowledge-graph triple with a corpus sentence naming
both its head and its tail (`triple_alignment.align_triples`). An example is

  [CLS] head relation tail [SEP] sentence [SEP]     (segment 0 ... | segment 1 ...)

in which either the relation is masked (the model must read the relation off the
sentence) or words of the sentence are (the model may use the triple's knowledge).
With `tail_mask_prob` > 0 some sentence-side examples instead mask the tail in both
the triple and the sentence, so the answer cannot be copied and must come from memory.
A triple without a sentence (`sentence=""`) makes a triple-only example,
`[CLS] head relation tail [SEP]`, with the relation or the tail masked.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import numpy as np

from ernie3_jax.data import knowledge_masking as km
from ernie3_jax.data.triple_alignment import find_literal, relation_text
from ernie3_jax.runtime.tf_runtime import tf

# [CLS], one piece each of head, relation and tail, [SEP], one sentence piece, [SEP].
MIN_SEQUENCE_LENGTH = 8


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
