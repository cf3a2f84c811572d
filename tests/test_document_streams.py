"""Tests for the document LM streams: layout, exact coverage, resuming, sharding, tf.data."""

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ernie3_jax.data.document_streams import DocumentStreams, document_lm_dataset
from ernie3_jax.data.vocabulary import EOS_ID, Vocabulary

# Document i holds tokens 1000 * (i + 1) + j, so every token names its document and offset.
BASE = 1000


def make_docs(lengths):
  return [[BASE * (i + 1) + j for j in range(n)] for i, n in enumerate(lengths)]


def owner(token):
  return token // BASE - 1


def run(streams, n=None):
  return list(streams if n is None else itertools.islice(streams, n))


def stacked(batches):
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def check_layout(docs, batches, segment_length, num_epochs=1, shard=(0, 1)):
  """All layout invariants; returns the documents in the order rows started them."""
  S = segment_length
  out = stacked(batches)
  T, B = out["reset"].shape
  assert out["tokens"].shape == out["targets"].shape == (T, B, S)
  assert out["tokens"].dtype == np.int32 and out["targets"].dtype == np.int32
  assert out["loss_weights"].dtype == np.float32 and out["reset"].dtype == bool
  assert not out["segment_ids"].any() and (out["task_id"] == 1).all()
  pieces = {}  # document -> [(inputs, targets)], one entry per time it was read
  started = []
  current = [None] * B  # per row: (document, inputs, targets) being read, or None
  for t in range(T):
    for b in range(B):
      w = out["loss_weights"][t, b]
      n = int(w.sum())
      assert (w[:n] == 1).all() and not w[n:].any()
      inputs, targets = out["tokens"][t, b, :n], out["targets"][t, b, :n]
      assert not out["tokens"][t, b, n:].any() and not out["targets"][t, b, n:].any()
      if n == 0:  # an idle row
        assert out["reset"][t, b] and current[b] is None
        continue
      doc = owner(inputs[0])
      # No segment spans two documents (EOS closes a document and belongs to it).
      assert all(owner(x) == doc for x in inputs)
      assert all(owner(x) == doc for x in targets if x != EOS_ID)
      starts = inputs[0] == docs[doc][0] and current[b] is None
      # reset exactly at document starts.
      assert out["reset"][t, b] == starts
      if starts:
        started.append(doc)
        current[b] = (doc, [], [])
      else:
        assert current[b] is not None and current[b][0] == doc
        # Continuity: the last target of the previous step is this step's first input.
        assert out["loss_weights"][t - 1, b].all()
        assert out["targets"][t - 1, b, -1] == inputs[0]
      current[b][1].extend(inputs.tolist())
      current[b][2].extend(targets.tolist())
      # A document ends exactly when its EOS is a target; then the row frees up.
      if targets[-1] == EOS_ID:
        pieces.setdefault(doc, []).append(current[b][1:])
        current[b] = None
      else:
        assert n == S
  assert current == [None] * B, "a document was left unfinished"
  # Every token of every document appears exactly once per epoch: as an input (all but
  # EOS) and as a target (all but the first token).
  expected = [i for i, d in enumerate(docs) if d and i % shard[1] == shard[0]]
  assert sorted(pieces) == expected
  for i in expected:
    assert len(pieces[i]) == num_epochs
    for inputs, targets in pieces[i]:
      assert inputs == docs[i]
      assert targets == docs[i][1:] + [EOS_ID]
  return started


@pytest.mark.parametrize("B,S", [(1, 2), (3, 4), (4, 7), (8, 16)])
def test_layout_and_exact_coverage(B, S):
  rng = np.random.default_rng(B * S)
  docs = make_docs(rng.integers(0, 40, size=30).tolist())
  batches = run(DocumentStreams(lambda: docs, B, S))
  started = check_layout(docs, batches, S)
  # Rows take the next document in corpus order.
  assert started == sorted(started)
  assert started[:B] == [i for i, d in enumerate(docs) if d][:B]


