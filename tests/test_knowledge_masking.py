"""Tests for knowledge-masked LM: segmentation, unit masking and the tf.data preprocessor."""

import functools
import itertools

import numpy as np
import pytest
import seqio
from hypothesis import example, given, settings, strategies as st

from ernie3_jax.data import knowledge_masking as km
from ernie3_jax.data import masking_units
from ernie3_jax.data.corpus_readers import EMBEDDED_CORPUS, read_documents
from ernie3_jax.data.entity_matcher import EntityMatcher
from ernie3_jax.data.knowledge_graph import load_knowledge_graph
from ernie3_jax.data.vocabulary import Vocabulary
from ernie3_jax.runtime.tf_runtime import tf

TEXT = ("Cael Helelteth was a figure of ornate temperament whose life is recorded in "
        "surviving letters. Helelteth settled in Port Lysdrow and came to know its streets "
        "and alleys intimately.\n\nCael Helelteth passed away in Port Pelanteth.")


@pytest.fixture(scope="module", name="vocab")
def fixture_vocab():
  return Vocabulary()


@pytest.fixture(scope="module", name="matcher")
def fixture_matcher():
  return EntityMatcher.from_knowledge_graph(load_knowledge_graph())


@pytest.fixture(scope="module", name="documents")
def fixture_documents():
  return [d.text for d in itertools.islice(read_documents(EMBEDDED_CORPUS), 40)]


def expected_ids(vocab, text):
  """SentencePiece ids of `text`, with spelled special pieces ("[SEP]") as unk."""
  ids = np.asarray(vocab.tokenizer.encode(text))
  ids[np.isin(ids, vocab.special_ids)] = vocab.tokenizer.unk_id()
  return ids


def unit_text(vocab, seg, unit):
  return vocab.tokenizer.decode(seg.ids[unit[0]:unit[1]].tolist())


# ------------------------------------------------------------------------ segmentation


def test_sentence_boundaries_come_from_the_shared_splitter():
  text = "One two. Three? four!\n\nFive \"six.\" Seven"
  seg = km.segment(text, Vocabulary())
  starts = sorted(set(int(s) for s in seg.sentence_starts))
  assert len(starts) == 5  # the five sentences of sentences.sentence_spans


@pytest.mark.parametrize("text", [TEXT, "naïve café 東京 x–y ﬁ 😀ab\tZ", "", "   "])
def test_offsets_agree_with_byte_offset_protos(vocab, text):
  ids, spans = km.encode_with_offsets(vocab.tokenizer, text)
  proto_ids, proto_spans = masking_units._offsets_from_proto(vocab.tokenizer, text)
  np.testing.assert_array_equal(ids, proto_ids)
  np.testing.assert_array_equal(spans, proto_spans)
  np.testing.assert_array_equal(ids, vocab.tokenizer.encode(text))


def test_units_partition_pieces_into_entities_phrases_and_words(vocab, matcher):
  seg = km.segment(TEXT, vocab, matcher=matcher)
  units = seg.unit_list()
  assert units[0].start == 0 and units[-1].end == len(seg.ids)
  assert all(a.end == b.start for a, b in zip(units, units[1:]))
  by_level = {level: [unit_text(vocab, seg, u) for u in units if u.level == level]
              for level in (km.TOKEN, km.PHRASE, km.ENTITY)}
  assert by_level[km.ENTITY] == ["Cael Helelteth", "Helelteth", "Port Lysdrow",
                                 "Cael Helelteth", "Port Pelanteth"]
  assert "ornate temperament" in by_level[km.PHRASE]
  assert "surviving letters" in by_level[km.PHRASE]
  for phrase in by_level[km.PHRASE]:
    assert 2 <= len(phrase.split()) <= km.MAX_PHRASE_WORDS
  for word in by_level[km.TOKEN]:  # whole single words or single punctuation marks
    assert len(word.split()) == 1
  assert "record" not in by_level[km.TOKEN] and "recorded" in by_level[km.TOKEN]
  # Sentences start at piece boundaries of units, and there are three.
  assert len(seg.sentence_starts) == 3
  assert set(seg.sentence_starts.tolist()) <= {u.start for u in units}


