"""ERNIE 2.0 sentence distance: classify how far sentence B is from sentence A.

Labels:
  0  adjacent: B is the sentence right after A in the same document (paragraph breaks
     do not count as gaps);
  1  same document, not adjacent: B and A are at least two sentences apart (B may come
     before or after A, so order alone does not reveal the class);
  2  different documents: B comes from an earlier document of the stream.

Each document with n sentences yields max(1, n // 2) pairs (none if no class is feasible,
e.g. a one-sentence first document). The label of each pair is drawn uniformly from
{0, 1, 2}; if the document cannot make it (class 0 needs 2 sentences, class 1 needs 3,
class 2 needs an earlier document) another feasible class is drawn uniformly, so the
classes are balanced whenever documents have 3 or more sentences.

Class 2 draws B from a reservoir of sentences of previously seen documents: a uniform
sample (Vitter's algorithm R) of at most `reservoir_size` sentences over everything seen
so far. A document's own sentences enter the reservoir only after its pairs are made, and
a candidate that is textually identical to a sentence of the current document (stock
phrases repeat across documents) is redrawn a few times, so B is really foreign. All
randomness comes from per-document generators seeded by (seed, document index), and the
reservoir is a function of the documents before, so the output is a pure function of
(dataset, seed).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

from ernie3_jax.data.sentence_reordering import (example_rng, fit_pieces, generator_dataset,
                                                 pack_example, resolve_sequence_length,
                                                 texts_of)
from ernie3_jax.data.sentences import encode_document
from ernie3_jax.data.vocabulary import UNK_ID
from ernie3_jax.runtime.tf_runtime import tf

ADJACENT, SAME_DOCUMENT, OTHER_DOCUMENT = 0, 1, 2
NUM_CLASSES = 3
_DISTANCE_STREAM = 0xD15  # keeps distance draws apart from other tasks with the same seed
_FOREIGN_TRIES = 8
MIN_SEQUENCE_LENGTH = 5  # [CLS] a [SEP] b [SEP]


def _far_pair(rng, n: int) -> tuple[int, int]:
  """Uniform (i, j) with |i - j| >= 2 by rejection; n >= 3 accepts >= 2/9 of the draws."""
  while True:
    i, j = (int(x) for x in rng.integers(0, n, size=2))
    if abs(i - j) >= 2:
      return i, j


def distance_examples(texts: Iterable[str], seed: int, *, vocab, sequence_length: int,
                      task_id: int = 3, reservoir_size: int = 1000,
                      with_provenance: bool = False) -> Iterator[dict[str, Any]]:
  """Python generator behind `sentence_distance`.

  With `with_provenance`, examples also carry "doc_a", "sent_a", "doc_b", "sent_b":
  document index in the stream and sentence index within the document of A and B.
  """
  length = resolve_sequence_length(sequence_length, MIN_SEQUENCE_LENGTH)
  if reservoir_size < 1:
    raise ValueError(f"reservoir_size must be >= 1, got {reservoir_size}")
  tokenizer = vocab.tokenizer
  specials = (vocab.cls_id, vocab.sep_id, vocab.mask_id)
  reservoir: list[tuple[int, int, list[int]]] = []  # (document, sentence, ids)
  seen = 0  # sentences offered to the reservoir so far
  for doc_index, text in enumerate(texts):
    rng = example_rng(seed, _DISTANCE_STREAM, doc_index)
    sentences = [s for p in encode_document(tokenizer, text, specials, UNK_ID) for s in p]
    n = len(sentences)
    if n == 0:
      continue
    own = {tuple(s) for s in sentences}
    feasible = [c for c, ok in ((ADJACENT, n >= 2), (SAME_DOCUMENT, n >= 3),
                                (OTHER_DOCUMENT, bool(reservoir))) if ok]
    for _ in range(max(1, n // 2) if feasible else 0):
      label = int(rng.integers(NUM_CLASSES))
      if label not in feasible:
        label = feasible[int(rng.integers(len(feasible)))]
      if label == ADJACENT:
        i = int(rng.integers(n - 1))
        a, b = (doc_index, i, sentences[i]), (doc_index, i + 1, sentences[i + 1])
      elif label == SAME_DOCUMENT:
        i, j = _far_pair(rng, n)
        a, b = (doc_index, i, sentences[i]), (doc_index, j, sentences[j])
      else:
        i = int(rng.integers(n))
        a = (doc_index, i, sentences[i])
        for _ in range(_FOREIGN_TRIES):
          b = reservoir[int(rng.integers(len(reservoir)))]
          if tuple(b[2]) not in own:
            break
      pieces = fit_pieces([a[2], b[2]], length - 3)
      example = pack_example(pieces, vocab.cls_id, vocab.sep_id, length, label, task_id)
      if with_provenance:
        example.update(doc_a=a[0], sent_a=a[1], doc_b=b[0], sent_b=b[1])
      yield example
    for i, ids in enumerate(sentences):
      seen += 1
      if len(reservoir) < reservoir_size:
        reservoir.append((doc_index, i, ids))
      else:
        slot = int(rng.integers(seen))
        if slot < reservoir_size:
          reservoir[slot] = (doc_index, i, ids)


def sentence_distance(dataset: tf.data.Dataset, seed: int, *, vocab,
                      sequence_length: int | Mapping[str, int], task_id: int = 3,
                      reservoir_size: int = 1000) -> tf.data.Dataset:
  """Preprocessor: documents ({"text": string}) -> sentence distance pairs.

  Output features: tokens int32[L] ([CLS] A [SEP] B [SEP], longer side trimmed first),
  segment_ids int32[L] (0 for [CLS] A [SEP], 1 for B [SEP], 0 for padding), label int32
  in {0, 1, 2}, label_weight float32 (1.0), mlm_targets int32[L] and mlm_weights
  float32[L] (zeros), task_id int32.
  """
  length = resolve_sequence_length(sequence_length, MIN_SEQUENCE_LENGTH)
  if reservoir_size < 1:
    raise ValueError(f"reservoir_size must be >= 1, got {reservoir_size}")
  return generator_dataset(
      lambda: distance_examples(texts_of(dataset), seed, vocab=vocab, sequence_length=length,
                                task_id=task_id, reservoir_size=reservoir_size), length)
