"""ERNIE 2.0 sentence reordering: split a passage into k segments, shuffle, classify.

A passage (a paragraph, or a window of consecutive sentences of a long paragraph) is cut
at sentence boundaries into k contiguous segments s_0 .. s_{k-1} (1 <= k <= max_segments),
which are emitted in a shuffled order:

    [CLS] s_perm[0] [SEP] s_perm[1] [SEP] ... s_perm[k-1] [SEP] [PAD] ...

`perm` is the tuple of original segment indices in the order they appear in the example,
so shown piece j is original segment perm[j], and the original text is recovered by
reading the pieces at positions perm.index(0), perm.index(1), ... . The label is the
class of `perm` (see `permutation_classes`); k = 1 always gives class 0.

Also holds the plumbing shared with the other sentence-level preprocessor: per-example
random generators and the numpy-generator -> tf.data bridge.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from ernie3_jax.data.sentences import encode_document
from ernie3_jax.data.vocabulary import UNK_ID
from ernie3_jax.runtime.tf_runtime import tf

MAX_SUPPORTED_SEGMENTS = 8  # 8 segments already mean 46,233 classes
NUM_SEGMENT_EMBEDDINGS = 4  # segment ids are capped at this minus one
_REORDER_STREAM = 0x5E0  # keeps reordering draws apart from other tasks with the same seed


# --------------------------------------------------------------------------- classes


@functools.lru_cache(maxsize=None)
def _classes(m: int) -> tuple[tuple[tuple[int, ...], ...], dict[tuple[int, ...], int]]:
  if not 1 <= m <= MAX_SUPPORTED_SEGMENTS:
    raise ValueError(f"max_segments must be in [1, {MAX_SUPPORTED_SEGMENTS}], got {m}")
  perms = tuple(p for n in range(1, m + 1) for p in itertools.permutations(range(n)))
  return perms, {p: i for i, p in enumerate(perms)}


def permutation_classes(m: int) -> list[tuple[int, ...]]:
  """All permutations of n = 1..m segments: by n, then lexicographically.

  The class of a permutation is its index here; there are sum_{n=1..m} n! classes
  (m=3: (0,), (0,1), (1,0), (0,1,2), (0,2,1), ... -> 9 classes; m=4 -> 33).
  """
  return list(_classes(m)[0])


def num_permutation_classes(m: int) -> int:
  """sum_{n=1..m} n!, the size of the reordering classifier."""
  return sum(math.factorial(n) for n in range(1, m + 1))


def permutation_to_label(perm: Iterable[int], max_segments: int | None = None) -> int:
  """Class of `perm`; independent of `max_segments` as long as len(perm) <= max_segments."""
  perm = tuple(int(p) for p in perm)
  m = len(perm) if max_segments is None else max_segments
  if not 1 <= len(perm) <= m or sorted(perm) != list(range(len(perm))):
    raise ValueError(f"{perm} is not a permutation of 1..{m} segments")
  return _classes(m)[1][perm]


def label_to_permutation(label: int, m: int) -> tuple[int, ...]:
  """Inverse of `permutation_to_label` for classifiers over up to `m` segments."""
  perms = _classes(m)[0]
  if not 0 <= label < len(perms):
    raise ValueError(f"label {label} out of range [0, {len(perms)}) for m={m}")
  return perms[label]


# --------------------------------------------------------------------------- plumbing


def example_rng(seed: int, stream: int, index: int) -> np.random.Generator:
  """Random generator of example `index`: a pure function of (seed, stream, index)."""
  return np.random.Generator(np.random.PCG64([int(seed) % 2**64, stream, index]))


def resolve_sequence_length(sequence_length: int | Mapping[str, int], minimum: int) -> int:
  """An int, or seqio's {feature: length} mapping (the "tokens" entry)."""
  if isinstance(sequence_length, Mapping):
    if "tokens" not in sequence_length:
      raise ValueError(f'sequence_length mapping needs a "tokens" entry, got {sequence_length}')
    sequence_length = sequence_length["tokens"]
  length = int(sequence_length)
  if length < minimum:
    raise ValueError(f"sequence_length must be >= {minimum} for this task, got {length}")
  return length


def texts_of(dataset: tf.data.Dataset, feature: str = "text") -> Iterator[str]:
  """Python strings of one feature of a dataset of dicts (invalid UTF-8 is replaced)."""
  # Reading in batches: tf.data costs far more per element than per byte.
  texts = dataset.map(lambda example: example[feature]).batch(256)
  for batch in texts.as_numpy_iterator():
    for value in batch:
      yield value.decode("utf-8", "replace")


def classification_signature(length: int) -> dict[str, tf.TensorSpec]:
  """Features of the sentence-level classification tasks."""
  return {
      "tokens": tf.TensorSpec([length], tf.int32),
      "segment_ids": tf.TensorSpec([length], tf.int32),
      "label": tf.TensorSpec([], tf.int32),
      "label_weight": tf.TensorSpec([], tf.float32),
      "mlm_targets": tf.TensorSpec([length], tf.int32),
      "mlm_weights": tf.TensorSpec([length], tf.float32),
      "task_id": tf.TensorSpec([], tf.int32),
  }


def generator_dataset(make: Callable[[], Iterator[dict[str, Any]]], length: int,
                      chunk: int = 64) -> tf.data.Dataset:
  """tf.data over a Python example generator; each iteration re-runs `make` from scratch.

  Examples cross into TensorFlow `chunk` at a time and are unbatched there, because
  `from_generator` costs a fraction of a millisecond per element, whatever its size.
  """
  signature = classification_signature(length)

  def chunks():
    buffer = []
    for example in make():
      buffer.append(example)
      if len(buffer) == chunk:
        yield {k: np.stack([ex[k] for ex in buffer]) for k in signature}
        buffer = []
    if buffer:
      yield {k: np.stack([ex[k] for ex in buffer]) for k in signature}

  chunked = {k: tf.TensorSpec([None, *spec.shape], spec.dtype) for k, spec in signature.items()}
  return tf.data.Dataset.from_generator(chunks, output_signature=chunked).unbatch()