def test_given_mention_spans_become_entity_units(vocab):
  text = "In Gorisria, Caeoese has official status."
  seg = km.segment(text, vocab, mention_spans=[(3, 11), (13, 20), (-1, -1)])
  entities = [unit_text(vocab, seg, u) for u in seg.unit_list() if u.level == km.ENTITY]
  assert entities == ["Gorisria", "Caeoese"]


def test_spelled_special_pieces_become_unk(vocab):
  seg = km.segment("Before [SEP] after [MASK] and [CLS].", vocab)
  assert not np.isin(seg.ids, [vocab.cls_id, vocab.sep_id, vocab.mask_id]).any()
  assert (seg.ids == vocab.tokenizer.unk_id()).sum() == 3


def test_long_runs_split_into_short_phrases(vocab):
  seg = km.segment("Green tall wooden houses stand quietly beside old rivers. Tall houses "
                   "of the old town, green doors", vocab)
  phrases = [unit_text(vocab, seg, u) for u in seg.unit_list() if u.level == km.PHRASE]
  assert phrases == ["Green tall wooden", "houses stand quietly", "beside old rivers",
                     "Tall houses", "old town", "green doors"]


# ---------------------------------------------------------------------------- masking


def random_units(rng, n, max_len=4):
  units, start = [], 0
  while start < n:
    end = min(n, start + int(rng.integers(1, max_len + 1)))
    units.append((start, end, int(rng.integers(3))))
    start = end
  return units


def check_masking(vocab, ids, units, inputs, targets, weights, ratio):
  ids = np.asarray(ids)
  special = np.isin(ids, vocab.special_ids)
  masked = weights > 0
  assert inputs.dtype == np.int32 and targets.dtype == np.int32 and weights.dtype == np.float32
  assert ((inputs >= 0) & (inputs < vocab.vocab_size)).all()
  np.testing.assert_array_equal(targets[masked], ids[masked])
  assert (targets[~masked] == 0).all() and set(np.unique(weights)) <= {0.0, 1.0}
  np.testing.assert_array_equal(inputs[~masked], ids[~masked])
  assert not masked[special].any()
  # Whole units only: within a unit, every maskable piece is masked or none is.
  chosen = []
  for start, end, _ in units:
    flags = masked[start:end][~special[start:end]]
    assert flags.all() or not flags.any()
    if flags.any():
      chosen.append(len(flags))
  num_maskable = int((~special).sum())
  budget = km.mask_budget(num_maskable, ratio)
  if num_maskable and units:
    assert chosen, "a sequence with maskable pieces gets at least one target"
  if masked.sum() > budget:  # the documented exception: one smallest unit
    sizes = [int((~special[s:e]).sum()) for s, e, _ in units]
    assert chosen == [min(z for z in sizes if z > 0)]
  # Changed pieces carry [MASK] or a non-special id.
  changed = masked & (inputs != ids)
  assert not np.isin(inputs[changed & (inputs != vocab.mask_id)], vocab.special_ids).any()


def test_mask_budget_is_exact():
  assert km.mask_budget(20, 0.15) == 3
  assert km.mask_budget(126, 0.15) == 19
  assert km.mask_budget(1, 0.15) == 1
  assert km.mask_budget(0, 0.15) == 0


def test_mask_units_basic_invariants(vocab):
  rng = np.random.default_rng(0)
  for _ in range(200):
    n = int(rng.integers(1, 130))
    ids = rng.integers(0, vocab.vocab_size, size=n)
    units = random_units(rng, n)
    out = km.mask_units(ids, units, rng, vocab=vocab)
    check_masking(vocab, ids, units, *out, 0.15)
    num_maskable = int((~np.isin(ids, vocab.special_ids)).sum())
    if num_maskable >= 40:  # whole units of <= 4 pieces fill the budget closely
      assert out[2].sum() >= km.mask_budget(num_maskable, 0.15) - 3


