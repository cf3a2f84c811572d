"""Knowledge probe: candidate sets, chance, scoring layouts, and above-chance detection."""

import flax.linen as nn
import numpy as np
import pytest

from ernie3_jax.runtime import tf_runtime  # noqa: F401
from ernie3_jax.data import knowledge_graph as kg_lib
from ernie3_jax.data.knowledge_graph import KnowledgeGraph, Triple
from ernie3_jax.evaluation import knowledge_probe as kp
from ernie3_jax.model import Ernie3
from tests import model_testing as mt


def _graph():
  """People born in / living in / dying in cities: several relations per pair."""
  rng = np.random.default_rng(0)
  people = [f"Person{i}" for i in range(40)]
  cities = [f"City{i}" for i in range(15)]
  triples = []
  for p in people:
    born = cities[rng.integers(len(cities))]
    triples.append(Triple(p, "born_in", born))
    if rng.random() < 0.5:
      triples.append(Triple(p, "died_in", born))  # same pair, second relation
    for c in rng.choice(len(cities), size=2, replace=False):
      triples.append(Triple(p, "lived_in", cities[c]))
    triples.append(Triple(p, "student_of", people[(people.index(p) + 1) % len(people)]))
  triples = list(dict.fromkeys(triples))
  return KnowledgeGraph(triples, {}, {}), people, cities


def test_relation_candidates_hold_the_gold_and_drop_other_true_relations():
  kg, _, _ = _graph()
  facts = kp.Facts(kg)
  items = [kp.relation_item(t, facts) for t in kg.triples]
  for it in items:
    assert it.candidates[it.gold] == it.triple.relation
    assert len(set(it.candidates)) == len(it.candidates)
    others = {r for r in facts.relations if r != it.triple.relation
              and Triple(it.triple.head, r, it.triple.tail) in set(kg.triples)}
    assert not others & set(it.candidates)
  filtered = [it for it in items if len(it.candidates) < len(facts.relations)]
  assert filtered  # the graph does have pairs with two relations
  assert kp.chance(items) == pytest.approx(np.mean([1 / len(it.candidates) for it in items]))
  assert kp.chance(items) > 1 / len(facts.relations)


def test_tail_candidates_come_from_the_relation_range_without_other_true_tails():
  kg, people, cities = _graph()
  facts = kp.Facts(kg)
  true = set(kg.triples)
  rel_items, tail_items = kp.build_items(kg.triples, facts, 6, seed=3)
  assert len(rel_items) == len(kg.triples) == len(tail_items)
  positions = set()
  for it in tail_items:
    h, r, _ = it.triple
    assert it.candidates[it.gold] == it.triple.tail and len(it.candidates) == 6
    assert set(it.candidates) <= set(facts.ranges[r])
    assert all(Triple(h, r, c) not in true for i, c in enumerate(it.candidates) if i != it.gold)
    assert h not in it.candidates
    positions.add(it.gold)
  assert len(positions) > 3  # the gold's place is shuffled, not a cue
  again = kp.build_items(kg.triples, facts, 6, seed=3)[1]
  assert [it.candidates for it in again] == [it.candidates for it in tail_items]
  assert kp.chance(tail_items) == pytest.approx(1 / 6)
  # "type": the whole range of the relation, less the other true tails.
  _, full = kp.build_items(kg.triples, facts, None, seed=0)
  lived = next(it for it in full if it.triple.relation == "lived_in")
  assert len(lived.candidates) == len(facts.ranges["lived_in"]) - 1  # the other home
  with pytest.raises(ValueError, match="at least 2"):
    kp.build_items(kg.triples, facts, 1, seed=0)


class _Memorised:
  """Knows the answers of `known` triples; scores everything else at random."""

  def __init__(self, known, seed=0):
    self.known, self.rng = set(known), np.random.default_rng(seed)

  def __call__(self, items):
    out = []
    for it in items:
      s = self.rng.normal(size=len(it.candidates))
      if it.triple in self.known:
        s[it.gold] = 10.0
      out.append(s)
    return out


def test_a_model_that_memorised_triples_scores_above_chance():
  kg, _, _ = _graph()
  rng = np.random.default_rng(1)
  known = [t for t in kg.triples if rng.random() < 0.5]
  result = kp.run_probe(kg.triples, kg, _Memorised(known), num_candidates=5, seed=0)
  share = len(known) / len(kg.triples)
  for kind in ("relation", "tail"):
    acc, chance = result[f"{kind}_accuracy"], result[f"{kind}_chance"]
    # memorised share plus chance on the rest (loosely: random picks vary)
    assert acc > chance + 0.3, (kind, acc, chance)
    assert acc == pytest.approx(share + (1 - share) * chance, abs=0.12)
  blind = kp.run_probe(kg.triples, kg, _Memorised([]), num_candidates=5, seed=0)
  assert blind["tail_accuracy"] < blind["tail_chance"] + 0.12


def test_embedded_triple_selection():
  kg = kg_lib.load_knowledge_graph()
  heldout = kp.select_triples("heldout", kg, None, 0)
  assert heldout == kg_lib.load_triples(kg_lib.EMBEDDED_HELDOUT_KG)
  stated = kp.select_triples("stated", kg, 50, 0)
  assert len(stated) == 50 and not set(stated) & set(heldout)
  assert stated == kp.select_triples("stated", kg, 50, 0)
  with pytest.raises(ValueError, match="expected heldout, stated"):
    kp.select_triples("nowhere.tsv", kg, None, 0)


