"""Masking units: a passage's SentencePiece pieces partitioned into whole words, phrases
and entity mentions (the three levels of ERNIE's knowledge masking).

* entity units: every piece of the words an entity mention (EntityMatcher) touches;
* phrase units: a simple chunker over the remaining words. A phrase is a maximal run
  of 2 to 4 content words inside one sentence, where a content word is alphanumeric
  and not in `STOP_WORDS`; punctuation, stop words, entities and sentence ends break
  runs. Longer runs are split into near-equal chunks of at most 4 words, so no single
  word is left over ("ornate temperament", "surviving letters", "Parish records give
  1711");
* token units: one whole word each (whole-word masking). Words are maximal runs of
  letters/digits (inner apostrophes allowed); every other non-space character is a word
  of its own. A piece belongs to the first word it overlaps; a piece with no visible
  character (a bare "▁") joins the next word.

`knowledge_masking.mask_units` picks among these units.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any, NamedTuple, Sequence

import numpy as np

from ernie3_jax.data.sentences import sentence_spans

TOKEN, PHRASE, ENTITY = 0, 1, 2
LEVEL_NAMES = ("token", "phrase", "entity")
MAX_PHRASE_WORDS = 4

STOP_WORDS = frozenset("""
a an the and or but nor so yet if of in on at to for from by with without about as into
onto upon over under after before during since until than then that this these those is
are was were be been being am has have had having do does did will would shall should can
could may might must it its he she they them his her hers their theirs him we us our you
your i me my who whom whose which what where when why how not no also there here all any
each both such very more most some other only own same too just while among between
through against within along across around because though although
""".split())

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*|\S")
# A sentence ends at . ! ? (plus closing quotes/brackets) before whitespace, or at a newline.


class Unit(NamedTuple):
  start: int  # piece indices, end exclusive
  end: int
  level: int  # TOKEN, PHRASE or ENTITY


_OFFSET_MAPPING_SUPPORT: dict[type, bool] = {}


def _pairs_to_array(pairs: Sequence[tuple[int, int]]) -> np.ndarray:
  # fromiter over a flat iterator is several times faster than asarray on tuples.
  return np.fromiter(itertools.chain.from_iterable(pairs), np.int64,
                     count=2 * len(pairs)).reshape(-1, 2)


def _supports_offset_mapping(tokenizer: Any) -> bool:
  """Whether this tokenizer class can return character offsets (probed once per class)."""
  kind = type(tokenizer)
  if kind not in _OFFSET_MAPPING_SUPPORT:
    try:
      probe = tokenizer.encode("a", out_type="offset_mapping")
      _OFFSET_MAPPING_SUPPORT[kind] = isinstance(probe, dict) and "offsets" in probe
    except (ValueError, TypeError, KeyError, RuntimeError):
      _OFFSET_MAPPING_SUPPORT[kind] = False
  return _OFFSET_MAPPING_SUPPORT[kind]


def _offsets_from_proto(tokenizer: Any, text: str) -> tuple[list, np.ndarray]:
  """Ids and character offsets from a SentencePiece proto (whose offsets are bytes)."""
  encode = getattr(tokenizer, "encode_as_immutable_proto", None) or tokenizer.encode_as_proto
  pieces = encode(text).pieces
  ids = [p.id for p in pieces]
  offsets = np.array([(p.begin, p.end) for p in pieces], np.int64).reshape(-1, 2)
  if not text.isascii():
    code_points = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    utf8_len = 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)
    char_end = np.cumsum(utf8_len)
    # A byte offset at a character boundary is preceded by exactly that many characters.
    offsets = np.searchsorted(char_end, offsets, side="right")
  return ids, offsets


def encode_with_offsets(tokenizer: Any, text: str) -> tuple[np.ndarray, np.ndarray]:
  """(piece ids int32[n], character offsets int64[n, 2]) of `text`, end exclusive.

  sentencepiece 0.2.3 reports character offsets directly ("offset_mapping"); older
  versions only have protos with UTF-8 byte offsets, converted here to characters.
  """
  if _supports_offset_mapping(tokenizer):
    enc = tokenizer.encode(text, out_type="offset_mapping")
    ids, offsets = enc["ids"], _pairs_to_array(enc["offsets"])
  else:
    ids, offsets = _offsets_from_proto(tokenizer, text)
  return np.asarray(ids, np.int32), offsets


@dataclasses.dataclass(frozen=True)
class Segmentation:
  """A text's pieces and the units partitioning them."""

  ids: np.ndarray  # int32 [n]
  char_spans: np.ndarray  # int64 [n, 2], character offsets of each piece
  units: np.ndarray  # int64 [u, 3]: (start, end, level), contiguous and in order
  sentence_starts: np.ndarray  # int64: piece index where each sentence begins

  def unit_list(self) -> list[Unit]:
    return [Unit(*map(int, u)) for u in self.units]


