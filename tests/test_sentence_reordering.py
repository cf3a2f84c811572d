"""Tests for the sentence reordering task: classes, examples, the tf.data preprocessor."""

import collections
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ernie3_jax.data import sentence_reordering as R
from ernie3_jax.data.corpus_readers import EMBEDDED_CORPUS, read_documents
from ernie3_jax.data.sentences import encode_document
from ernie3_jax.data.vocabulary import Vocabulary
from ernie3_jax.runtime.tf_runtime import tf

L = 128




def _dataset(texts):
  return tf.data.Dataset.from_tensor_slices({"text": tf.constant(texts, tf.string)})


def _collect(ds):
  return list(ds.as_numpy_iterator())


def _pieces(example, vocab):
  """Splits [CLS] p0 [SEP] p1 [SEP] ... back into the pieces."""
  tokens = example["tokens"].tolist()
  assert tokens[0] == vocab.cls_id
  seps = [i for i, t in enumerate(tokens) if t == vocab.sep_id]
  bounds = [0, *seps]
  assert all(t == 0 for t in tokens[seps[-1] + 1:])
  return [tokens[a + 1:b] for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("m,count", [(1, 1), (2, 3), (3, 9), (4, 33), (5, 153)])
def test_number_of_classes(m, count):
  classes = R.permutation_classes(m)
  assert len(classes) == count == R.num_permutation_classes(m)
  assert len(set(classes)) == count
  assert count == sum(math.factorial(n) for n in range(1, m + 1))


def test_class_order_is_the_documented_one():
  assert R.permutation_classes(3) == [(0,), (0, 1), (1, 0), (0, 1, 2), (0, 2, 1), (1, 0, 2),
                                      (1, 2, 0), (2, 0, 1), (2, 1, 0)]


def test_matches_the_model_head_size():
  from ernie3_jax.model.config import Ernie3Config
  cfg = Ernie3Config()
  assert cfg.num_reorder_classes == R.num_permutation_classes(cfg.max_reorder_segments)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_label_permutation_round_trip(m):
  for label in range(R.num_permutation_classes(m)):
    perm = R.label_to_permutation(label, m)
    assert R.permutation_to_label(perm, m) == label
    # Shorter permutations keep their label under a larger classifier.
    assert R.permutation_to_label(perm, m + 1) == label
    assert R.label_to_permutation(label, m + 1) == perm


def test_bad_labels_and_permutations():
  with pytest.raises(ValueError):
    R.label_to_permutation(9, 3)
  with pytest.raises(ValueError):
    R.label_to_permutation(-1, 3)
  with pytest.raises(ValueError):
    R.permutation_to_label((0, 0))
  with pytest.raises(ValueError):
    R.permutation_to_label((0, 1, 2, 3), 3)
  with pytest.raises(ValueError, match="max_segments"):
    R.permutation_classes(0)


def test_examples_are_permutations_of_the_original_passage(vocab, texts):
  m = 3
  examples = list(R.reordering_examples(texts, 0, vocab=vocab, sequence_length=L,
                                        max_segments=m, with_provenance=True))
  docs = [encode_document(vocab.tokenizer, t, (vocab.cls_id, vocab.sep_id, vocab.mask_id))
          for t in texts]
  covered = collections.defaultdict(list)
  for ex in examples:
    perm = R.label_to_permutation(int(ex["label"]), m)
    assert perm == ex["permutation"]
    shown = _pieces(ex, vocab)
    assert len(shown) == len(perm)
    # The label alone recovers the original order: original segment i is shown at
    # position perm.index(i).
    original = [shown[perm.index(i)] for i in range(len(perm))]
    sentences = docs[ex["doc_index"]][ex["paragraph_index"]]
    first = ex["first_sentence"]
    expected, start = [], first
    for size in ex["segment_sizes"]:
      expected.append([t for s in sentences[start:start + size] for t in s])
      start += size
    assert original == expected
    covered[(ex["doc_index"], ex["paragraph_index"])].append((first, start))
    # Segment ids: [CLS] is 0, piece j and its [SEP] are min(j, 3), padding is 0.
    seg = ex["segment_ids"].tolist()
    pos = 1
    for j, piece in enumerate(shown):
      assert seg[pos:pos + len(piece) + 1] == [min(j, 3)] * (len(piece) + 1)
      pos += len(piece) + 1
    assert seg[0] == 0 and not any(seg[pos:])
    assert ex["label_weight"] == 1.0 and ex["task_id"] == 2
    assert not ex["mlm_targets"].any() and not ex["mlm_weights"].any()
  # Windows tile every paragraph: consecutive, from its first to its last sentence.
  for (d, p), spans in covered.items():
    assert spans[0][0] == 0 and spans[-1][1] == len(docs[d][p])
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
  assert len(covered) == sum(len(d) for d in docs)
  # All nine classes occur.
  assert {int(ex["label"]) for ex in examples} == set(range(9))


def test_preprocessor_features_and_python_generator_agree(vocab, texts):
  ds = R.sentence_reordering(_dataset(texts[:20]), seed=3, vocab=vocab,
                             sequence_length={"tokens": 64})
  spec = ds.element_spec
  assert spec["tokens"].shape == [64] and spec["tokens"].dtype == tf.int32
  assert spec["segment_ids"].dtype == tf.int32 and spec["label"].shape == []
  assert spec["label_weight"].dtype == tf.float32 and spec["mlm_weights"].dtype == tf.float32
  assert spec["mlm_targets"].dtype == tf.int32 and spec["task_id"].dtype == tf.int32
  got = _collect(ds)
  want = list(R.reordering_examples(texts[:20], 3, vocab=vocab, sequence_length=64))
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert g.keys() == w.keys()
    for k in g:
      np.testing.assert_array_equal(g[k], w[k])


def test_deterministic_given_seed_and_different_across_seeds(vocab, texts):
  ds = _dataset(texts[:30])
  runs = [_collect(R.sentence_reordering(ds, seed=s, vocab=vocab, sequence_length=L))
          for s in (5, 5, 6)]
  stack = [np.stack([e["tokens"] for e in r]) for r in runs]
  labels = [np.array([e["label"] for e in r]) for r in runs]
  np.testing.assert_array_equal(stack[0], stack[1])
  np.testing.assert_array_equal(labels[0], labels[1])
  # Same passages (windows do not depend on the seed), different shuffles.
  assert len(labels[0]) == len(labels[2]) and (labels[0] != labels[2]).any()
  # Iterating one dataset twice also repeats itself.
  again = R.sentence_reordering(ds, seed=5, vocab=vocab, sequence_length=L)
  np.testing.assert_array_equal(np.stack([e["tokens"] for e in _collect(again)]), stack[0])
  np.testing.assert_array_equal(np.stack([e["tokens"] for e in _collect(again)]), stack[0])


def test_long_sentences_are_truncated_and_segment_ids_capped(vocab):
  long_sentence = " ".join(["word"] * 200) + "."
  ex = next(R.reordering_examples([long_sentence + " Short one."], 0, vocab=vocab,
                                  sequence_length=16))
  assert ex["tokens"][0] == vocab.cls_id and ex["tokens"][-1] == vocab.sep_id
  text = " ".join(f"Sentence number {i}." for i in range(40))
  examples = list(R.reordering_examples([text] * 20, 1, vocab=vocab, sequence_length=L,
                                        max_segments=5))
  assert max(int(e["segment_ids"].max()) for e in examples) == 3
  assert max(int(e["label"]) for e in examples) < 153
  assert any(len(R.label_to_permutation(int(e["label"]), 5)) == 5 for e in examples)


def test_bad_arguments(vocab):
  ds = _dataset(["x"])
  with pytest.raises(ValueError, match="sequence_length"):
    R.sentence_reordering(ds, seed=0, vocab=vocab, sequence_length=4, max_segments=3)
  with pytest.raises(ValueError, match="max_segments"):
    R.sentence_reordering(ds, seed=0, vocab=vocab, sequence_length=64, max_segments=0)
  with pytest.raises(ValueError, match="tokens"):
    R.sentence_reordering(ds, seed=0, vocab=vocab, sequence_length={"inputs": 64})


_WORDS = ["Alpha", "beta", ".", "!", " ", "\n\n", "[SEP]", "\u00e9t\u00e9", "\u200d",
          "\U0001f600", "\u3002", "x" * 30]
_TEXTS = st.lists(st.one_of(st.text(max_size=300),
                            st.lists(st.sampled_from(_WORDS), max_size=80).map(" ".join)),
                  min_size=1, max_size=4)


def _check(ex, vocab, length, m):
  assert ex["tokens"].shape == (length,)
  assert ((0 <= ex["tokens"]) & (ex["tokens"] < vocab.vocab_size)).all()
  assert 0 <= ex["label"] < R.num_permutation_classes(m)
  assert ex["tokens"][0] == vocab.cls_id
  assert (ex["tokens"] == vocab.sep_id).sum() == len(R.label_to_permutation(ex["label"], m))
  assert 0 <= ex["segment_ids"].min() and ex["segment_ids"].max() <= 3


@settings(max_examples=50, deadline=None)
@given(_TEXTS, st.integers(0, 2**32), st.integers(5, 40), st.integers(1, 4))
def test_arbitrary_text_never_crashes(vocab, texts_, seed, length, m):
  length = max(length, m + 2)
  for ex in R.reordering_examples(texts_, seed, vocab=vocab, sequence_length=length,
                                  max_segments=m):
    _check(ex, vocab, length, m)


@settings(max_examples=8, deadline=None)
@given(_TEXTS, st.integers(0, 2**32))
def test_arbitrary_text_through_tf_data(vocab, texts_, seed):
  """Also through the UTF-8 round trip of tf.data (fewer examples: each builds a dataset)."""
  ds = R.sentence_reordering(_dataset(texts_), seed=seed, vocab=vocab, sequence_length=24)
  for ex in ds.as_numpy_iterator():
    _check(ex, vocab, 24, 3)
