"""Knowledge-masked language modelling (the ERNIE 1.0 masking ERNIE 3.0 keeps).

A passage is cut into masking units that partition its SentencePiece pieces (whole
words, phrases, entity mentions: `masking_units.py`). `mask_units` then picks whole
units until the budget is reached and applies BERT's 80/10/10 replacement;
`knowledge_masked_lm` is the tf.data preprocessor.
"""

from __future__ import annotations

import collections
import functools
import math
import threading
import zlib
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from ernie3_jax.data.masking_levels import DEFAULT_LEVEL_WEIGHTS
# The units, re-exported: callers use knowledge_masking as the one public face.
from ernie3_jax.data.masking_units import (  # noqa: F401  pylint: disable=unused-import
    ENTITY, LEVEL_NAMES, MAX_PHRASE_WORDS, PHRASE, STOP_WORDS, TOKEN, Segmentation, Unit,
    encode_with_offsets, segment)
from ernie3_jax.runtime.tf_runtime import tf

MASK_PROB, RANDOM_PROB = 0.8, 0.1  # the rest of the chosen units stay unchanged
MIN_SEQUENCE_LENGTH = 3  # [CLS] one piece [SEP]


def mask_budget(num_maskable: int, ratio: float) -> int:
  """ceil(ratio * num_maskable): the most pieces `mask_units` may mask (but see there)."""
  # The small tolerance keeps float error (0.15 * 20 = 3.0000000000000004) from adding 1.
  return max(0, math.ceil(ratio * num_maskable - 1e-9))


class VocabIds(NamedTuple):
  mask_id: int
  special_ids: tuple[int, ...]
  vocab_size: int


def vocab_ids(vocab: Any) -> VocabIds:
  """The ids masking needs, from a Vocabulary (or anything with the same attributes)."""
  if isinstance(vocab, VocabIds):
    return vocab
  return VocabIds(int(vocab.mask_id), tuple(int(i) for i in vocab.special_ids),
                  int(vocab.vocab_size))