def test_mask_units_80_10_10_statistics(vocab):
  rng = np.random.default_rng(1)
  ids = rng.integers(10, vocab.vocab_size, size=100)
  units = [(i, i + 1, km.TOKEN) for i in range(100)]
  kept = replaced = masked = total = 0
  for _ in range(2000):
    inputs, targets, weights = km.mask_units(ids, units, rng, vocab=vocab)
    sel = weights > 0
    total += sel.sum()
    masked += (inputs[sel] == vocab.mask_id).sum()
    kept += (inputs[sel] == ids[sel]).sum()
    replaced += ((inputs[sel] != ids[sel]) & (inputs[sel] != vocab.mask_id)).sum()
  assert total == 2000 * 15
  assert abs(masked / total - 0.8) < 0.01
  assert abs(kept / total - 0.1) < 0.01
  assert abs(replaced / total - 0.1) < 0.01


def test_replacement_is_decided_per_unit(vocab):
  rng = np.random.default_rng(2)
  ids = rng.integers(10, vocab.vocab_size, size=40)
  units = [(i, i + 4, km.ENTITY) for i in range(0, 40, 4)]
  for _ in range(300):
    inputs, _, weights = km.mask_units(ids, units, rng, budget_ratio=0.5, vocab=vocab)
    for start, end, _ in units:
      if weights[start] > 0:
        as_mask = inputs[start:end] == vocab.mask_id
        assert as_mask.all() or not as_mask.any()


def test_level_weights_split_the_budget(vocab):
  rng = np.random.default_rng(3)
  n = 120
  ids = rng.integers(10, vocab.vocab_size, size=n)
  # Alternate 1-piece tokens, 2-piece phrases and 3-piece entities.
  units, start = [], 0
  for level in itertools.cycle([km.TOKEN, km.PHRASE, km.ENTITY]):
    if start + level + 1 > n:
      break
    units.append((start, start + level + 1, level))
    start += level + 1
  ids = ids[:start]
  used = np.zeros(3)
  for _ in range(300):
    _, _, weights = km.mask_units(ids, units, rng, level_weights=(0.5, 0.25, 0.25),
                                  vocab=vocab)
    for s, e, level in units:
      used[level] += weights[s:e].sum()
  share = used / used.sum()
  np.testing.assert_allclose(share, [0.5, 0.25, 0.25], atol=0.06)
  # Only entities requested: only entity units are masked.
  _, _, weights = km.mask_units(ids, units, rng, level_weights=(0, 0, 1), vocab=vocab)
  assert all(weights[s:e].sum() == 0 for s, e, level in units if level != km.ENTITY)
  # No entity units at all: the other levels take over.
  token_units = [(i, i + 1, km.TOKEN) for i in range(len(ids))]
  _, _, weights = km.mask_units(ids, token_units, rng, level_weights=(0, 0, 1), vocab=vocab)
  assert weights.sum() == km.mask_budget(len(ids), 0.15)


def test_at_least_one_unit_when_all_units_exceed_budget(vocab):
  ids = np.arange(10, 20)
  units = [(0, 4, km.ENTITY), (4, 10, km.PHRASE)]  # budget ceil(1.5) = 2
  inputs, targets, weights = km.mask_units(ids, units, np.random.default_rng(0), vocab=vocab)
  assert weights.sum() == 4 and weights[:4].all()


def test_special_ids_are_never_masked(vocab):
  ids = np.array([vocab.cls_id, 100, 101, vocab.sep_id, 0, 0])
  units = [(0, 4, km.TOKEN)]
  for seed in range(20):
    inputs, targets, weights = km.mask_units(ids, units, np.random.default_rng(seed),
                                             vocab=vocab)
    np.testing.assert_array_equal(weights, [0, 1, 1, 0, 0, 0])
  out = km.mask_units([vocab.cls_id, vocab.sep_id], [(0, 2, 0)], np.random.default_rng(0),
                      vocab=vocab)
  assert out[2].sum() == 0