def _runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Starts and ends of maximal runs of equal values."""
  starts = np.flatnonzero(np.concatenate([[True], labels[1:] != labels[:-1]]))
  ends = np.append(starts[1:], len(labels))
  return starts, ends


def segment(text: str, vocab: Any, *, matcher: Any = None,
            mention_spans: Sequence[tuple[int, int]] | None = None) -> Segmentation:
  """Tokenizes `text` and partitions its pieces into entity, phrase and token units.

  Entity mentions come from `matcher.find(text)` and/or `mention_spans` (character
  offsets; overlapping spans keep the earlier one). Text that spells a special piece
  ("[SEP]") gets the unk id instead, so it cannot break the [CLS]/[SEP] layout.
  """
  ids, spans = encode_with_offsets(vocab.tokenizer, text)
  spelled_special = np.isin(ids, vocab.special_ids)
  if spelled_special.any():
    ids[spelled_special] = vocab.tokenizer.unk_id()
  n = len(ids)
  if n == 0:
    empty = np.zeros((0,), np.int64)
    return Segmentation(ids, spans, np.zeros((0, 3), np.int64), empty)
  words = [m.span() for m in _WORD.finditer(text)]
  if not words:  # only invisible pieces: each is a unit of its own
    units = np.stack([np.arange(n), np.arange(1, n + 1), np.zeros(n, np.int64)], 1)
    return Segmentation(ids, spans, units, np.zeros((1,), np.int64))
  word_span = _pairs_to_array(words)
  num_words = len(words)

  # Anchor: the first word a piece overlaps; invisible pieces take the next (or last) one.
  first = np.searchsorted(word_span[:, 1], spans[:, 0], side="right")
  anchored = first < num_words
  anchored[anchored] = word_span[first[anchored], 0] < spans[anchored, 1]
  if not anchored.any():
    anchor = np.zeros(n, np.int64)
  else:
    index = np.arange(n)
    nxt = np.minimum.accumulate(np.where(anchored, index, n)[::-1])[::-1]
    prv = np.maximum.accumulate(np.where(anchored, index, -1))
    src = np.where(nxt < n, nxt, prv)
    anchor = first[src]

  sentences = sentence_spans(text)
  sentence_begin = np.asarray([s for s, _ in sentences] or [0], np.int64)
  word_sentence = np.maximum(np.searchsorted(sentence_begin, word_span[:, 0], "right") - 1, 0)

  # Entity words: every word a mention overlaps; a mention overlapping an earlier one
  # is dropped.
  mentions = [(m.start, m.end) for m in matcher.find(text)] if matcher is not None else []
  if mention_spans is not None:
    mentions = sorted(set(mentions) | {(int(s), int(e)) for s, e in mention_spans
                                       if 0 <= s < e <= len(text)})
  word_entity = [-1] * num_words
  num_entities = 0
  if mentions:
    bounds = np.asarray(mentions, np.int64)
    first_word = np.searchsorted(word_span[:, 1], bounds[:, 0], side="right").tolist()
    end_word = np.searchsorted(word_span[:, 0], bounds[:, 1], side="left").tolist()
    covered = 0
    for w0, w1 in zip(first_word, end_word):
      if w0 < w1 and w0 >= covered:
        word_entity[w0:w1] = [num_entities] * (w1 - w0)
        num_entities += 1
        covered = w1

  # Phrase words: runs of content words that own a piece, outside entities.
  has_piece = np.zeros(num_words, bool)
  has_piece[anchor] = True
  has_piece_list, sentence_list = has_piece.tolist(), word_sentence.tolist()
  word_phrase = [-1] * num_words
  num_phrases = 0
  run: list[int] = []

  def close_run() -> None:
    nonlocal num_phrases
    count = len(run)
    if count >= 2:
      num_chunks = -(-count // MAX_PHRASE_WORDS)
      for k in range(num_chunks):  # near-equal chunks, each of 2 to 4 words
        for w in run[k * count // num_chunks:(k + 1) * count // num_chunks]:
          word_phrase[w] = num_phrases
        num_phrases += 1
    run.clear()

  for w, (ws, we) in enumerate(words):
    token = text[ws:we]
    content = (has_piece_list[w] and word_entity[w] < 0 and token[0].isalnum()
               and token.lower() not in STOP_WORDS)
    if not content or (run and sentence_list[run[-1]] != sentence_list[w]):
      close_run()
    if content:
      run.append(w)
  close_run()
  word_entity = np.asarray(word_entity, np.int64)
  word_phrase = np.asarray(word_phrase, np.int64)

  # Label every word with its unit; pieces inherit their anchor word's label.
  label = np.arange(num_words, dtype=np.int64)
  level = np.full(num_words + num_phrases + num_entities, TOKEN, np.int64)
  in_phrase = word_phrase >= 0
  label[in_phrase] = num_words + word_phrase[in_phrase]
  level[num_words:num_words + num_phrases] = PHRASE
  in_entity = word_entity >= 0
  label[in_entity] = num_words + num_phrases + word_entity[in_entity]
  level[num_words + num_phrases:] = ENTITY
  piece_label = label[anchor]
  starts, ends = _runs(piece_label)
  units = np.stack([starts, ends, level[piece_label[starts]]], 1)
  sentence_starts, _ = _runs(word_sentence[anchor])
  return Segmentation(ids, spans, units, sentence_starts)