@functools.lru_cache(maxsize=16)
def id_tables(vocab_size: int, special_ids: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
  """(is-special lookup bool[vocab_size], non-special ids for random replacement)."""
  is_special = np.zeros(vocab_size, bool)
  is_special[[i for i in special_ids if 0 <= i < vocab_size]] = True
  return is_special, np.flatnonzero(~is_special).astype(np.int32)


@functools.lru_cache(maxsize=64)
def normalize_level_weights(level_weights: tuple[float, ...]) -> tuple[float, float, float]:
  """(token, phrase, entity) weights scaled to sum 1; bad weights raise ValueError."""
  weights = np.asarray(level_weights, np.float64)
  if weights.shape != (3,) or not np.all(np.isfinite(weights)) or (weights < 0).any() or \
      weights.sum() <= 0:
    raise ValueError(f"level_weights must be 3 non-negative numbers (token, phrase, entity) "
                     f"with a positive sum, got {level_weights!r}")
  return tuple((weights / weights.sum()).tolist())


def _choose_units(sizes: list[int], levels: list[int], rng: np.random.Generator,
                  budget: int, weights: Sequence[float], preferred: Sequence[int]) -> list[int]:
  """Indices of the units to mask (see `mask_units` for the rules)."""
  chosen, used = [], 0
  level_used = [0, 0, 0]
  taken = set()
  for i in preferred:
    i = int(i)
    if sizes[i] > 0 and i not in taken and used + sizes[i] <= budget:
      taken.add(i)
      chosen.append(i)
      used += sizes[i]
      level_used[levels[i]] += sizes[i]
  present = {lvl for i, lvl in enumerate(levels) if sizes[i] > 0}
  active = [lvl for lvl in range(3) if lvl in present and weights[lvl] > 0]
  active = active or sorted(present)
  if not active:
    return chosen
  share = [weights[lvl] for lvl in active]
  share = [1.0] * len(active) if sum(share) <= 0 else share
  quota = [0.0, 0.0, 0.0]
  for lvl, w in zip(active, share):
    quota[lvl] = budget * w / sum(share)
  # One random order of all units, split by level, gives each level a random queue.
  queues: dict[int, collections.deque] = {lvl: collections.deque() for lvl in active}
  for i in rng.permutation(len(sizes)).tolist():
    if sizes[i] > 0 and i not in taken and levels[i] in queues:
      queues[levels[i]].append(i)

  def front(lvl: int) -> int:
    """The level's next unit that still fits (-1 if none); a unit too big now stays so."""
    queue = queues[lvl]
    while queue and sizes[queue[0]] > budget - used:
      queue.popleft()
    return queue[0] if queue else -1

  def take(lvl: int) -> None:
    nonlocal used
    i = queues[lvl].popleft()
    chosen.append(i)
    used += sizes[i]
    level_used[lvl] += sizes[i]

  # Phase 1, each level up to its share: the level furthest below its share (relative
  # to the share) goes next. A unit larger than the level's remaining shortfall d is
  # taken with probability d / size (randomized rounding: in expectation the level gets
  # exactly its share), otherwise the level stops.
  tie_break = rng.random(3).tolist()
  open_levels = [lvl for lvl in active if quota[lvl] > 0]
  while open_levels:
    fitting = [lvl for lvl in open_levels if front(lvl) >= 0]
    if not fitting:
      break
    lvl = max(fitting, key=lambda l: ((quota[l] - level_used[l]) / quota[l], tie_break[l]))
    size, shortfall = sizes[queues[lvl][0]], quota[lvl] - level_used[lvl]
    if size <= shortfall or (shortfall > 0 and rng.random() * size < shortfall):
      take(lvl)
    else:
      open_levels.remove(lvl)
  # Phase 2, rounding leftovers: fill the budget, drawing levels in proportion to share.
  while used < budget:
    fitting = [lvl for lvl in active if front(lvl) >= 0]
    if not fitting:
      break
    mass = [quota[lvl] for lvl in fitting]
    pick = rng.random() * sum(mass)
    lvl = fitting[-1]
    for candidate, m in zip(fitting, mass):
      if pick < m:
        lvl = candidate
        break
      pick -= m
    take(lvl)
  if not chosen:
    # Every unit is larger than the budget: mask one of the smallest rather than nothing.
    candidates = [i for i, lvl in enumerate(levels) if sizes[i] > 0 and lvl in active]
    smallest = min(sizes[i] for i in candidates)
    candidates = [i for i in candidates if sizes[i] == smallest]
    chosen.append(candidates[int(rng.integers(len(candidates)))])
  return sorted(chosen)


def mask_units(token_ids: Sequence[int] | np.ndarray,
               units: Sequence[Sequence[int]] | np.ndarray,
               rng: np.random.Generator,
               budget_ratio: float = 0.15,
               level_weights: Sequence[float] = DEFAULT_LEVEL_WEIGHTS,
               *,
               vocab: Any,
               preferred: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Masks whole units; returns (inputs int32, targets int32, weights float32).

  token_ids must lie in [0, vocab.vocab_size). Units are (start, end, level) piece ranges,
  non-overlapping, level TOKEN/PHRASE/ENTITY; pieces outside every unit are never masked.
  Maskable pieces are those whose id is not special (`vocab.special_ids`: pad, eos,
  unk, [CLS], [SEP], [MASK]); a unit's size is its number of maskable pieces.

  Budget: B = ceil(budget_ratio * maskable pieces in the sequence). Units are chosen
  whole until no remaining unit fits, and the masked pieces never exceed B, with one
  exception: when every unit is larger than B, one smallest unit is masked anyway, so a
  sequence with a maskable piece never goes without a target.

  `level_weights` (token, phrase, entity) split B among the levels: each level takes
  its units in a random order up to its share of B, where the unit that would cross the
  share is taken with the probability that keeps the expected amount on the share; what
  rounding leaves of B is then filled from levels drawn in proportion to their share.
  Levels with no units give their share to the others; weight-0 levels are used only
  when no positive-weight level has units. `preferred` (unit indices) are tried first.

  Each chosen unit, as a whole: with prob. 0.8 every piece becomes [MASK]; 0.1 every piece
  becomes a random non-special id (one draw per piece); 0.1 stays unchanged. targets hold
  the original id at every chosen maskable piece (0 elsewhere), weights 1.0 there.
  """
  ids = np.array(token_ids, dtype=np.int32).reshape(-1)
  info = vocab_ids(vocab)
  n = len(ids)
  if not 0.0 < budget_ratio <= 1.0:
    raise ValueError(f"budget_ratio must be in (0, 1], got {budget_ratio}")
  level_share = normalize_level_weights(tuple(float(w) for w in level_weights))
  if n and (ids.min() < 0 or ids.max() >= info.vocab_size):
    raise ValueError(f"token ids must lie in [0, {info.vocab_size})")
  maskable = ~id_tables(info.vocab_size, info.special_ids)[0][ids]
  table = np.asarray(units, np.int64).reshape(-1, 3)
  if len(table):
    start, end, level = table[:, 0], table[:, 1], table[:, 2]
    order = np.argsort(start, kind="stable")
    if (start < 0).any() or (end > n).any() or (start >= end).any() or \
        (end[order][:-1] > start[order][1:]).any() or ((level < 0) | (level > 2)).any():
      raise ValueError("units must be non-empty, non-overlapping (start, end, level) piece "
                       f"ranges within {n} pieces with level 0, 1 or 2")
  return mask_units_unchecked(ids, maskable, table, rng, budget_ratio, level_share, info,
                              preferred)


def mask_units_unchecked(ids: np.ndarray, maskable: np.ndarray, table: np.ndarray,
                         rng: np.random.Generator, budget_ratio: float,
                         level_share: Sequence[float], info: VocabIds,
                         preferred: Sequence[int] = ()
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`mask_units` without its input checks, for callers that build valid units.

  `maskable` is the per-piece bool mask, `table` int[u, 3] units, `level_share` the
  normalized level weights.
  """
  n = len(ids)
  inputs, targets = ids.copy(), np.zeros(n, np.int32)
  weights = np.zeros(n, np.float32)
  cumulative = np.concatenate([[0], np.cumsum(maskable)])
  num_maskable = int(cumulative[-1])
  if num_maskable == 0 or not len(table):
    return inputs, targets, weights
  budget = mask_budget(num_maskable, budget_ratio)
  sizes = (cumulative[table[:, 1]] - cumulative[table[:, 0]]).tolist()
  chosen = _choose_units(sizes, table[:, 2].tolist(), rng, budget, level_share, preferred)

  unit_of_piece = np.full(n, -1, np.int64)
  for k, i in enumerate(chosen):
    unit_of_piece[table[i, 0]:table[i, 1]] = k
  positions = np.flatnonzero((unit_of_piece >= 0) & maskable)
  draw = rng.random(len(chosen))[unit_of_piece[positions]]
  targets[positions] = ids[positions]
  weights[positions] = 1.0
  inputs[positions[draw < MASK_PROB]] = info.mask_id
  random_positions = positions[(draw >= MASK_PROB) & (draw < MASK_PROB + RANDOM_PROB)]
  replacements = id_tables(info.vocab_size, info.special_ids)[1]
  inputs[random_positions] = replacements[rng.integers(len(replacements),
                                                       size=len(random_positions))]
  return inputs, targets, weights


class PreprocessStats:
  """Thread-safe counters a preprocessor fills in (documents, truncations, ...)."""

  def __init__(self):
    self._lock = threading.Lock()
    self._counts: collections.Counter[str] = collections.Counter()

  def add(self, **counts: int) -> None:
    with self._lock:
      self._counts.update(counts)

  def __getitem__(self, key: str) -> int:
    with self._lock:
      return self._counts[key]

  def as_dict(self) -> dict[str, int]:
    with self._lock:
      return dict(self._counts)


def resolve_sequence_length(sequence_length: int | Mapping[str, int]) -> int:
  """An int, or seqio's {feature: length} mapping (its "tokens" entry)."""
  if isinstance(sequence_length, Mapping):
    if "tokens" in sequence_length:
      sequence_length = sequence_length["tokens"]
    elif len(set(sequence_length.values())) == 1:
      sequence_length = next(iter(sequence_length.values()))
    else:
      raise ValueError(f"sequence_length {dict(sequence_length)!r} has no 'tokens' entry")
  if isinstance(sequence_length, bool) or int(sequence_length) != sequence_length:
    raise ValueError(f"sequence_length must be an integer, got {sequence_length!r}")
  return int(sequence_length)


def example_rng(seed: int | None, index: int, data: bytes) -> np.random.Generator:
  """The RNG of one example: a pure function of (seed, running index, CRC-32 of data)."""
  seed = 0 if seed is None else int(seed)
  return np.random.default_rng([seed % 2**64, int(index) % 2**64, zlib.crc32(data)])


class KnowledgeMasker:
  """Cuts a document into passages and masks each one; the per-document work of KMLM."""

  def __init__(self, vocab: Any, matcher: Any, sequence_length: int,
               level_weights: Sequence[float] = DEFAULT_LEVEL_WEIGHTS, mask_ratio: float = 0.15):
    if sequence_length < MIN_SEQUENCE_LENGTH:
      raise ValueError(f"sequence_length={sequence_length} leaves no room for a passage "
                       f"between [CLS] and [SEP]; use at least {MIN_SEQUENCE_LENGTH}")
    if not 0.0 < mask_ratio <= 1.0:
      raise ValueError(f"mask_ratio must be in (0, 1], got {mask_ratio}")
    self.level_share = normalize_level_weights(tuple(float(w) for w in level_weights))
    self.vocab, self.matcher = vocab, matcher
    self.info = vocab_ids(vocab)
    self.cls_id, self.sep_id = int(vocab.cls_id), int(vocab.sep_id)
    self.sequence_length = sequence_length
    self.mask_ratio = mask_ratio

  def passages(self, seg: Segmentation,
               stats: PreprocessStats | None = None) -> list[tuple[int, int]]:
    """Piece ranges of at most sequence_length - 2 pieces, cut at sentence starts when a
    sentence fits, else at a unit start, else anywhere."""
    n, limit = len(seg.ids), self.sequence_length - 2
    unit_starts = seg.units[:, 0]
    out, a = [], 0
    mid_sentence = hard = 0
    while a < n:
      b = a + limit
      if b < n:
        s = seg.sentence_starts[np.searchsorted(seg.sentence_starts, b, "right") - 1]
        if s > a:
          b = int(s)
        else:
          u = unit_starts[np.searchsorted(unit_starts, b, "right") - 1]
          if u > a:
            b, mid_sentence = int(u), mid_sentence + 1
          else:
            hard += 1
      else:
        b = n
      out.append((a, b))
      a = b
    if stats is not None:
      stats.add(mid_sentence_splits=mid_sentence, mid_unit_splits=hard)
    return out

  def document_arrays(self, text: str, rng: np.random.Generator,
                      stats: PreprocessStats | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens int32[P, L], mlm_targets int32[P, L], mlm_weights float32[P, L]).

    P is 0 for a document without pieces.
    """
    seg = segment(text, self.vocab, matcher=self.matcher)
    ranges = self.passages(seg, stats)
    length = self.sequence_length
    tokens = np.zeros((len(ranges), length), np.int32)
    targets = np.zeros((len(ranges), length), np.int32)
    weights = np.zeros((len(ranges), length), np.float32)
    unit_starts = seg.units[:, 0]
    maskable = ~id_tables(self.info.vocab_size, self.info.special_ids)[0][seg.ids]
    for row, (a, b) in enumerate(ranges):
      lo = int(np.searchsorted(unit_starts, a, "right")) - 1
      hi = int(np.searchsorted(unit_starts, b, "left"))
      units = seg.units[max(lo, 0):hi].copy()
      units[:, :2] = np.clip(units[:, :2], a, b) - a
      units = units[units[:, 0] < units[:, 1]]
      inputs, tgt, wgt = mask_units_unchecked(seg.ids[a:b], maskable[a:b], units, rng,
                                              self.mask_ratio, self.level_share, self.info)
      tokens[row, 0] = self.cls_id
      tokens[row, 1:b - a + 1] = inputs
      tokens[row, b - a + 1] = self.sep_id
      targets[row, 1:b - a + 1] = tgt
      weights[row, 1:b - a + 1] = wgt
    if stats is not None:
      stats.add(documents=1, empty_documents=int(not ranges), passages=len(ranges),
                masked_pieces=int(weights.sum()))
    return tokens, targets, weights


def check_features(dataset: tf.data.Dataset, required: Sequence[str], fn_name: str) -> None:
  """Fails early, naming the features, when examples lack one `fn_name` reads."""
  spec = dataset.element_spec
  if not isinstance(spec, Mapping) or any(k not in spec for k in required):
    have = sorted(spec) if isinstance(spec, Mapping) else type(spec).__name__
    raise ValueError(f"{fn_name} needs examples with features {list(required)}, got {have}")


def mlm_features(tokens: tf.Tensor, segment_ids: tf.Tensor, targets: tf.Tensor,
                 weights: tf.Tensor, task_id: int) -> dict[str, tf.Tensor]:
  """The shared output features of a batch of rows [P, L] (before unbatching)."""
  rows = tf.shape(tokens)[0]
  return {"tokens": tokens, "segment_ids": segment_ids, "mlm_targets": targets,
          "mlm_weights": weights, "label": tf.zeros([rows], tf.int32),
          "label_weight": tf.zeros([rows], tf.float32),
          "task_id": tf.fill([rows], tf.constant(task_id, tf.int32))}


def knowledge_masked_lm(dataset: tf.data.Dataset,
                        seed: int | None = None,
                        *,
                        vocab: Any,
                        matcher: Any,
                        sequence_length: int | Mapping[str, int],
                        level_weights: Sequence[float] = DEFAULT_LEVEL_WEIGHTS,
                        mask_ratio: float = 0.15,
                        task_id: int = 0,
                        stats: PreprocessStats | None = None) -> tf.data.Dataset:
  """Documents {"text": string} -> knowledge-masked passages of `sequence_length` pieces.

  Each document is cut into passages of at most L-2 pieces (at sentence ends where a
  sentence fits) and each passage becomes one example:
    tokens int32[L]        [CLS] passage [SEP], then 0-padding (masked pieces replaced)
    segment_ids int32[L]   zeros
    mlm_targets int32[L]   original ids at masked pieces, 0 elsewhere
    mlm_weights float32[L] 1.0 at masked pieces
    label int32[], label_weight float32[] (0, 0.0), task_id int32[]
  Documents without pieces yield nothing (counted in `stats` as empty_documents).
  The output is a pure function of (input dataset, seed): document i is masked with
  `example_rng(seed, i, text)`; seed None means 0. level_weights are (token, phrase,
  entity) shares of the ~mask_ratio budget (see `mask_units`).
  """
  check_features(dataset, ["text"], "knowledge_masked_lm")
  length = resolve_sequence_length(sequence_length)
  masker = KnowledgeMasker(vocab, matcher, length, level_weights, mask_ratio)
  base_seed = 0 if seed is None else int(seed)

  def build(index: np.ndarray, text: bytes) -> tuple[np.ndarray, ...]:
    rng = example_rng(base_seed, int(index), text)
    return masker.document_arrays(text.decode("utf-8", "replace"), rng, stats)

  def to_rows(index: tf.Tensor, example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    tokens, targets, weights = tf.numpy_function(
        build, [index, example["text"]], (tf.int32, tf.int32, tf.float32), stateful=False)
    for t in (tokens, targets, weights):
      t.set_shape([None, length])
    return mlm_features(tokens, tf.zeros_like(tokens), targets, weights, task_id)

  return dataset.enumerate().map(to_rows).unbatch()