@pytest.mark.parametrize("units", [[(0, 3, 0), (2, 4, 0)], [(0, 0, 0)], [(0, 9, 0)],
                                   [(0, 2, 3)]])
def test_invalid_units_are_rejected(vocab, units):
  with pytest.raises(ValueError, match="units"):
    km.mask_units(np.arange(10, 15), units, np.random.default_rng(0), vocab=vocab)


def test_invalid_settings_are_rejected(vocab):
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="level_weights"):
    km.mask_units([10, 11], [(0, 2, 0)], rng, level_weights=(0, 0, 0), vocab=vocab)
  with pytest.raises(ValueError, match="budget_ratio"):
    km.mask_units([10, 11], [(0, 2, 0)], rng, budget_ratio=0.0, vocab=vocab)
  with pytest.raises(ValueError, match="token ids"):
    km.mask_units([10, vocab.vocab_size], [(0, 2, 0)], rng, vocab=vocab)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 3999), min_size=0, max_size=150), st.integers(0, 2**32 - 1),
       st.floats(0.01, 1.0), st.integers(1, 6))
def test_mask_units_property(vocab, ids, seed, ratio, max_len):
  rng = np.random.default_rng(seed)
  units = random_units(rng, len(ids), max_len)
  out = km.mask_units(ids, units, rng, budget_ratio=ratio, vocab=vocab)
  check_masking(vocab, ids, units, *out, ratio)


# --------------------------------------------------------------- documents to passages


def restore(tokens, targets, weights):
  return np.where(weights > 0, targets, tokens)


def passage_ids(vocab, row):
  """The piece ids between [CLS] and [SEP] of one example row (originals restored)."""
  assert row[0] == vocab.cls_id
  sep = int(np.flatnonzero(row == vocab.sep_id)[0])
  assert (row[sep + 1:] == 0).all()
  return row[1:sep]


def test_documents_are_cut_into_passages_without_losing_pieces(vocab, matcher, documents):
  masker = km.KnowledgeMasker(vocab, matcher, 64)
  stats = km.PreprocessStats()
  for i, text in enumerate(documents[:10]):
    tokens, targets, weights = masker.document_arrays(text, np.random.default_rng(i), stats)
    restored = restore(tokens, targets, weights)
    pieces = np.concatenate([passage_ids(vocab, row) for row in restored])
    np.testing.assert_array_equal(pieces, expected_ids(vocab, text))
    seg = km.segment(text, vocab, matcher=matcher)
    starts = set(seg.sentence_starts.tolist())
    offset = 0
    for row in range(len(tokens)):
      n = len(passage_ids(vocab, restored[row]))
      assert n <= 62
      assert offset in starts or stats["mid_sentence_splits"] > 0
      budget = km.mask_budget(n, 0.15)
      assert 0 < weights[row].sum() <= budget
      # Entity mentions are masked whole or not at all.
      for s, e, level in seg.unit_list():
        if level == km.ENTITY and offset <= s and e <= offset + n:
          flags = weights[row, 1 + s - offset:1 + e - offset]
          assert flags.all() or not flags.any()
      offset += n
  assert stats["documents"] == 10 and stats["passages"] >= 30
  assert stats["mid_unit_splits"] == 0


