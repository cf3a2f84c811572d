"""Tests for the 3-class sentence distance task."""

import collections
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ernie3_jax.data import sentence_distance as D
from ernie3_jax.data.corpus_readers import EMBEDDED_CORPUS, read_documents
from ernie3_jax.data.sentences import encode_document
from ernie3_jax.data.vocabulary import Vocabulary
from ernie3_jax.runtime.tf_runtime import tf

L = 128




@pytest.fixture(scope="module")
def pairs(vocab, texts):
  return list(D.distance_examples(texts, 0, vocab=vocab, sequence_length=L,
                                  with_provenance=True))


def _dataset(texts):
  return tf.data.Dataset.from_tensor_slices({"text": tf.constant(texts, tf.string)})


def _split(example, vocab):
  tokens = example["tokens"].tolist()
  assert tokens[0] == vocab.cls_id
  first = tokens.index(vocab.sep_id)
  second = tokens.index(vocab.sep_id, first + 1)
  assert not any(tokens[second + 1:])
  return tokens[1:first], tokens[first + 1:second], first, second


def test_labels_are_balanced(pairs):
  first = pairs[:600]
  counts = collections.Counter(int(p["label"]) for p in first)
  assert len(first) == 600 and set(counts) == {0, 1, 2}
  # 600 draws of 1/3: the standard deviation of a count is about 11.5.
  assert all(abs(c - 200) < 50 for c in counts.values()), counts


def test_label_numbers_are_the_docstrings_mapping(pairs):
  """The numbers a trained head's outputs mean, read from the module docstring and checked
  on the pairs by their provenance, not through the module's own constants."""
  import re
  mapping = {int(n): what for n, what in re.findall(
      r"^\s+(\d)\s+(adjacent|same document|different documents)", D.__doc__, re.M)}
  assert mapping == {0: "adjacent", 1: "same document", 2: "different documents"}
  assert (D.ADJACENT, D.SAME_DOCUMENT, D.OTHER_DOCUMENT, D.NUM_CLASSES) == (0, 1, 2, 3)
  seen = collections.Counter()
  for p in pairs:
    what, da, sa, db, sb = (mapping[int(p["label"])], p["doc_a"], p["sent_a"], p["doc_b"],
                            p["sent_b"])
    seen[what] += 1
    if what == "adjacent":
      assert da == db and sb == sa + 1
    elif what == "same document":
      assert da == db and abs(sb - sa) >= 2
    else:
      assert db < da
  assert set(seen) == set(mapping.values())


def test_pairs_are_what_their_label_says(vocab, texts, pairs):
  specials = (vocab.cls_id, vocab.sep_id, vocab.mask_id)
  docs = [[s for p in encode_document(vocab.tokenizer, t, specials) for s in p] for t in texts]
  seen_docs = set()
  for p in pairs:
    label, da, sa, db, sb = (int(p["label"]), p["doc_a"], p["sent_a"], p["doc_b"], p["sent_b"])
    if label == D.ADJACENT:
      assert da == db and sb == sa + 1
    elif label == D.SAME_DOCUMENT:
      assert da == db and abs(sb - sa) >= 2
    else:
      assert label == D.OTHER_DOCUMENT
      assert db < da and db in seen_docs  # from an earlier document
      # Stock phrases repeat across documents; B must not be one of A's document.
      assert docs[db][sb] not in docs[da]
    seen_docs.add(da)
    # The tokens really are those sentences (corpus sentences fit, nothing is trimmed).
    a, b, first, second = _split(p, vocab)
    assert a == docs[da][sa] and b == docs[db][sb]
    seg = p["segment_ids"].tolist()
    assert seg[:first + 1] == [0] * (first + 1)
    assert seg[first + 1:second + 1] == [1] * (second - first)
    assert not any(seg[second + 1:])
    assert p["label_weight"] == 1.0 and p["task_id"] == 3
    assert not p["mlm_targets"].any() and not p["mlm_weights"].any()
  # The first document has no earlier one to borrow from.
  assert all(int(p["label"]) != D.OTHER_DOCUMENT for p in pairs if p["doc_a"] == 0)


