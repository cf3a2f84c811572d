"""Tests for Universal Knowledge-Text Prediction: alignment and the preprocessor."""

import numpy as np
import pytest

from ernie3_jax.data import knowledge_masking as km
from ernie3_jax.data import triple_alignment, uktp
from ernie3_jax.data.corpus_readers import EMBEDDED_CORPUS, Document, read_documents
from ernie3_jax.data.entity_matcher import EntityMatcher
from ernie3_jax.data.knowledge_graph import (EMBEDDED_HELDOUT_KG, KnowledgeGraph, Triple,
                                             load_knowledge_graph, load_triples)
from ernie3_jax.data.vocabulary import Vocabulary
from ernie3_jax.runtime.tf_runtime import tf


@pytest.fixture(scope="module", name="vocab")
def fixture_vocab():
  return Vocabulary()


@pytest.fixture(scope="module", name="kg")
def fixture_kg():
  return load_knowledge_graph()


@pytest.fixture(scope="module", name="matcher")
def fixture_matcher(kg):
  return EntityMatcher.from_knowledge_graph(kg)


@pytest.fixture(scope="module", name="embedded")
def fixture_embedded(kg, matcher):
  return triple_alignment.align_triples(read_documents(EMBEDDED_CORPUS), kg, matcher)


@pytest.fixture(scope="module", name="sample")
def fixture_sample(embedded):
  examples, _ = embedded
  return examples[::97]  # ~190 examples spread over relations


def small_world():
  kg = KnowledgeGraph(
      [Triple("Ann Ros", "born_in", "Isgar"), Triple("Ann Ros", "birth_year", "1843"),
       Triple("Ann Ros", "spouse_of", "Bo Tal"), Triple("Ann Ros", "lived_in", "Velmar"),
       Triple("Bo Tal", "born_in", "Velmar"), Triple("Cy Orn", "died_in", "Isgar")],
      {"Ann Ros": ["Ros"]}, {})
  documents = [
      Document("Ann Ros", "Ann Ros was a painter. Ros was born in Isgar.\n\n"
               "The year 1843 saw the birth of Ann Ros.", "mem:1"),
      Document("Bo Tal", "Bo Tal married Ann Ros in Isgar. Velmar is where Bo Tal was born.",
               "mem:2"),
      Document("Isgar", "Isgar is a city. Cy Orn died in Isgar.", "mem:3"),
  ]
  return documents, kg, EntityMatcher.from_knowledge_graph(kg)


def restore(ex):
  return np.where(ex["mlm_weights"] > 0, ex["mlm_targets"], ex["tokens"])


def decode(vocab, ids):
  return vocab.tokenizer.decode([int(i) for i in ids])


# --------------------------------------------------------------------------- alignment


def test_relation_text():
  assert triple_alignment.relation_text("born_in") == "born in"
  assert triple_alignment.relation_text("official_language") == "official language"


def test_align_small_world():
  documents, kg, matcher = small_world()
  examples, report = triple_alignment.align_triples(documents, kg, matcher)
  assert (report.total, report.in_head_article, report.elsewhere, report.not_aligned) == (
      6, 3, 2, 1)
  assert report.heads_without_article == 1  # Cy Orn has no article
  assert report.unaligned == [Triple("Ann Ros", "lived_in", "Velmar")]
  assert report.not_aligned_by_relation == {"lived_in": 1}
  by_triple = {e.triple: e for e in examples}
  born = by_triple[Triple("Ann Ros", "born_in", "Isgar")]
  assert born.sentence == "Ros was born in Isgar." and born.in_head_article
  assert born.sentence[slice(*born.head_span)] == "Ros"  # found through the alias
  year = by_triple[Triple("Ann Ros", "birth_year", "1843")]
  assert year.sentence[slice(*year.tail_span)] == "1843" and not year.tail_is_entity
  assert year.tail_span in year.mention_spans
  spouse = by_triple[Triple("Ann Ros", "spouse_of", "Bo Tal")]
  assert spouse.doc_title == "Bo Tal" and not spouse.in_head_article
  died = by_triple[Triple("Cy Orn", "died_in", "Isgar")]
  assert died.doc_title == "Isgar" and not died.in_head_article
  assert "AlignmentReport" not in str(report) and "6 triples" in str(report)


def test_literal_tail_is_not_found_inside_the_head():
  kg = KnowledgeGraph([Triple("Hymn to Vel", "genre", "hymn")], {}, {})
  matcher = EntityMatcher.from_knowledge_graph(kg)
  documents = [Document("Hymn to Vel", "Hymn to Vel is a fine song. Hymn to Vel is a hymn.",
                        "mem:1")]
  examples, report = triple_alignment.align_triples(documents, kg, matcher)
  assert report.in_head_article == 1
  assert examples[0].sentence == "Hymn to Vel is a hymn."
  assert examples[0].tail_span == (17, 21)