def test_a_sentence_longer_than_a_passage_is_split_at_units(vocab, matcher):
  text = " ".join(["Cael Helelteth walked quietly"] * 30) + "."
  masker = km.KnowledgeMasker(vocab, matcher, 32)
  stats = km.PreprocessStats()
  tokens, targets, weights = masker.document_arrays(text, np.random.default_rng(0), stats)
  restored = restore(tokens, targets, weights)
  pieces = np.concatenate([passage_ids(vocab, row) for row in restored])
  np.testing.assert_array_equal(pieces, expected_ids(vocab, text))
  assert stats["mid_sentence_splits"] == len(tokens) - 1 and stats["mid_unit_splits"] == 0
  assert vocab.tokenizer.decode(passage_ids(vocab, restored[1]).tolist()).startswith(
      ("Cael", "walked", "quietly"))


@settings(max_examples=50, deadline=None)
@example("\x800", 0, 5)  # an <unk> inside the only unit: the unit is masked around it
@given(st.text(max_size=400) | st.lists(st.sampled_from(
    ["[SEP]", "[MASK]", " ", "Isgar", "Cael Helelteth", ".", "\n\n", "é", "x"])).map("".join),
       st.integers(0, 2**32 - 1), st.integers(3, 40))
def test_arbitrary_text_never_crashes(vocab, matcher, text, seed, length):
  masker = km.KnowledgeMasker(vocab, matcher, length)
  tokens, targets, weights = masker.document_arrays(text, np.random.default_rng(seed))
  assert tokens.shape == targets.shape == weights.shape == (len(tokens), length)
  restored = restore(tokens, targets, weights)
  if len(tokens):
    pieces = np.concatenate([passage_ids(vocab, row) for row in restored])
    np.testing.assert_array_equal(pieces, expected_ids(vocab, text))
  for row in range(len(tokens)):
    inner = passage_ids(vocab, restored[row])
    num_maskable = int((~np.isin(inner, vocab.special_ids)).sum())
    if weights[row].sum() > km.mask_budget(num_maskable, 0.15):
      # The one exception: no unit fits the budget, so exactly one unit (the smallest) is
      # masked, and a unit is one contiguous run of pieces. Special pieces inside it (an
      # <unk> for an unknown character) are never masked, so only they may leave a gap.
      masked = np.flatnonzero(weights[row])
      gap = np.setdiff1d(np.arange(masked[0], masked[-1] + 1), masked)
      assert np.isin(restored[row][gap], vocab.special_ids).all(), (text, masked)
    assert ((tokens[row] >= 0) & (tokens[row] < vocab.vocab_size)).all()


# -------------------------------------------------------------------------- tf.data


def run(vocab, matcher, documents, seed, length=128, **kwargs):
  dataset = tf.data.Dataset.from_tensor_slices({"text": documents, "id": list(range(len(
      documents)))})
  out = km.knowledge_masked_lm(dataset, seed=seed, vocab=vocab, matcher=matcher,
                               sequence_length=length, **kwargs)
  return out, list(out.as_numpy_iterator())


def test_preprocessor_shapes_dtypes_and_features(vocab, matcher, documents):
  out, examples = run(vocab, matcher, documents[:8], seed=1, task_id=3)
  spec = out.element_spec
  assert {k: (v.shape.as_list(), v.dtype) for k, v in spec.items()} == {
      "tokens": ([128], tf.int32), "segment_ids": ([128], tf.int32),
      "mlm_targets": ([128], tf.int32), "mlm_weights": ([128], tf.float32),
      "label": ([], tf.int32), "label_weight": ([], tf.float32), "task_id": ([], tf.int32)}
  assert len(examples) >= 8
  for ex in examples:
    assert ex["tokens"][0] == vocab.cls_id and (ex["segment_ids"] == 0).all()
    assert ex["label"] == 0 and ex["label_weight"] == 0.0 and ex["task_id"] == 3
    sel = ex["mlm_weights"] > 0
    assert sel.any() and (ex["mlm_targets"][~sel] == 0).all()
    assert not np.isin(ex["mlm_targets"][sel], vocab.special_ids).any()