def test_preprocessor_matches_generator_and_is_deterministic(vocab, texts):
  ds = _dataset(texts[:40])
  runs = [list(D.sentence_distance(ds, seed=s, vocab=vocab, sequence_length=L)
               .as_numpy_iterator()) for s in (7, 7, 8)]
  want = list(D.distance_examples(texts[:40], 7, vocab=vocab, sequence_length=L))
  assert len(runs[0]) == len(want)
  for g, w in zip(runs[0], want):
    assert g.keys() == w.keys()
    for k in g:
      np.testing.assert_array_equal(g[k], w[k])
  tokens = [np.stack([e["tokens"] for e in r]) for r in runs]
  np.testing.assert_array_equal(tokens[0], tokens[1])
  assert tokens[0].shape != tokens[2].shape or (tokens[0] != tokens[2]).any()
  spec = D.sentence_distance(ds, seed=0, vocab=vocab, sequence_length=L).element_spec
  assert spec["tokens"].shape == [L] and spec["label"].dtype == tf.int32


def test_long_pairs_keep_both_sentences(vocab):
  text = "Short one. " + " ".join(["word"] * 300) + ". " + " ".join(["more"] * 300) + "."
  for ex in D.distance_examples([text, text], 0, vocab=vocab, sequence_length=12):
    a, b, _, _ = _split(ex, vocab)
    assert a and b and len(a) + len(b) <= 12 - 3


def test_tiny_reservoir_and_bad_arguments(vocab, texts):
  out = list(D.distance_examples(texts[:10], 0, vocab=vocab, sequence_length=L,
                                 reservoir_size=1, with_provenance=True))
  assert any(int(p["label"]) == D.OTHER_DOCUMENT for p in out)
  ds = _dataset(["x"])
  with pytest.raises(ValueError, match="sequence_length"):
    D.sentence_distance(ds, seed=0, vocab=vocab, sequence_length=4)
  with pytest.raises(ValueError, match="reservoir_size"):
    D.sentence_distance(ds, seed=0, vocab=vocab, sequence_length=L, reservoir_size=0)


_WORDS = ["Alpha", "beta", ".", "?", " ", "\n\n", "[SEP]", "[MASK]", "\u00e9t\u00e9",
          "\u200d", "\U0001f600", "\u3002", "y" * 25]
_TEXTS = st.lists(st.one_of(st.text(max_size=300),
                            st.lists(st.sampled_from(_WORDS), max_size=80).map(" ".join)),
                  min_size=1, max_size=5)


def _check(ex, vocab, length):
  assert ex["tokens"].shape == (length,)
  assert ((0 <= ex["tokens"]) & (ex["tokens"] < vocab.vocab_size)).all()
  assert 0 <= ex["label"] < D.NUM_CLASSES
  assert ex["tokens"][0] == vocab.cls_id and (ex["tokens"] == vocab.sep_id).sum() == 2
  assert set(np.unique(ex["segment_ids"]).tolist()) <= {0, 1}


@settings(max_examples=50, deadline=None)
@given(_TEXTS, st.integers(0, 2**32), st.integers(5, 40), st.integers(1, 5))
def test_arbitrary_text_never_crashes(vocab, texts_, seed, length, reservoir_size):
  for ex in D.distance_examples(texts_, seed, vocab=vocab, sequence_length=length,
                                reservoir_size=reservoir_size):
    _check(ex, vocab, length)


@settings(max_examples=8, deadline=None)
@given(_TEXTS, st.integers(0, 2**32))
def test_arbitrary_text_through_tf_data(vocab, texts_, seed):
  """Also through the UTF-8 round trip of tf.data (fewer examples: each builds a dataset)."""
  ds = D.sentence_distance(_dataset(texts_), seed=seed, vocab=vocab, sequence_length=24)
  for ex in ds.as_numpy_iterator():
    _check(ex, vocab, 24)
