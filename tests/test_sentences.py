"""Tests for the sentence and paragraph splitter."""

import itertools

import pytest
from hypothesis import given, settings, strategies as st

from ernie3_jax.data.corpus_readers import EMBEDDED_CORPUS, read_documents
from ernie3_jax.data.sentences import (encode_document, split_document, split_paragraphs,
                                       split_sentences)
from ernie3_jax.data.vocabulary import UNK_ID, Vocabulary

# Text built from pieces that hit every rule, mixed with arbitrary unicode below.
_PIECES = ["Word", "x", " ", "  ", ".", "!", "?", "...", "\u2026", "\u3002", "\uff01", "\"",
           ")", "\u201d", "\n", "\n\n", "\n \t\n", "\r\n\r\n", "\u2029", "\u00a0", "[SEP]",
           "3.14", "\u200d", "\u6f22\u5b57"]
texts = st.one_of(st.text(), st.lists(st.sampled_from(_PIECES), max_size=40).map("".join))


def _squeeze(text):
  return "".join(text.split())


def test_basic_sentences():
  assert split_sentences("One two. Three four! Five six? Seven") == [
      "One two.", "Three four!", "Five six?", "Seven"]


def test_terminator_needs_following_whitespace():
  assert split_sentences("Pi is 3.14 or so. See e.g.this.") == ["Pi is 3.14 or so.",
                                                                 "See e.g.this."]


def test_closing_quotes_and_brackets_stay_with_the_sentence():
  assert split_sentences('He said "Go." Then (quietly.) he left...  Fine') == [
      'He said "Go."', "Then (quietly.)", "he left...", "Fine"]


def test_cjk_terminators_need_no_space():
  assert split_sentences("\u4f60\u597d\u3002\u4e16\u754c\uff01\u518d\u89c1") == [
      "\u4f60\u597d\u3002", "\u4e16\u754c\uff01", "\u518d\u89c1"]


@pytest.mark.parametrize("text", ["", " ", "\n\n\n", "\u2029", "\t \r\n"])
def test_empty_text(text):
  assert split_sentences(text) == []
  assert split_paragraphs(text) == []
  assert split_document(text) == []


def test_paragraphs():
  text = "First one. Second.\n\n  \nThird\r\n\r\nFourth.\u2029Fifth.\nstill fifth."
  assert split_paragraphs(text) == ["First one. Second.", "Third", "Fourth.",
                                    "Fifth.\nstill fifth."]
  assert split_document(text) == [["First one.", "Second."], ["Third"], ["Fourth."],
                                  ["Fifth.", "still fifth."]]
  # A paragraph break ends a sentence even without a terminator.
  assert split_sentences("no stop\n\nnext") == ["no stop", "next"]


def test_embedded_corpus_round_trips():
  """Corpus sentences are separated by single spaces, so joining them gives the text back."""
  docs = list(itertools.islice(read_documents(EMBEDDED_CORPUS), 300))
  for doc in docs:
    paragraphs = split_document(doc.text)
    assert "\n\n".join(" ".join(p) for p in paragraphs) == doc.text
    for sentence in (s for p in paragraphs for s in p):
      assert sentence.endswith(".") and sentence[0].isupper()


def test_encode_document_drops_empty_and_neutralises_special_pieces():
  vocab = Vocabulary()
  out = encode_document(vocab.tokenizer, "Alpha [SEP] beta. \u200d\n\n\u200d\n\nGamma [CLS].",
                        (vocab.cls_id, vocab.sep_id, vocab.mask_id))
  flat = [t for p in out for s in p for t in s]
  assert vocab.sep_id not in flat and vocab.cls_id not in flat and UNK_ID in flat
  assert all(p and all(s for s in p) for p in out)
  assert encode_document(vocab.tokenizer, "") == []


@settings(max_examples=50, deadline=None)
@given(texts)
def test_split_properties(text):
  paragraphs = split_document(text)
  sentences = split_sentences(text)
  assert sentences == [s for p in paragraphs for s in p]
  for s in sentences:
    assert s and s == s.strip() and "\n\n" not in s
  # Nothing but whitespace is ever lost.
  assert _squeeze("".join(sentences)) == _squeeze(text)