def pack_example(pieces: list[list[int]], cls_id: int, sep_id: int, length: int,
                 label: int, task_id: int) -> dict[str, Any]:
  """[CLS] p0 [SEP] p1 [SEP] ... padded with zeros; piece i has segment id min(i, 3)."""
  tokens = np.zeros(length, np.int32)
  segments = np.zeros(length, np.int32)
  tokens[0] = cls_id
  pos = 1
  for i, piece in enumerate(pieces):
    n = len(piece)
    tokens[pos:pos + n] = piece
    tokens[pos + n] = sep_id
    segments[pos:pos + n + 1] = min(i, NUM_SEGMENT_EMBEDDINGS - 1)
    pos += n + 1
  return {"tokens": tokens, "segment_ids": segments, "label": np.int32(label),
          "label_weight": np.float32(1.0), "mlm_targets": np.zeros(length, np.int32),
          "mlm_weights": np.zeros(length, np.float32), "task_id": np.int32(task_id)}


def fit_pieces(pieces: list[list[int]], budget: int) -> list[list[int]]:
  """Trims the tails of the longest pieces until their total fits `budget`.

  Every piece keeps at least one token; needs budget >= len(pieces).
  """
  lengths = [len(p) for p in pieces]
  excess = sum(lengths) - budget
  while excess > 0:
    i = int(np.argmax(lengths))
    cut = min(excess, lengths[i] - 1)
    lengths[i] -= cut
    excess -= cut
  return [p[:n] for p, n in zip(pieces, lengths)]


# --------------------------------------------------------------------------- the task


def _windows(sentences: list[list[int]], budget: int) -> Iterator[list[list[int]]]:
  """Greedy runs of consecutive sentences whose total length fits `budget`.

  A sentence longer than the budget forms a window on its own (and is truncated later).
  """
  window, total = [], 0
  for ids in sentences:
    if window and total + len(ids) > budget:
      yield window
      window, total = [], 0
    window.append(ids)
    total += len(ids)
  if window:
    yield window


def reordering_examples(texts: Iterable[str], seed: int, *, vocab, sequence_length: int,
                        max_segments: int = 3, task_id: int = 2,
                        with_provenance: bool = False) -> Iterator[dict[str, Any]]:
  """Python generator behind `sentence_reordering`, one example per passage.

  Passages: each paragraph whose sentences fit into sequence_length - 1 - max_segments
  tokens, otherwise greedy windows of consecutive sentences that fit. With
  `with_provenance`, examples also carry "doc_index", "paragraph_index", "first_sentence"
  (in the paragraph), "segment_sizes" (sentences per original segment) and "permutation".
  """
  length = resolve_sequence_length(sequence_length, max_segments + 2)
  label_of = _classes(max_segments)[1]
  tokenizer = vocab.tokenizer
  specials = (vocab.cls_id, vocab.sep_id, vocab.mask_id)
  budget = length - 1 - max_segments  # room for [CLS] and up to max_segments [SEP]s
  for doc_index, text in enumerate(texts):
    rng = example_rng(seed, _REORDER_STREAM, doc_index)
    paragraphs = encode_document(tokenizer, text, specials, UNK_ID)
    for paragraph_index, sentences in enumerate(paragraphs):
      first = 0
      for window in _windows(sentences, budget):
        n = len(window)
        k = int(rng.integers(1, min(max_segments, n) + 1))
        # k - 1 distinct cut points among the n - 1 sentence boundaries.
        cuts = rng.choice(n - 1, k - 1, replace=False) + 1 if k > 1 else []
        bounds = [0, *sorted(int(c) for c in cuts), n]
        segments = [[t for s in window[a:b] for t in s] for a, b in zip(bounds, bounds[1:])]
        perm = tuple(int(p) for p in rng.permutation(k))
        shown = fit_pieces([segments[p] for p in perm], length - 1 - k)
        example = pack_example(shown, vocab.cls_id, vocab.sep_id, length, label_of[perm],
                               task_id)
        if with_provenance:
          example.update(doc_index=doc_index, paragraph_index=paragraph_index,
                         first_sentence=first, permutation=perm,
                         segment_sizes=[b - a for a, b in zip(bounds, bounds[1:])])
        first += n
        yield example


def sentence_reordering(dataset: tf.data.Dataset, seed: int, *, vocab,
                        sequence_length: int | Mapping[str, int], max_segments: int = 3,
                        task_id: int = 2) -> tf.data.Dataset:
  """Preprocessor: documents ({"text": string}) -> sentence reordering examples.

  Output features: tokens int32[L], segment_ids int32[L] (piece index capped at 3),
  label int32 (class of the permutation, `permutation_classes(max_segments)`),
  label_weight float32 (1.0), mlm_targets int32[L] and mlm_weights float32[L] (zeros),
  task_id int32. A pure function of (dataset, seed): document i draws from a generator
  seeded by (seed, i), so iterating the result twice gives the same examples.
  """
  length = resolve_sequence_length(sequence_length, max_segments + 2)
  _classes(max_segments)  # fail here, not inside the generator, on a bad max_segments
  return generator_dataset(
      lambda: reordering_examples(texts_of(dataset), seed, vocab=vocab, sequence_length=length,
                                  max_segments=max_segments, task_id=task_id), length)