def test_embedded_alignment(embedded):
  examples, report = embedded
  print(f"\nembedded UKTP alignment: {report}")
  assert report.total == 22475 == len(load_knowledge_graph().triples)
  assert report.in_head_article + report.elsewhere + report.not_aligned == report.total
  assert len(examples) == report.in_head_article + report.elsewhere
  assert sum(report.not_aligned_by_relation.values()) == report.not_aligned
  with_article = report.total - report.heads_without_article
  assert report.in_head_article / with_article > 0.7
  # Held-out triples are stated by no sentence, so none of them may align.
  heldout = set(load_triples(EMBEDDED_HELDOUT_KG))
  assert heldout <= set(report.unaligned)
  assert not heldout & {e.triple for e in examples}


def test_aligned_sentences_mention_head_and_tail(embedded, matcher):
  examples, _ = embedded
  for e in examples[::50]:
    head = e.sentence[slice(*e.head_span)]
    tail = e.sentence[slice(*e.tail_span)]
    assert matcher.entity_of(head) == e.triple.head
    if e.tail_is_entity:
      assert matcher.entity_of(tail) == e.triple.tail
    else:
      assert tail.lower() == e.triple.tail.lower()


# ------------------------------------------------------------------------ preprocessor


def run(vocab, examples, seed, length=64, **kwargs):
  dataset = triple_alignment.examples_to_dataset(examples)
  out = uktp.uktp(dataset, seed=seed, vocab=vocab, sequence_length=length, **kwargs)
  return out, list(out.as_numpy_iterator())


def test_output_features(vocab, sample):
  out, examples = run(vocab, sample[:20], seed=0, task_id=5)
  assert {k: (v.shape.as_list(), v.dtype) for k, v in out.element_spec.items()} == {
      "tokens": ([64], tf.int32), "segment_ids": ([64], tf.int32),
      "mlm_targets": ([64], tf.int32), "mlm_weights": ([64], tf.float32),
      "label": ([], tf.int32), "label_weight": ([], tf.float32), "task_id": ([], tf.int32)}
  assert len(examples) == 20
  assert all(ex["task_id"] == 5 and ex["label"] == 0 and ex["label_weight"] == 0.0
             for ex in examples)


def test_layout_and_both_entities_in_the_sentence_segment(vocab, sample, kg):
  _, outputs = run(vocab, sample, seed=1, length=96)
  aliases = kg.aliases
  for example, ex in zip(sample, outputs):
    ids, seg = restore(ex), ex["segment_ids"]
    h, r, t = (vocab.tokenizer.encode(s) for s in (
        example.triple.head, triple_alignment.relation_text(example.triple.relation), example.triple.tail))
    triple_len = 2 + len(h) + len(r) + len(t)
    np.testing.assert_array_equal(ids[:triple_len],
                                  [vocab.cls_id, *h, *r, *t, vocab.sep_id])
    assert (seg[:triple_len] == 0).all()
    sentence_ids = ids[seg == 1]
    assert sentence_ids[-1] == vocab.sep_id
    sentence = decode(vocab, sentence_ids[:-1])
    heads = [example.triple.head] + aliases.get(example.triple.head, [])
    tails = [example.triple.tail] + aliases.get(example.triple.tail, [])
    assert any(name in sentence for name in heads), (sentence, heads)
    assert any(name.lower() in sentence.lower() for name in tails), (sentence, tails)
    assert (ids[np.flatnonzero(seg == 1)[-1] + 1:] == 0).all()


def test_relation_masking_masks_exactly_the_relation(vocab, sample):
  _, outputs = run(vocab, sample[:40], seed=2, relation_mask_prob=1.0)
  for example, ex in zip(sample, outputs):
    h = vocab.tokenizer.encode(example.triple.head)
    r = vocab.tokenizer.encode(triple_alignment.relation_text(example.triple.relation))
    where = np.flatnonzero(ex["mlm_weights"] > 0)
    np.testing.assert_array_equal(where, np.arange(1 + len(h), 1 + len(h) + len(r)))
    np.testing.assert_array_equal(ex["mlm_targets"][where], r)
    assert (ex["tokens"][where] == vocab.mask_id).all()
    assert (ex["mlm_targets"][ex["mlm_weights"] == 0] == 0).all()


def test_sentence_masking_stays_in_the_sentence_and_budget(vocab, sample):
  _, outputs = run(vocab, sample[:60], seed=3, relation_mask_prob=0.0)
  head_or_tail_masked = 0
  for example, ex in zip(sample, outputs):
    seg = ex["segment_ids"]
    masked = ex["mlm_weights"] > 0
    assert masked.any() and (seg[masked] == 1).all()
    ids = restore(ex)
    sentence_pieces = int((seg == 1).sum()) - 1
    budget = km.mask_budget(sentence_pieces, 0.15)
    assert masked.sum() <= budget or masked.sum() <= 6  # or one smallest unit
    np.testing.assert_array_equal(ex["mlm_targets"][masked], ids[masked])
    masked_text = decode(vocab, ids[masked])
    head_or_tail_masked += example.sentence[slice(*example.head_span)] in masked_text or (
        example.sentence[slice(*example.tail_span)] in masked_text)
  # The triple's own mentions are masked first whenever they fit.
  assert head_or_tail_masked > 0.6 * len(outputs)