class _Vocab:
  """Character-level stand-in for the SentencePiece vocabulary (ids < 96)."""
  cls_id, sep_id, mask_id = 3, 4, 5
  special_ids = (0, 1, 2, 3, 4, 5)

  class tokenizer:  # noqa: N801
    @staticmethod
    def encode(text):
      return [6 + (ord(ch) % 90) for ch in text.strip()]

    @staticmethod
    def unk_id():
      return 2


def test_masked_slot_layout_and_batching_on_a_tiny_model():
  cfg = mt.config()
  params = nn.unbox(mt.init_params(cfg)["params"])
  scorer = kp.MaskedSlotScorer(Ernie3(cfg), params, _Vocab(), max_length=16, batch_size=4)
  triple = Triple("Ab", "x_y", "Cd")
  rel = kp.ProbeItem(kp.RELATION, triple, ("x_y", "zz"), 0)
  tokens, segments, targets, weights = scorer.row(rel, "x_y")
  enc = _Vocab.tokenizer.encode
  # [CLS] A b [MASK]x3 ("x y") C d [SEP]
  assert tokens[:9].tolist() == [3] + enc("Ab") + [5] * 3 + enc("Cd") + [4]
  assert targets[3:6].tolist() == enc("x y") and weights.sum() == 3 and not segments.any()
  tail = kp.ProbeItem(kp.TAIL, triple, ("Cd", "Efg"), 0)
  tokens, _, targets, _ = scorer.row(tail, "Efg")
  assert tokens[6:9].tolist() == [5] * 3 and targets[6:9].tolist() == enc("Efg")
  items = [rel, tail, kp.ProbeItem(kp.TAIL, triple, ("Cd", "E", "Fgh"), 1)]
  scores = scorer(items)
  assert [len(s) for s in scores] == [2, 2, 3] and all(np.isfinite(s).all() for s in scores)
  # rel's candidates have 3 and 2 pieces, tail's 2 and 3, the third's 2, 1 and 3; one
  # length each is a fair comparison.
  assert scorer.mixed_lengths(items) == 3
  assert scorer.mixed_lengths([kp.ProbeItem(kp.TAIL, triple, ("Cd", "Ef"), 0)]) == 0
  alone = scorer(items[2:])  # other rows in the batch must not change a row's score
  np.testing.assert_allclose(alone[0], scores[2], rtol=1e-5, atol=1e-5)
  # The task embedding is part of the input: another task id scores differently.
  kmlm = kp.MaskedSlotScorer(Ernie3(cfg), params, _Vocab(), max_length=16, batch_size=4,
                             task_id=0)
  assert not np.allclose(kmlm(items[2:])[0], scores[2])
  with pytest.raises(ValueError, match="needs 27 pieces > max_length=16; raise max_length"):
    scorer.row(kp.ProbeItem(kp.TAIL, triple, ("x" * 20,), 0), "x" * 20)


@pytest.mark.slow
def test_probe_and_zero_shot_commands_on_a_trained_checkpoint(tmp_path, capsys):
  """The two commands end to end on a checkpoint written the way ernie3_jax.cli.main does."""
  import os
  from ernie3_jax.config import gin_utils
  from ernie3_jax.evaluation import zero_shot
  from ernie3_jax.training import train as train_lib
  gin_utils.parse_gin(["gin_configs/experiments/demo.gin"], [
      f"MODEL_DIR = '{tmp_path}'", "NLU_BATCH = 8", "NLG_BATCH = 2", "SEQUENCE_LENGTH = 64",
      "NLG_SEGMENT_LENGTH = 32", "train.num_steps = 2", "train.checkpoint_every = 0",
      "train.progress_bar = False", "ProgressiveSchedule.steps = 0",
      "make_mesh.num_devices = 1"])
  with open(os.path.join(tmp_path, "config.gin"), "w") as f:
    f.write(gin_utils.effective_config())
  train_lib.train(str(tmp_path))
  metrics = kp.main([f"--model_dir={tmp_path}", "--max_triples=6", "--tail_candidates=4",
                     f"--output={tmp_path}/probe.json"])
  assert metrics["relation_items"] == 6 and metrics["tail_chance"] == pytest.approx(0.25)
  assert "relation  accuracy" in capsys.readouterr().out
  # The command's figures are the argmax accuracy of the scorer over the same items.
  from ernie3_jax.data import data_config as dc
  scorer_nlg = zero_shot.load_scorer(str(tmp_path), 64, 64)
  cfg = dc.current()
  kg = dc.knowledge_graph(cfg.kg, cfg.aliases)
  scorer = kp.MaskedSlotScorer(scorer_nlg.model, scorer_nlg.params,
                               dc.vocabulary(cfg.vocabulary), batch_size=64)
  triples = kp.select_triples("heldout", kg, 6, 0)
  relation_items, tail_items = kp.build_items(triples, kp.Facts(kg), 4, 0)
  for kind, items in (("relation", relation_items), ("tail", tail_items)):
    want = np.mean([int(np.argmax(s)) == it.gold for it, s in zip(items, scorer(items))])
    assert metrics[f"{kind}_accuracy"] == pytest.approx(want)
    # Items whose candidates (relations as words) differ in piece count are counted.
    encode = dc.vocabulary(cfg.vocabulary).tokenizer.encode
    text = (lambda c: kp.relation_text(c)) if kind == "relation" else (lambda c: c)
    mixed = sum(len({len(encode(text(c))) for c in it.candidates}) > 1 for it in items)
    assert metrics[f"{kind}_mixed_lengths"] == mixed
  sample = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))), "shared", "superglue_sample")
  if os.path.isdir(sample):
    from ernie3_jax.evaluation import zero_shot_command
    zero_shot_command.main([f"--model_dir={tmp_path}", f"--source={sample}", "--tasks=copa"])
    assert "copa" in capsys.readouterr().out