def test_preprocessor_is_deterministic_in_the_seed(vocab, matcher, documents):
  _, a = run(vocab, matcher, documents[:6], seed=7)
  _, b = run(vocab, matcher, documents[:6], seed=7)
  _, c = run(vocab, matcher, documents[:6], seed=8)
  assert len(a) == len(b) == len(c)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert any((x["mlm_weights"] != z["mlm_weights"]).any() for x, z in zip(a, c))
  # The same passages come out whatever the seed; only the masking differs.
  for x, z in zip(a, c):
    np.testing.assert_array_equal(restore(x["tokens"], x["mlm_targets"], x["mlm_weights"]),
                                  restore(z["tokens"], z["mlm_targets"], z["mlm_weights"]))


def test_preprocessor_accepts_seqio_arguments(vocab, matcher):
  dataset = tf.data.Dataset.from_tensor_slices({"text": [TEXT, "", "Short."]})
  stats = km.PreprocessStats()
  out = km.knowledge_masked_lm(dataset, seed=None, vocab=vocab, matcher=matcher,
                               sequence_length={"tokens": 32}, stats=stats)
  examples = list(out.as_numpy_iterator())
  assert all(ex["tokens"].shape == (32,) for ex in examples)
  assert stats["empty_documents"] == 1 and stats["passages"] == len(examples)
  with pytest.raises(ValueError, match="text"):
    km.knowledge_masked_lm(tf.data.Dataset.from_tensor_slices({"body": ["x"]}), seed=0,
                           vocab=vocab, matcher=matcher, sequence_length=32)
  with pytest.raises(ValueError, match="sequence_length"):
    km.knowledge_masked_lm(dataset, seed=0, vocab=vocab, matcher=matcher, sequence_length=2)


def test_preprocessor_masks_about_fifteen_percent(vocab, matcher, documents):
  _, examples = run(vocab, matcher, documents, seed=0)
  masked = sum(ex["mlm_weights"].sum() for ex in examples)
  pieces = sum(int((ex["tokens"] != 0).sum()) - 2 for ex in examples)
  assert 0.13 < masked / pieces <= 0.16


def test_preprocessor_runs_inside_a_seqio_task(vocab, matcher):
  def source(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"text": [TEXT, "Isgar is a city."]})

  ints = seqio.PassThroughVocabulary(1)
  features = {"tokens": seqio.Feature(vocab, add_eos=False),
              "segment_ids": seqio.Feature(ints, add_eos=False),
              "mlm_targets": seqio.Feature(vocab, add_eos=False),
              "mlm_weights": seqio.Feature(ints, add_eos=False, dtype=tf.float32),
              "label": seqio.Feature(ints, add_eos=False, rank=0),
              "label_weight": seqio.Feature(ints, add_eos=False, rank=0, dtype=tf.float32),
              "task_id": seqio.Feature(ints, add_eos=False, rank=0)}
  name = "test_knowledge_masking_seqio_task"
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(source, splits=["train"]), output_features=features,
      preprocessors=[functools.partial(km.knowledge_masked_lm, vocab=vocab, matcher=matcher,
                                       seed=3)])
  try:
    lengths = {k: 32 for k in ("tokens", "segment_ids", "mlm_targets", "mlm_weights")}
    dataset = seqio.get_mixture_or_task(name).get_dataset(lengths, split="train",
                                                          shuffle=False)
    examples = list(dataset.as_numpy_iterator())
  finally:
    seqio.TaskRegistry.remove(name)
  assert len(examples) >= 3
  assert all(ex["tokens"].shape == (32,) and ex["mlm_weights"].sum() > 0 for ex in examples)


def test_one_default_for_the_masking_levels():
  import inspect
  from ernie3_jax.data import data_config, uktp
  want = data_config.DEFAULT_LEVEL_WEIGHTS
  assert data_config.DataConfig().level_weights == want
  for fn in (km.mask_units, km.KnowledgeMasker, km.knowledge_masked_lm, uktp.UktpBuilder,
             uktp.uktp):
    assert inspect.signature(fn).parameters["level_weights"].default == want, fn