def test_small_example_by_hand():
  docs = [[10, 11, 12, 13, 14], [], [20, 21]]
  batches = run(DocumentStreams(lambda: docs, 2, 4))
  assert [b["tokens"].tolist() for b in batches] == [
      [[10, 11, 12, 13], [20, 21, 0, 0]],
      [[14, 0, 0, 0], [0, 0, 0, 0]]]
  assert [b["targets"].tolist() for b in batches] == [
      [[11, 12, 13, 14], [21, 1, 0, 0]],
      [[1, 0, 0, 0], [0, 0, 0, 0]]]
  assert [b["reset"].tolist() for b in batches] == [[True, True], [False, True]]


def test_epochs_repeat_in_the_same_order():
  docs = make_docs([5, 9, 0, 3])
  batches = run(DocumentStreams(lambda: docs, 2, 3, num_epochs=3))
  check_layout(docs, batches, 3, num_epochs=3)
  forever = DocumentStreams(lambda: docs, 2, 3, num_epochs=None)
  assert len(run(forever, 500)) == 500 and forever.step == 500


@pytest.mark.parametrize("num_epochs", [1, None])
@pytest.mark.parametrize("n", [0, 1, 5, 17, 40])
def test_resume_equals_straight_run(n, num_epochs):
  docs = make_docs(np.random.default_rng(n).integers(0, 30, size=25).tolist())
  straight = run(DocumentStreams(lambda: docs, 3, 5, num_epochs=num_epochs), 2 * n + 3)
  first = DocumentStreams(lambda: docs, 3, 5, num_epochs=num_epochs)
  head = run(first, n)
  state = json.loads(json.dumps(first.state()))
  resumed = DocumentStreams.from_state(lambda: docs, state, num_epochs=num_epochs)
  assert resumed.step == len(head) == min(n, len(straight))
  tail = run(resumed, n + 3)
  assert len(head + tail) == len(straight)
  for got, want in zip(head + tail, straight):
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  # restore() into an existing object behaves the same.
  other = DocumentStreams(lambda: docs, 3, 5, num_epochs=num_epochs)
  run(other, 2)
  other.restore(state)
  for got, want in zip(run(other, n + 3), straight[n:]):
    np.testing.assert_array_equal(got["tokens"], want["tokens"])


def test_resume_after_an_epoch_wrap():
  docs = make_docs([7, 2, 11, 4])
  straight = run(DocumentStreams(lambda: docs, 2, 3, num_epochs=None), 60)
  first = DocumentStreams(lambda: docs, 2, 3, num_epochs=None)
  run(first, 30)
  state = json.loads(json.dumps(first.state()))
  assert state["epoch"] >= 2
  tail = run(DocumentStreams.from_state(lambda: docs, state, num_epochs=None), 30)
  np.testing.assert_array_equal(stacked(tail)["tokens"], stacked(straight[30:])["tokens"])


def test_shards_are_disjoint_and_cover_the_corpus():
  docs = make_docs(np.random.default_rng(1).integers(1, 20, size=23).tolist())
  seen = []
  for k in range(4):
    batches = run(DocumentStreams(lambda: docs, 2, 6, shard_index=k, num_shards=4))
    check_layout(docs, batches, 6, shard=(k, 4))
    seen.append({owner(t) for t in stacked(batches)["tokens"].ravel() if t})
  assert all(a.isdisjoint(b) for a, b in itertools.combinations(seen, 2))
  assert set().union(*seen) == set(range(len(docs)))
  assert all(i % 4 == k for k, s in enumerate(seen) for i in s)


def test_encode_is_applied_lazily_and_only_to_the_shard():
  calls = []
  texts = [f"doc{i}" for i in range(10)]

  def encode(text):
    calls.append(text)
    return [BASE * (int(text[3:]) + 1)] * 3
  streams = DocumentStreams(lambda: texts, 1, 4, encode=encode, shard_index=1, num_shards=2)
  run(streams)
  assert set(calls) == {f"doc{i}" for i in range(1, 10, 2)}