def test_tail_masking_hides_the_tail_in_the_triple_and_in_the_sentence(vocab, sample):
  """With the tail masked, its mention in the sentence is masked too: nothing is left to
  copy the answer from."""
  examples = sample[:40]
  stats = km.PreprocessStats()
  _, outputs = run(vocab, examples, seed=6, length=96, relation_mask_prob=0.0,
                   tail_mask_prob=1.0, stats=stats)
  assert stats["tail_masked"] == len(examples) == len(outputs)
  for example, ex in zip(examples, outputs):
    h, r, t = (vocab.tokenizer.encode(x) for x in (
        example.triple.head, triple_alignment.relation_text(example.triple.relation),
        example.triple.tail))
    triple_len = 2 + len(h) + len(r) + len(t)
    masked = ex["mlm_weights"] > 0
    seg = ex["segment_ids"]
    # The triple's tail exactly.
    np.testing.assert_array_equal(np.flatnonzero(masked[:triple_len]),
                                  np.arange(1 + len(h) + len(r), triple_len - 1))
    np.testing.assert_array_equal(ex["mlm_targets"][1 + len(h) + len(r):triple_len - 1], t)
    # The sentence's tail mention: masked, and gone from what the model sees.
    in_sentence = masked & (seg == 1)
    assert in_sentence.any(), example.sentence
    tail_text = example.sentence[slice(*example.tail_span)]
    assert tail_text.lower() in decode(vocab, restore(ex)[in_sentence]).lower()
    visible = decode(vocab, ex["tokens"][(seg == 1) & ~masked])
    assert tail_text.lower() not in visible.lower() or tail_text.lower() in (
        example.sentence[:example.tail_span[0]] + " " +
        example.sentence[example.tail_span[1]:]).lower(), (tail_text, visible)
    assert (ex["tokens"][masked] == vocab.mask_id).all()


def test_mixed_masking_and_determinism(vocab, sample):
  _, a = run(vocab, sample[:50], seed=4)
  _, b = run(vocab, sample[:50], seed=4)
  _, c = run(vocab, sample[:50], seed=5)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert any((x["mlm_weights"] != z["mlm_weights"]).any() for x, z in zip(a, c))
  relation_masked = sum(bool((x["mlm_weights"][x["segment_ids"] == 0] > 0).any()) for x in a)
  assert 10 < relation_masked < 40


def test_long_sentences_are_truncated_and_counted(vocab, sample):
  long = sample[0]._replace(sentence=sample[0].sentence + " and so on" * 40)
  stats = km.PreprocessStats()
  _, outputs = run(vocab, [long, sample[0]], seed=0, length=40, stats=stats)
  assert stats["truncated_sentences"] == 1 and stats["examples"] == 2
  ex = outputs[0]
  assert ex["tokens"][-1] == vocab.sep_id and ex["segment_ids"][-1] == 1


def test_triple_too_long_for_sequence_length(vocab):
  builder = uktp.UktpBuilder(vocab, 10)
  with pytest.raises(ValueError, match="sequence_length=10"):
    builder.example("Cael Helelteth", "official_language", "Port Lysdrow", "A sentence.",
                    np.random.default_rng(0))
  with pytest.raises(ValueError, match="sequence_length"):
    uktp.UktpBuilder(vocab, 5)
  dataset = tf.data.Dataset.from_tensor_slices({
      "head": ["Cael Helelteth"], "relation": ["official_language"], "tail": ["Port Lysdrow"],
      "sentence": ["Cael Helelteth lived in Port Lysdrow."]})
  out = uktp.uktp(dataset, seed=0, vocab=vocab, sequence_length=10)
  with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="sequence_length"):
    list(out.as_numpy_iterator())


def test_spans_are_optional(vocab):
  dataset = tf.data.Dataset.from_tensor_slices({
      "head": ["Cael Helelteth"], "relation": ["lived_in"], "tail": ["Port Lysdrow"],
      "sentence": ["Cael Helelteth settled in Port Lysdrow near the docks."]})
  (ex,) = list(uktp.uktp(dataset, seed=0, vocab=vocab, sequence_length=40,
                         relation_mask_prob=0.0).as_numpy_iterator())
  masked_text = decode(vocab, restore(ex)[ex["mlm_weights"] > 0])
  assert "Cael Helelteth" in masked_text or "Port Lysdrow" in masked_text


def test_aligned_dataset_helper(vocab):
  documents, kg, matcher = small_world()
  dataset = triple_alignment.aligned_dataset(documents, kg, matcher)
  rows = list(dataset.as_numpy_iterator())
  assert len(rows) == 5
  assert rows[0]["mention_spans"].shape[1] == 2
  out = list(uktp.uktp(dataset, seed=0, vocab=vocab, sequence_length=48).as_numpy_iterator())
  assert len(out) == 5
