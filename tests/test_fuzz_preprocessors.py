"""Fuzzing the pre-training preprocessors with odd text and odd knowledge graphs.

Knowledge graphs are built from a small pool of name parts, so names nest ("Ka" in
"Ka Lo"), overlap ("Ka Lo" and "Lo Mi"), are one character long ("X", "東", "."), carry
punctuation, special-piece spellings and invisible characters. Properties: nothing
crashes, every id is inside the vocabulary, every label inside its range, and masking
stays within its budget.

`ERNIE3_FUZZ_PROFILE=ci` runs many more examples (the default keeps the suite fast).
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ernie3_jax.data import knowledge_masking as km
from ernie3_jax.data import sentence_distance as sd
from ernie3_jax.data import sentence_reordering as sr
from ernie3_jax.data import triple_alignment, uktp
from ernie3_jax.data.corpus_readers import Document
from ernie3_jax.data.document_streams import DocumentStreams
from ernie3_jax.data.entity_matcher import EntityMatcher
from ernie3_jax.data.knowledge_graph import (KnowledgeGraph, KnowledgeGraphError, Triple,
                                             load_knowledge_graph)

settings.register_profile("fuzz", max_examples=20, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
FUZZ = settings.get_profile(os.environ.get("ERNIE3_FUZZ_PROFILE", "fuzz"))

_PARTS = ["Ka", "Lo", "Mi", "Ka-Lo", "X", "東", "京", ".", "O'Neil", "[SEP]", "[MASK]", "é",
          "e\u0301", "\U0001f600", "\u200b", "\u200d", "ﬁ", "(Ka)", "#", "1711"]
_NAMES = st.lists(st.sampled_from(_PARTS), min_size=1, max_size=3).map(" ".join).map(
    str.strip).filter(bool)
_RELATIONS = st.sampled_from(["born_in", "part_of", "x", "__", "named_after_", "東_of",
                              "birth_year", "occupation"])
_FILLER = ["the", "and", "lived", "in", "near", ",", ".", "!", "?", "\n\n", "\n", "\t",
           "\u3002", "\u2026", "[CLS]", "  ", "y" * 30]


@st.composite
def knowledge_graphs(draw):
  """(KnowledgeGraph, its names) with nested, overlapping and one-character names."""
  names = draw(st.lists(_NAMES, min_size=1, max_size=8, unique=True))
  triples = draw(st.lists(st.tuples(st.sampled_from(names), _RELATIONS,
                                    st.sampled_from(names) | st.sampled_from(["1711", "poet"])),
                          min_size=1, max_size=12))
  aliases = draw(st.dictionaries(st.sampled_from(names), st.lists(_NAMES, min_size=1,
                                                                  max_size=2), max_size=3))
  kg = KnowledgeGraph([Triple(*t) for t in triples], aliases, {})
  return kg, names


@st.composite
def texts_about(draw, names):
  """Text mixing the names with filler, punctuation and arbitrary unicode."""
  words = draw(st.lists(st.sampled_from(names) | st.sampled_from(_FILLER) |
                        st.text(max_size=6), max_size=60))
  return draw(st.sampled_from([" ", "", "\n"])).join(words)


def _is_word_char(c):
  return c.isalnum()


def _check_mentions(matcher, text):
  mentions = matcher.find(text)
  ends = 0
  for m in mentions:
    assert m.start >= ends, "mentions overlap or are unsorted"
    ends = m.end
    assert text[m.start:m.end] == m.surface and matcher.entity_of(m.surface) == m.entity
    assert m.start == 0 or not _is_word_char(text[m.start - 1])
    assert m.end == len(text) or not _is_word_char(text[m.end])
  # Leftmost-longest: every whole-word occurrence of a name that was not taken overlaps
  # a mention that was.
  for name in matcher.names_to_entity:
    start = text.find(name)
    while start >= 0:
      end = start + len(name)
      whole = ((start == 0 or not _is_word_char(text[start - 1])) and
               (end == len(text) or not _is_word_char(text[end])))
      if whole:
        assert any(m.start < end and start < m.end for m in mentions), (name, start)
      start = text.find(name, start + 1)
  return mentions


@pytest.fixture(scope="module", name="vocab")
def fixture_vocab():
  from ernie3_jax.data.vocabulary import Vocabulary
  return Vocabulary()


def _in_vocab(vocab, ids):
  ids = np.asarray(ids)
  return bool(((ids >= 0) & (ids < vocab.vocab_size)).all())


# ------------------------------------------------------------------------ entity matching


@FUZZ
@given(st.data())
def test_matcher_finds_whole_word_leftmost_longest_mentions(data):
  kg, names = data.draw(knowledge_graphs())
  matcher = EntityMatcher.from_knowledge_graph(kg)
  for _ in range(3):
    _check_mentions(matcher, data.draw(texts_about(names)))


@FUZZ
@given(st.data())
def test_knowledge_graph_files_with_odd_names_round_trip(tmp_path_factory, data):
  kg, _ = data.draw(knowledge_graphs())
  path = tmp_path_factory.mktemp("kg") / "kg.tsv"
  path.write_text("".join(f"{h}\t{r}\t{t}\n" for h, r, t in kg.triples), encoding="utf-8")
  # A head written as "#..." starts a comment line: skipped and counted, never misread.
  kept = [t for t in kg.triples if not t.head.startswith("#")]
  if not kept:
    with pytest.raises(KnowledgeGraphError, match=r"kg.tsv: the knowledge graph is empty"):
      load_knowledge_graph(str(path), None)
    return
  loaded = load_knowledge_graph(str(path), None)
  assert loaded.triples == kept
  assert loaded.skipped_lines[str(path)] == len(kg.triples) - len(kept)


# ------------------------------------------------------------------------ knowledge masking


def _check_masked_rows(vocab, matcher, text, tokens, targets, weights):
  """Layout, vocabulary, budget and whole-entity masking of KnowledgeMasker rows."""
  length = tokens.shape[1]
  assert tokens.shape == targets.shape == weights.shape
  assert _in_vocab(vocab, tokens) and _in_vocab(vocab, targets)
  seg = km.segment(text, vocab, matcher=matcher)
  offset = 0
  for row in range(len(tokens)):
    original = np.where(weights[row] > 0, targets[row], tokens[row])
    sep = int(np.flatnonzero(original == vocab.sep_id)[-1])
    inner = original[1:sep]
    assert tokens[row, 0] == vocab.cls_id and not original[sep + 1:].any() and sep < length
    assert not np.isin(targets[row][weights[row] > 0], vocab.special_ids).any()
    # The units overlapping this passage, clipped to it (a long unit may span passages).
    lo = max(int(np.searchsorted(seg.units[:, 0], offset, "right")) - 1, 0)
    hi = int(np.searchsorted(seg.units[:, 0], offset + len(inner), "left"))
    units = [(max(s, offset) - offset, min(e, offset + len(inner)) - offset, level)
             for s, e, level in seg.units[lo:hi].tolist()]
    maskable = int((~np.isin(inner, vocab.special_ids)).sum())
    masked = int(weights[row].sum())
    if masked > km.mask_budget(maskable, 0.15):
      # The one exception: every unit is larger than the budget, one smallest is masked.
      sizes = [int((~np.isin(inner[s:e], vocab.special_ids)).sum()) for s, e, _ in units]
      assert masked == min(z for z in sizes if z > 0)
      assert all(z > km.mask_budget(maskable, 0.15) for z in sizes if z > 0)
    # Entity units are masked whole or not at all.
    for s, e, level in units:
      if level == km.ENTITY:
        flags = weights[row, 1 + s:1 + e]
        maskable_flags = ~np.isin(inner[s:e], vocab.special_ids)
        assert flags[maskable_flags].all() or not flags.any()
    offset += len(inner)
  assert offset == len(seg.ids)  # the passages hold every piece


@FUZZ
@given(st.data(), st.integers(3, 48), st.integers(0, 2**32 - 1))
def test_knowledge_masking_with_odd_entities_stays_in_budget(vocab, data, length, seed):
  kg, names = data.draw(knowledge_graphs())
  matcher = EntityMatcher.from_knowledge_graph(kg)
  text = data.draw(texts_about(names))
  masker = km.KnowledgeMasker(vocab, matcher, length)
  tokens, targets, weights = masker.document_arrays(text, np.random.default_rng(seed))
  assert tokens.shape[1:] == (length,)
  _check_masked_rows(vocab, matcher, text, tokens, targets, weights)


# ------------------------------------------------------------------------ UKTP


@FUZZ
@given(st.data(), st.integers(8, 40), st.integers(0, 2**32 - 1))
def test_uktp_with_odd_knowledge_graphs_never_leaves_the_vocabulary(vocab, data, length, seed):
  kg, names = data.draw(knowledge_graphs())
  matcher = EntityMatcher.from_knowledge_graph(kg)
  docs = [Document(data.draw(st.sampled_from(names + [""])), data.draw(texts_about(names)),
                   f"doc{i}") for i in range(data.draw(st.integers(0, 4)))]
  examples, report = triple_alignment.align_triples(docs, kg, matcher)
  assert report.total == len(kg.triples) == (report.in_head_article + report.elsewhere +
                                             report.not_aligned)
  assert len(examples) == report.in_head_article + report.elsewhere
  builder = uktp.UktpBuilder(vocab, length)
  rng = np.random.default_rng(seed)
  for ex in examples:
    h, r, t = (builder._encode(s) for s in (ex.triple.head, triple_alignment.relation_text(
        ex.triple.relation), ex.triple.tail))
    triple_len = 2 + len(h) + len(r) + len(t)
    if triple_len + 2 > length:
      with pytest.raises(ValueError, match="too small for the triple"):
        builder.example(*ex.triple, ex.sentence, rng, ex.head_span, ex.tail_span,
                        ex.mention_spans)
      continue
    out = builder.example(*ex.triple, ex.sentence, rng, ex.head_span, ex.tail_span,
                          ex.mention_spans)
    tokens, segments = out["tokens"], out["segment_ids"]
    targets, weights = out["mlm_targets"], out["mlm_weights"]
    assert _in_vocab(vocab, tokens) and _in_vocab(vocab, targets)
    assert tokens[0] == vocab.cls_id and tokens[triple_len - 1] == vocab.sep_id
    assert set(np.unique(segments).tolist()) <= {0, 1}
    end = int(np.flatnonzero(tokens == vocab.sep_id)[-1])
    assert (segments[triple_len:end + 1] == 1).all() and not segments[:triple_len].any()
    masked = np.flatnonzero(weights > 0)
    assert len(masked) > 0
    relation = np.arange(1 + len(h), 1 + len(h) + len(r))
    if not np.array_equal(masked, relation):
      # Sentence masking: inside the sentence, within its budget, or else exactly one
      # unit (the exception when every unit is larger than the budget).
      assert masked.min() >= triple_len and masked.max() < end
      original = np.where(weights > 0, targets, tokens)
      maskable = int((~np.isin(original[triple_len:end], vocab.special_ids)).sum())
      if len(masked) > km.mask_budget(maskable, 0.15):
        between = original[masked.min():masked.max() + 1]
        inside = weights[masked.min():masked.max() + 1] > 0
        assert (inside | np.isin(between, vocab.special_ids)).all()


# ------------------------------------------------------------------------ sentence tasks


@FUZZ
@given(st.data(), st.integers(0, 2**32 - 1), st.integers(5, 40))
def test_sentence_tasks_on_text_about_odd_entities_keep_labels_in_range(vocab, data, seed,
                                                                        length):
  _, names = data.draw(knowledge_graphs())
  texts = data.draw(st.lists(texts_about(names), min_size=0, max_size=4))
  for ex in sd.distance_examples(texts, seed, vocab=vocab, sequence_length=length):
    assert _in_vocab(vocab, ex["tokens"]) and 0 <= ex["label"] < sd.NUM_CLASSES
  for ex in sr.reordering_examples(texts, seed, vocab=vocab, sequence_length=length,
                                   max_segments=3):
    assert _in_vocab(vocab, ex["tokens"]) and 0 <= ex["label"] < sr.num_permutation_classes(3)


@FUZZ
@given(st.lists(st.text(max_size=80) | st.sampled_from(["", " ", "\u200b", "\n\n"]),
                min_size=1, max_size=6), st.integers(1, 3), st.integers(2, 9))
def test_document_streams_over_arbitrary_text_predict_every_token_once(vocab, texts,
                                                                       batch_size, length):
  encoded = [vocab.tokenizer.encode(t) for t in texts]
  if not any(encoded):
    with pytest.raises(ValueError, match="no non-empty documents"):
      DocumentStreams(lambda: texts, batch_size, length, encode=vocab.tokenizer.encode)
    return
  streams = DocumentStreams(lambda: texts, batch_size, length, encode=vocab.tokenizer.encode)
  predicted = 0
  for batch in streams:
    assert _in_vocab(vocab, batch["tokens"]) and _in_vocab(vocab, batch["targets"])
    predicted += int(batch["loss_weights"].sum())
  # Each non-empty document: every token after the first, plus its EOS, is a target once.
  assert predicted == sum(len(ids) for ids in encoded if ids)


# ------------------------------------------------------------------------ enormous documents


def test_enormous_and_empty_documents(vocab):
  rng = np.random.default_rng(0)
  words = ["Cael", "Helelteth", "lived", "in", "Port", "Lysdrow", ".", "東京", "\n\n", "?",
           "[SEP]", "x" * 40]
  huge = " ".join(rng.choice(words, size=40_000).tolist())  # ~170,000 characters
  no_sentence_end = "word " * 20_000
  matcher = EntityMatcher({"Cael Helelteth": "Cael Helelteth", "Port Lysdrow": "Port Lysdrow",
                           "東京": "東京", "x": "x"})
  masker = km.KnowledgeMasker(vocab, matcher, 128)
  for text in (huge, no_sentence_end, "", " \n\n "):
    tokens, targets, weights = masker.document_arrays(text, np.random.default_rng(1))
    assert tokens.shape[1:] == (128,) and (len(tokens) > 0) == bool(text.strip())
    _check_masked_rows(vocab, matcher, text, tokens, targets, weights)
  texts = [huge, "", no_sentence_end]
  assert all(0 <= ex["label"] < sd.NUM_CLASSES and _in_vocab(vocab, ex["tokens"])
             for ex in sd.distance_examples(texts, 0, vocab=vocab, sequence_length=64))
  assert all(0 <= ex["label"] < sr.num_permutation_classes(3) and _in_vocab(vocab, ex["tokens"])
             for ex in sr.reordering_examples(texts, 0, vocab=vocab, sequence_length=64))


def test_uktp_names_the_tokenizer_drops_keep_the_layout(vocab):
  """Found by the fuzzer: a relation of underscores ("__") or a name of zero-width
  characters encoded to nothing and failed the whole UKTP pipeline."""
  builder = uktp.UktpBuilder(vocab, 32)
  out = builder.example("\u200b", "__", "Ka", "\u200b met Ka.", np.random.default_rng(0))
  tokens = out["tokens"]
  assert tokens[0] == vocab.cls_id and tokens[1] == vocab.tokenizer.unk_id()
  assert _in_vocab(vocab, tokens) and out["mlm_weights"].sum() > 0
  with pytest.raises(ValueError, match="empty head"):
    builder.example("", "born_in", "Ka", "Ka.", np.random.default_rng(0))