def test_errors():
  with pytest.raises(ValueError, match="my-corpus"):
    DocumentStreams(lambda: [], 2, 4, source="my-corpus")
  with pytest.raises(ValueError, match="my-corpus"):
    DocumentStreams(lambda: [[], []], 2, 4, source="my-corpus")
  with pytest.raises(ValueError, match="shard 1 of 2"):
    DocumentStreams(lambda: [[5]], 2, 4, shard_index=1, num_shards=2)
  with pytest.raises(ValueError, match="segment_length"):
    DocumentStreams(lambda: [[5, 6]], 2, 1)
  with pytest.raises(ValueError, match="shard_index"):
    DocumentStreams(lambda: [[5, 6]], 2, 4, shard_index=2, num_shards=2)
  streams = DocumentStreams(lambda: [[5, 6]], 2, 4)
  with pytest.raises(ValueError, match="segment_length"):
    DocumentStreams(lambda: [[5, 6]], 2, 8).restore(streams.state())
  with pytest.raises(ValueError, match="does not have"):
    state = streams.state()
    state["rows"][0] = [7, 0]
    streams.restore(state)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 25), min_size=1, max_size=20), st.integers(1, 5),
       st.integers(2, 9), st.integers(0, 30), st.integers(1, 3))
def test_properties(lengths, B, S, n, epochs):
  docs = make_docs(lengths)
  if not any(lengths):
    with pytest.raises(ValueError):
      DocumentStreams(lambda: docs, B, S)
    return
  straight = run(DocumentStreams(lambda: docs, B, S, num_epochs=epochs))
  check_layout(docs, straight, S, num_epochs=epochs)
  first = DocumentStreams(lambda: docs, B, S, num_epochs=epochs)
  head = run(first, n)
  resumed = DocumentStreams.from_state(lambda: docs, json.loads(json.dumps(first.state())),
                                       num_epochs=epochs)
  both = head + run(resumed)
  assert len(both) == len(straight)
  for got, want in zip(both, straight):
    np.testing.assert_array_equal(got["tokens"], want["tokens"])
    np.testing.assert_array_equal(got["reset"], want["reset"])


# ---------------------------------------------------------------------------- tf.data


@pytest.fixture(scope="module")
def vocab():
  return Vocabulary()


def test_dataset_on_the_embedded_corpus(vocab):
  B, S, T = 4, 32, 12
  ds = document_lm_dataset(vocab=vocab, batch_size=B, segment_length=S)
  assert ds.element_spec["tokens"].shape == [B, S]
  assert ds.element_spec["reset"].shape == [B]
  batched = list(ds.take(T).as_numpy_iterator())
  assert batched[0]["reset"].all()
  for batch in batched:
    assert ((batch["tokens"] >= 0) & (batch["tokens"] < vocab.vocab_size)).all()
    assert ((batch["targets"] >= 0) & (batch["targets"] < vocab.vocab_size)).all()
  # Rows unbatched in order regroup into exactly the same steps.
  rows = document_lm_dataset(vocab=vocab, batch_size=B, segment_length=S, batched=False)
  assert rows.element_spec["tokens"].shape == [S] and rows.element_spec["reset"].shape == []
  regrouped = list(rows.batch(B).take(T).as_numpy_iterator())
  for got, want in zip(regrouped, batched):
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  # Continuity across steps, through tf.data.
  for prev, nxt in zip(batched, batched[1:]):
    carry = ~nxt["reset"]
    np.testing.assert_array_equal(nxt["tokens"][carry, 0], prev["targets"][carry, -1])


def test_dataset_resumes_from_the_state_it_emits(vocab):
  kwargs = dict(vocab=vocab, batch_size=3, segment_length=16, with_state=True)
  straight = list(document_lm_dataset(**kwargs).take(20).as_numpy_iterator())
  state = json.loads(straight[9]["stream_state"])
  assert state["step"] == 10
  resumed = list(document_lm_dataset(state=state, **kwargs).take(10).as_numpy_iterator())
  for got, want in zip(resumed, straight[10:]):
    np.testing.assert_array_equal(got["tokens"], want["tokens"])
    np.testing.assert_array_equal(got["reset"], want["reset"])


def test_dataset_errors(vocab, tmp_path):
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  with pytest.raises(ValueError, match="empty.jsonl"):
    document_lm_dataset(str(empty), vocab=vocab, batch_size=2, segment_length=8)
  with pytest.raises(ValueError, match="segment_length"):
    document_lm_dataset(vocab=vocab, batch_size=2, segment_length=1)
