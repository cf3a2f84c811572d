"""The knowledge study: its corpus and splits, the knowledge rows of each arm, the probes,
the scorer against an independent log-likelihood, the report, and the whole pipeline."""

import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from ernie3_jax.config import gin_utils
from ernie3_jax.data import knowledge_study_corpus as ksc
from ernie3_jax.data import uktp
from ernie3_jax.data.vocabulary import Vocabulary
from ernie3_jax.evaluation import knowledge_probe as kp
from ernie3_jax.evaluation import study_probes, study_report
from ernie3_jax.model import Ernie3
from tests import model_testing as mt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", name="study_dir")
def fixture_study_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("study")
  ksc.write_study(str(out), ksc.StudyConfig(num_people=60, phrasings=3, seed=4))
  return out


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def test_every_group_is_only_in_its_own_formats(study_dir):
  """No T, K or N fact (or name) reaches a format it must not be in."""
  study = ksc.load_study(study_dir / "study.json")
  corpus, kg, aliases = (_read(study_dir / f) for f in ("corpus.jsonl", "kg.tsv",
                                                          "aliases.tsv"))
  groups = {g: [p for p in study["people"] if p.group == g] for g in ksc.GROUPS}
  assert [len(groups[g]) for g in ksc.GROUPS] == [21, 18, 12, 9]
  kg_names = {n for line in kg.splitlines() for n in line.split("\t")}
  alias_names = {line.split("\t")[0] for line in aliases.splitlines()}
  for p in study["people"]:
    in_text, in_kg = p.name in corpus, p.name in kg_names
    assert (in_text, in_kg) == {"A": (True, True), "T": (True, False), "K": (False, True),
                                "N": (False, False)}[p.group], p
    # Names (no facts) of everyone trained are entities to the matcher; N's are nowhere.
    assert (p.name in alias_names) == (p.group != "N")
    assert p.group != "N" or p.name not in aliases
  # The KG holds exactly the A and K people's facts.
  triples = {tuple(line.split("\t")) for line in kg.splitlines()}
  assert triples == {t for g in "AK" for p in groups[g] for t in p.triples()}


def test_biographies_state_every_fact_with_the_full_name_in_every_sentence(study_dir):
  study = ksc.load_study(study_dir / "study.json")
  facts = {p.name: p.facts for p in study["people"]}
  docs = [json.loads(l) for l in _read(study_dir / "corpus.jsonl").splitlines()]
  assert len(docs) == 3 * (21 + 18)
  # Held-out wording is for the probes only: no held-out template's longest fixed
  # fragment ("'s birth certificate was issued in") is in the corpus.
  fragments = [max(re.split(r"\{h\}|\{t\}", t), key=len)
               for _, _, ho in ksc.RELATIONS.values() for t in ho]
  corpus = " ".join(d["text"] for d in docs)
  assert all(len(f) > 8 and f not in corpus for f in fragments), fragments
  starts = set()
  for doc in docs:
    name = doc["title"]
    sentences = re.split(r"(?<=\.) ", doc["text"])
    assert len(sentences) == len(ksc.RELATIONS)
    assert all(name in s for s in sentences)
    for relation, tail in facts[name].items():
      # Some training template of the relation states it.
      assert any(t.format(h=name, t=tail) in sentences for t in ksc.RELATIONS[relation][1])
    starts.add(sentences[0].split(name)[0])
  assert len(starts) > 5  # sentence order is shuffled
  # A person's relations of one type take distinct values (relation probes have one answer).
  for f in facts.values():
    for kind in ksc.VALUES:
      values = [t for r, t in f.items() if ksc.RELATIONS[r][0] == kind]
      assert len(values) == len(set(values)) == 3


def test_the_generator_is_deterministic_and_checks_its_templates(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  for d in (a, b):
    ksc.write_study(str(d), ksc.StudyConfig(num_people=20, phrasings=2, seed=1))
  for name in ("corpus.jsonl", "kg.tsv", "aliases.tsv", "study.json"):
    assert _read(a / name) == _read(b / name)
  with pytest.raises(ValueError, match="leaves a group empty"):
    ksc.people(ksc.StudyConfig(num_people=5))
  # Relations of one tail type never share a template up to one word.
  ksc.check_templates()
  assert ksc.word_distance("{h} lives in {t}.", "{h} works in {t}.") == 1
  assert ksc.word_distance("{h} was born in {t}.", "{h} lives in {t}.") == 2
  assert ksc.word_distance("{t} is where {h} lives.", "{t} is where {h} goes to work.") == 3
  minimal_pair = dict(ksc.RELATIONS)
  kind, train, heldout = minimal_pair["works_in"]
  minimal_pair["works_in"] = (kind, train + ("{h} lives near {t}.",), heldout)
  with pytest.raises(ValueError, match=r"lives_in template '\{h\} lives in \{t\}\.' and "
                     r"works_in template '\{h\} lives near \{t\}\.' differ in one word"):
    ksc.check_templates(minimal_pair)
  # Across tail types the candidates differ, so the same wording is allowed.
  across = dict(ksc.RELATIONS)
  kind, train, heldout = across["works_for"]
  across["works_for"] = (kind, train + ("{h} lives in {t}.",), heldout)
  ksc.check_templates(across)


def _study_gin(study_dir, vocab_path):
  gin_utils.parse_gin(["gin_configs/experiments/knowledge_study.gin"], [
      "MODEL_DIR = '/unused'", f"DataConfig.corpus = '{study_dir / 'corpus.jsonl'}'",
      f"DataConfig.kg = '{study_dir / 'kg.tsv'}'",
      f"DataConfig.aliases = '{study_dir / 'aliases.tsv'}'",
      f"DataConfig.vocabulary = '{vocab_path}'"])


def test_the_arms_pair_the_same_triples_with_nothing_their_sentence_or_another(study_dir):
  from ernie3_jax.data import data_config as dc
  from ernie3_jax.data.vocabulary import EMBEDDED_VOCAB
  from ernie3_jax.tasks import knowledge_study
  _study_gin(study_dir, EMBEDDED_VOCAB)
  cfg = dc.current()
  rows = {p: knowledge_study.knowledge_rows(cfg, "train", p)
          for p in ("triples", "uktp", "misaligned")}
  key = lambda r: (r["head"], r["relation"], r["tail"])
  assert [key(r) for r in rows["triples"]] == [key(r) for r in rows["uktp"]] == [
      key(r) for r in rows["misaligned"]]
  study = ksc.load_study(study_dir / "study.json")
  group = {p.name: p.group for p in study["people"]}
  assert all(r["sentence"] == "" for r in rows["triples"])
  for r in rows["uktp"]:
    if group[r["head"]] == "A":  # stated in text: paired with a sentence stating it
      assert r["head"] in r["sentence"] and r["tail"] in r["sentence"]
    else:  # K: no sentence anywhere
      assert r["sentence"] == ""
  aligned = sorted(r["sentence"] for r in rows["uktp"] if r["sentence"])
  assert sorted(r["sentence"] for r in rows["misaligned"] if r["sentence"]) == aligned
  for r in rows["misaligned"]:
    assert r["head"] not in r["sentence"]  # another person's sentence (or none, for K)


def test_drop_sentences_blanks_a_share_of_rows_afresh_each_epoch():
  import tensorflow as tf
  from ernie3_jax.tasks import knowledge_study
  rows = tf.data.Dataset.from_tensor_slices({"sentence": [f"s{i}" for i in range(200)],
                                              "head": ["h"] * 200})
  take = lambda ds: [x["sentence"].decode() for x in ds.as_numpy_iterator()]
  two_epochs = take(knowledge_study.drop_sentences(rows.repeat(2), seed=3, share=0.5))
  first, second = two_epochs[:200], two_epochs[200:]
  blank = lambda xs: {i for i, x in enumerate(xs) if x == ""}
  assert all(x in ("", f"s{i}") for i, x in enumerate(first))
  assert 70 <= len(blank(first)) <= 130 and 70 <= len(blank(second)) <= 130
  assert blank(first) != blank(second)  # each epoch draws again
  assert two_epochs == take(knowledge_study.drop_sentences(rows.repeat(2), seed=3, share=0.5))
  assert take(knowledge_study.drop_sentences(rows, seed=4, share=0.5)) != first
  assert take(knowledge_study.drop_sentences(rows, seed=3, share=0.0)) == [
      f"s{i}" for i in range(200)]
  assert set(take(knowledge_study.drop_sentences(rows, seed=3, share=1.0))) == {""}
  with pytest.raises(ValueError, match="share=1.5"):
    knowledge_study.drop_sentences(rows, seed=3, share=1.5)


def test_the_uktp_plus_bare_arm_trains_aligned_triples_alone_and_beside_their_sentence(
    study_dir):
  import seqio
  from ernie3_jax.data.vocabulary import EMBEDDED_VOCAB
  from ernie3_jax.tasks import knowledge_study
  _study_gin(study_dir, EMBEDDED_VOCAB)
  mixture = seqio.get_mixture_or_task(knowledge_study.ARMS["uktp_bare"])
  assert {t.name for t in mixture.tasks} == {knowledge_study.TEXT_TASK,
                                             knowledge_study.KNOWLEDGE_TASKS["uktp_bare"]}

  def with_sentence(task, epochs):
    ds = seqio.get_mixture_or_task(task).get_dataset(
        {"tokens": 48}, split="train", shuffle=False, num_epochs=epochs, use_cached=False)
    return np.array([bool(x["segment_ids"].any()) for x in ds.as_numpy_iterator()])

  uktp_rows = with_sentence(knowledge_study.KNOWLEDGE_TASKS["uktp"], 1)
  bare_rows = with_sentence(knowledge_study.KNOWLEDGE_TASKS["uktp_bare"], 2).reshape(2, -1)
  aligned = np.flatnonzero(uktp_rows)
  assert len(aligned) > 50 and not uktp_rows.all()  # A's triples aligned, K's alone
  assert not bare_rows[:, ~uktp_rows].any()  # a row without a sentence never gains one
  share = 1 - bare_rows[:, aligned].mean()
  assert 0.35 < share < 0.65, share  # about BARE_ROW_SHARE of the aligned rows go bare
  assert (bare_rows[0, aligned] != bare_rows[1, aligned]).any()


def test_knowledge_rows_mask_the_relation_or_the_tail_everywhere():
  vocab = Vocabulary()
  builder = uktp.UktpBuilder(vocab, 48, relation_mask_prob=0.5, tail_mask_prob=1.0)
  enc = lambda s: list(builder._encode(s))  # pylint: disable=protected-access
  h, r, t = "Ann Ros", "born_in", "Isgar"
  seen = set()
  for seed in range(12):
    for sentence in ("", "Ann Ros was born in Isgar ."):
      ex = builder.example(h, r, t, sentence, np.random.default_rng(seed))
      tokens, targets = ex["tokens"], ex["mlm_targets"]
      triple = [vocab.cls_id] + enc(h) + enc("born in") + enc(t) + [vocab.sep_id]
      masked = np.flatnonzero(ex["mlm_weights"])
      target_ids = targets[masked].tolist()
      if target_ids == enc("born in"):
        kind = "relation"
      else:
        # The tail, in the triple and (with a sentence) in the sentence as well.
        assert target_ids == enc(t) * (1 if not sentence else 2), target_ids
        kind = "tail"
      assert (tokens[masked] == vocab.mask_id).all()
      restored = np.where(ex["mlm_weights"] > 0, targets, tokens)
      assert restored[:len(triple)].tolist() == triple
      assert bool(ex["segment_ids"].any()) == bool(sentence)
      seen.add((kind, bool(sentence)))
  assert seen == {(k, s) for k in ("relation", "tail") for s in (False, True)}


def test_probe_items_are_typed_cover_every_fact_and_never_show_their_answer(study_dir):
  study = ksc.load_study(study_dir / "study.json")
  items = study_probes.build_items(study)
  # Without the arms' training rows, every probe but the two that read them.
  assert len(items) == 60 * len(ksc.RELATIONS) * (len(study_probes.PROBES) - 2)
  assert study_probes.answer_leaks(items) == []
  cells = study_probes.cells(items)
  assert len(cells[("K", "text_heldout")]) == 12 * len(ksc.RELATIONS)
  for it in items:
    kind = ksc.RELATIONS[it.relation][0]
    if it.item.kind == kp.TAIL:
      assert it.item.candidates == tuple(ksc.VALUES[kind])
    else:
      assert len(it.item.candidates) == 3
  chance_tail = np.mean([1 / len(ksc.VALUES[ksc.RELATIONS[r][0]]) for r in ksc.RELATIONS])
  assert study_probes.chance([items[i] for i in cells[("T", "triple_tail")]]) == \
      pytest.approx(chance_tail)
  # UKTP's layout: the triple's tail and a training sentence's both masked.
  for i in cells[("A", "paired_tail")]:
    it = items[i]
    assert it.item.prompt == (it.person, ksc.relation_words(it.relation), "{}")
    filled = it.item.context.replace("{}", "{t}").replace(it.person, "{h}")
    assert filled in ksc.RELATIONS[it.relation][1]
  # A planted leak is found.
  leaky = study_probes.StudyItem("T", "in_context_relation", "x", "born_in", kp.SlotItem(
      kp.RELATION, ("x", "{}", "y"), ("born in", "lives in"), 0, context="x was born in y."))
  assert study_probes.answer_leaks([leaky]) == [leaky]


def test_row_probes_ask_a_s_triples_beside_the_sentences_the_arms_train_them_with(
    study_dir):
  """aligned_tail is UKTP's training row with the tail masked in both places; donor_tail
  the wrong-sentence control's row, its donor sentence as trained; the other probes'
  items are the same with the rows as without."""
  from ernie3_jax.data import data_config as dc
  from ernie3_jax.data.vocabulary import EMBEDDED_VOCAB
  from ernie3_jax.tasks import knowledge_study
  _study_gin(study_dir, EMBEDDED_VOCAB)
  knowledge = {p: knowledge_study.knowledge_rows(dc.current(), "train", p)
               for p in ("uktp", "misaligned")}
  study = ksc.load_study(study_dir / "study.json")
  items = study_probes.build_items(study, rows=study_probes.training_rows(knowledge))
  assert [it for it in items if it.probe not in ("aligned_tail", "donor_tail")] == \
      study_probes.build_items(study)
  assert study_probes.answer_leaks(items) == []
  cells = study_probes.cells(items)
  facts_a = [(p.name, r, t) for p in study["people"] if p.group == "A"
             for r, t in p.facts.items()]
  assert len(cells[("A", "aligned_tail")]) == len(facts_a)
  assert all(not cells[(g, p)] for g in "TKN" for p in ("aligned_tail", "donor_tail"))
  by_fact = {p: {(r["head"], r["relation"]): r for r in rows}
             for p, rows in knowledge.items()}
  for i in cells[("A", "aligned_tail")]:
    it = items[i]
    row = by_fact["uktp"][(it.person, it.relation)]
    assert it.item.prompt == (it.person, ksc.relation_words(it.relation), "{}")
    assert it.item.context.replace("{}", row["tail"]) == row["sentence"]
    assert it.item.context.count("{}") == 1
  donors = [items[i] for i in cells[("A", "donor_tail")]]
  left_out = [f for f in facts_a if f[2].lower()
              in by_fact["misaligned"][f[:2]]["sentence"].lower()]
  assert len(donors) == len(facts_a) - len(left_out) and len(donors) > 0.8 * len(facts_a)
  for it in donors:
    row = by_fact["misaligned"][(it.person, it.relation)]
    assert it.item.context == row["sentence"] and it.person not in row["sentence"]
  # A row whose tail span does not hold the tail is refused, naming the fact.
  head, relation, tail = facts_a[0]
  sentence, _ = study_probes.training_rows(knowledge)["uktp"][(head, relation)]
  broken = {"uktp": {(head, relation): (sentence, (0, 3))}, "misaligned": {}}
  with pytest.raises(ValueError, match=f"aligned row of \\({head}, {relation}\\)"):
    study_probes.build_items(study, rows=broken)


def test_probes_added_later_leave_the_recorded_probes_items_as_they_were(study_dir):
  """Result lines store per-item correctness, so the items of the probes they hold must
  never change within a design: the hash of the first five probes' items (those before
  paired_tail came) per `design_id()`. A new design starts its results over, and its
  hash is recorded here when it is made (5c71f29b47d8: the 8,000-step runs' design)."""
  import hashlib
  recorded = {"5c71f29b47d8": "652f9faa0a890ab1", "012a28ecedf3": "e0fd812d5daa2f07"}
  items = study_probes.build_items(ksc.load_study(study_dir / "study.json"))
  old = [it for it in items if it.probe != "paired_tail"]
  assert hashlib.sha256(repr(old).encode()).hexdigest()[:16] == recorded[ksc.design_id()]


def test_the_study_vocabulary_gives_every_probe_one_candidate_length(study_dir, tmp_path,
                                                                     monkeypatch):
  """The masked-slot scorer compares candidates fairly only at one piece count (each
  gets as many [MASK]s as its pieces): the study's vocabulary holds every tail and
  relation word whole, and a plain vocabulary's mixed lengths are caught."""
  import sentencepiece as spm
  from ernie3_jax.tools import train_vocab
  items = study_probes.build_items(ksc.load_study(study_dir / "study.json"))
  corpus = str(study_dir / "corpus.jsonl")
  fair = spm.SentencePieceProcessor(model_file=train_vocab.train(
      corpus, 256, str(tmp_path / "fair"), symbols=ksc.vocabulary_symbols()))
  assert study_probes.length_mismatches(items, fair.encode) == []
  assert [len(fair.encode(v)) for v in ksc.VALUES["organisation"]] == [2] * 15
  plain = spm.SentencePieceProcessor(model_file=train_vocab.train(
      corpus, 256, str(tmp_path / "plain")))
  bad = study_probes.length_mismatches(items, plain.encode)
  assert bad and {it.relation for it in bad} >= {"studied_at", "works_for", "volunteers_at"}
  # The generator refuses a type whose values (or relations) differ in word count.
  monkeypatch.setitem(ksc.VALUES, "field", ksc.VALUES["field"] + ("fine art",))
  with pytest.raises(ValueError, match="field values differ in word count"):
    ksc.check_templates()


def _reference_score(model, params, tokens, segments, task_id, slot_positions, slot_ids):
  """Mean log-probability of `slot_ids` at `slot_positions`, straight from the model."""
  out = model.apply({"params": params}, np.asarray([tokens], np.int32),
                    np.asarray([segments], np.int32), np.asarray([task_id], np.int32),
                    method=Ernie3.nlu_pretrain)
  logits = np.asarray(out["mlm_logits"][0], np.float64)[:, :model.config.vocab_size]
  logp = jax.nn.log_softmax(logits)
  return float(np.mean([logp[p, i] for p, i in zip(slot_positions, slot_ids)]))


def test_masked_slot_scores_equal_an_independent_log_likelihood():
  vocab = Vocabulary()
  cfg = mt.config(vocab_size=4000)
  params = nn.unbox(mt.init_params(cfg)["params"])
  model = Ernie3(cfg)
  scorer = kp.MaskedSlotScorer(model, params, vocab, max_length=40, batch_size=3, task_id=4)
  enc = lambda s: list(vocab.tokenizer.encode(s))
  m = vocab.mask_id
  triple = kp.SlotItem(kp.TAIL, ("Ann Ros", "born in", "{}"), ("Isgar", "Velmar Holt"), 1)
  text = kp.SlotItem(kp.TAIL, ("Ann Ros was born in {}.",), ("Isgar", "Velmar Holt"), 0)
  context = kp.SlotItem(kp.RELATION, ("Ann Ros", "{}", "Isgar"), ("born in", "died in"), 0,
                        context="Ann Ros first drew breath in Isgar.")
  paired = kp.SlotItem(kp.TAIL, ("Ann Ros", "born in", "{}"), ("Isgar", "Velmar Holt"), 1,
                       context="{} is where Ann Ros was born.")
  scores = scorer([triple, text, context, paired])
  for item, got in zip([triple, text, context, paired], scores):
    for candidate, score in zip(item.candidates, got):
      slot = enc(candidate)
      positions, targets = [], []
      if len(item.prompt) == 3:
        parts = [[m] * len(slot) if p == "{}" else enc(p) for p in item.prompt]
        first = [vocab.cls_id] + sum(parts, []) + [vocab.sep_id]
        start = 1 + sum(len(p) for p in parts[:item.prompt.index("{}")])
      else:  # "Ann Ros was born in" + candidate + "." encoded whole
        before = enc(item.prompt[0].split("{}")[0])
        whole = enc(item.prompt[0].replace("{}", candidate))
        assert whole[:len(before)] == before and whole[len(before):len(before) + len(slot)] \
            == slot
        first = ([vocab.cls_id] + before + [m] * len(slot) + whole[len(before) + len(slot):]
                 + [vocab.sep_id])
        start = 1 + len(before)
      positions += range(start, start + len(slot))
      targets += slot
      second = enc(item.context) + [vocab.sep_id] if item.context else []
      if "{}" in item.context:  # the candidate opens the sentence: masked there too
        whole = enc(item.context.replace("{}", candidate))
        assert whole[:len(slot)] == slot
        second = [m] * len(slot) + whole[len(slot):] + [vocab.sep_id]
        positions += range(len(first), len(first) + len(slot))
        targets += slot
      tokens = first + second
      segments = [0] * len(first) + [1] * len(second)
      want = _reference_score(model, params, tokens, segments, 4, positions, targets)
      assert score == pytest.approx(want, abs=1e-4), (item, candidate)


def test_an_item_is_correct_when_its_gold_scores_highest():
  items = [study_probes.StudyItem("A", probe, "x", "born_in",
                                  kp.SlotItem(kp.TAIL, ("{}",), ("a", "b", "c"), gold))
           for probe, gold in (("text_recall", 1), ("triple_tail", 2), ("text_heldout", 0))]
  fixed = lambda items: [np.array([0.1, 0.5, 0.3]) for _ in items]
  assert study_probes.correct(items, fixed, fixed).tolist() == [True, False, False]


def test_wrong_answers_are_split_into_another_own_value_and_the_rest():
  person = ksc.Person("Ann Bo", "A", {"born_in": "Quenby", "lives_in": "Halvik",
                                      "works_in": "Sunmere", "teaches": "botany"})
  cities = ("Quenby", "Halvik", "Sunmere", "Wyncote")
  tail = lambda probe, relation, gold: study_probes.StudyItem(
      "A", probe, person.name, relation, kp.SlotItem(kp.TAIL, ("{}",), cities, gold))
  items = [tail("text_recall", "born_in", 0),  # right
           tail("text_recall", "lives_in", 1),  # Sunmere: Ann's works_in city
           tail("text_recall", "works_in", 2),  # Wyncote: not Ann's
           tail("triple_tail", "lives_in", 1),  # Quenby: Ann's born_in city
           study_probes.StudyItem("A", "triple_relation", person.name, "born_in",
                                  kp.SlotItem(kp.RELATION, ("{}",), ("a", "b"), 0))]
  counts = study_probes.own_value_errors(items, [0, 2, 3, 0, 1], [person])
  assert counts == {("A", "text_recall"): (2, 1), ("A", "triple_tail"): (1, 1)}


def test_paired_bootstrap_and_table_read_the_item_results():
  rng = np.random.default_rng(0)
  base = (rng.random((3, 400)) < 0.3).astype(float)
  better = np.maximum(base, (rng.random((3, 400)) < 0.2))
  d, lo, hi = study_report.paired_bootstrap(better, base)
  assert lo < d < hi and lo > 0 and d == pytest.approx(better.mean() - base.mean())
  d, lo, hi = study_report.paired_bootstrap(base, base)
  assert d == lo == hi == 0
  enc = lambda m: "".join("1" if x else "0" for x in m)
  lines = [{"arm": arm, "seed": s, "final_correct": {"T/triple_tail": enc(m[s]),
                                                     "N/triple_tail": enc(m[s] * 0)},
            "curve": {"100": {"T/triple_tail": m[s].mean()}}}
           for arm, m in (("uktp", better), ("triples", base)) for s in range(3)]
  text = study_report.table(lines, {"T/triple_tail": 0.1, "N/triple_tail": 0.1})
  assert re.search(r"T/triple_tail\s+uktp - triples\s+\+0\.\d+ \[\+", text)
  # An arm a seed ahead (a study still running) is compared on the seeds both have.
  ahead = lines + [dict(lines[0], seed=3)]
  text_ahead = study_report.table(ahead, {"T/triple_tail": 0.1, "N/triple_tail": 0.1})
  assert "triples [0, 1, 2], uktp [0, 1, 2, 3]" in text_ahead
  assert re.search(r"uktp - triples\s+\+0\.\d+ \[.*\] \(seeds \[0, 1, 2\]\)", text_ahead)
  assert re.findall(r"uktp - triples\s+(\S+ \[\S+ \S+\])", text_ahead) == \
      re.findall(r"uktp - triples\s+(\S+ \[\S+ \S+\])", text)
  assert re.search(r"N/triple_tail\s+uktp 0\.000 .* below chance", text)
  # Above chance is a leak, unless the KG's tail statistics alone reach it.
  lines = [dict(l, final_correct={"N/triple_relation": enc(np.ones(400) * (s < 2))})
           for l in lines for s in [l["seed"]]]  # 2 of 3 seeds right: 0.667
  text = study_report.table(lines, {"N/triple_relation": 0.333})
  assert re.search(r"N/triple_relation\s+uktp 0\.667 \(chance 0\.333 ± 0\.\d+\) LEAK\?", text)
  text = study_report.table(lines, {"N/triple_relation": 0.333}, {"N/triple_relation": 0.65})
  assert re.search(r"uktp 0\.667 \(chance .*, KG tail prior 0\.650 ± 0\.\d+\) ok", text)


def test_the_markdown_summary_gives_mean_and_spread_over_seeds_per_arm():
  cells = ("A/text_recall", "A/triple_tail", "T/triple_tail", "T/triple_relation",
           "T/in_context_relation", "K/text_heldout", "N/triple_tail")
  line = lambda arm, seed, bits, s: {
      "arm": arm, "seed": seed, "train_seconds": s,
      "final_correct": {c: bits for c in cells if arm != "text" or c != "A/triple_tail"}}
  lines = [line("triples", 0, "1100", 1000.0), line("triples", 1, "1111", 1200.0),
           line("text", 0, "1000", 900.0)]
  chance = {c: 0.25 for c in cells}
  out = study_report.markdown_summary(lines, chance).splitlines()
  assert out[0] == ("| seeds: text 0; triples 0,1 | chance | 1 text only | "
                    "2 text + triples |")
  rows = {r.split(" | ")[0].lstrip("| "): r for r in out[2:]}
  assert rows["training (s)"] == "| training (s) |  | 900 | 1,100 ± 100 |"
  # Seed accuracies 0.5 and 1.0: mean 0.75, std 0.25; one seed prints bare.
  assert rows["T -> triple layout: tail"] == "| T -> triple layout: tail | 0.250 | 0.250 | 0.750 ± 0.250 |"
  # Text only trains no triples: no own-rows figure; text + triples reads A/triple_tail.
  assert rows["A: triples in the arm's own rows (gate 0.95)"].endswith("| (none) | 0.750 ± 0.250 |")


def test_recall_misses_are_counted_per_relation_from_the_stored_items():
  relations = ["lives_in", "works_in", "lives_in", "born_in"]
  lines = [{"arm": "uktp", "seed": 0, "final_correct": {"A/text_recall": "0110"}},
           {"arm": "uktp", "seed": 1, "final_correct": {"A/text_recall": "0011"}},
           {"arm": "text", "seed": 0, "final_correct": {"A/text_recall": "1111"}}]
  text = study_report.misses_by_relation(lines, relations)
  assert "| lives_in [2] | works_in [1] | born_in [1] | all |" in text
  # Arms in the study's order; seed 0 misses items 0 and 3, seed 1 items 0 and 1.
  assert text.splitlines()[3:] == ["| text | 0 | 0 | 0 | 0 |", "| uktp | 2 | 1 | 1 | 4 |"]
  with pytest.raises(ValueError, match="A/text_recall: text's lines have 4 items, the "
                     "study 3"):
    study_report.misses_by_relation(lines, relations[:3])


def test_the_tail_prior_answers_relations_from_the_kg_statistics_alone():
  same = lambda r: {"type": "place"}
  relations = {"born_in": same(0), "died_in": same(0), "lives_in": same(0)}
  item = lambda tail, gold: study_probes.StudyItem("N", "triple_relation", "x", gold,
      kp.SlotItem(kp.RELATION, ("x", "{}", tail), ("born in", "died in", "lives in"),
                  list(relations).index(gold)))
  kg = [("a", "born_in", "Rome"), ("b", "born_in", "Rome"), ("c", "died_in", "Rome"),
        ("d", "lives_in", "Oslo"), ("e", "died_in", "Oslo")]
  assert study_probes.tail_prior([item("Rome", "born_in")], kg, relations) == 1.0
  assert study_probes.tail_prior([item("Rome", "died_in")], kg, relations) == 0.0
  assert study_probes.tail_prior([item("Oslo", "died_in")], kg, relations) == 0.5  # a tie
  assert study_probes.tail_prior([item("Lima", "born_in")], kg, relations) == pytest.approx(1 / 3)


def test_the_value_prior_answers_tails_from_value_counts_alone():
  item = lambda gold: study_probes.StudyItem("N", "text_heldout", "x", "born_in",
      kp.SlotItem(kp.TAIL, ("x", "born in", "{}"), ("Rome", "Oslo", "Lima"),
                  ("Rome", "Oslo", "Lima").index(gold)))
  facts = [("born_in", "Rome"), ("born_in", "Rome"), ("born_in", "Oslo"),
           ("died_in", "Lima"), ("died_in", "Lima"), ("died_in", "Lima")]  # another relation
  assert study_probes.value_prior([item("Rome")], facts) == 1.0
  assert study_probes.value_prior([item("Lima")], facts) == 0.0
  assert study_probes.value_prior([item("Oslo")], facts[1:3]) == 0.5  # a tie
  assert study_probes.value_prior([item("Rome"), item("Oslo")], facts) == 0.5


def test_the_leak_check_accepts_the_text_value_prior_in_every_arm():
  enc = lambda m: "".join("1" if x else "0" for x in m)
  lines = [{"arm": a, "seed": 0, "final_correct": {"N/text_heldout": enc(np.arange(400) < 70)},
            "curve": {"100": {"N/text_heldout": 0.175}}} for a in ("text", "uktp")]
  text = study_report.table(lines, {"N/text_heldout": 0.067})
  assert re.search(r"N/text_heldout\s+text 0\.175 \(chance 0\.067 ± 0\.\d+\) LEAK\?", text)
  text = study_report.table(lines, {"N/text_heldout": 0.067}, {}, {"N/text_heldout": 0.16})
  assert re.search(r"text 0\.175 \(chance .*, text value prior 0\.160 ± 0\.\d+\) ok", text)
  assert re.search(r"uktp 0\.175 \(chance .*, text value prior 0\.160 ± 0\.\d+\) ok", text)


def test_the_leak_check_standard_error_counts_seeds_times_items():
  """3 seeds x 400 items at 0.29 against chance 0.25: two standard errors over all 1200
  answers are 2 * sqrt(0.25 * 0.75 / 1200) = 0.025, so 0.29 is above chance (counted over
  one seed's 400 items they would be 0.043, and 0.29 would pass as chance)."""
  enc = lambda m: "".join("1" if x else "0" for x in m)
  right = np.arange(400) < 116  # 0.29 in every seed
  lines = [{"arm": "uktp", "seed": s, "final_correct": {"N/triple_tail": enc(right)},
            "curve": {"100": {"N/triple_tail": 0.29}}} for s in range(3)]
  text = study_report.table(lines, {"N/triple_tail": 0.25}, {"N/triple_tail": 0.2})
  two_se = 2 * np.sqrt(0.25 * 0.75 / 1200)
  assert f"{two_se:.3f}" == "0.025"
  row = [l for l in text.splitlines() if l.startswith("N/triple_tail ") and "(chance" in l]
  assert row == ["N/triple_tail                    uktp 0.290 (chance 0.250 ± 0.025, "
                 "KG value prior 0.200 ± 0.023) LEAK?"]


def test_the_bootstrap_interval_holds_the_spread_between_seeds():
  """Seeds that disagree widen the interval: one seed far ahead is not read as an effect
  of the arm, as it would be if only the items were resampled."""
  rng = np.random.default_rng(1)
  base = (rng.random((3, 300)) < 0.3).astype(float)
  lucky = base.copy()
  lucky[0] = np.maximum(lucky[0], rng.random(300) < 0.6)  # seed 0 only
  d, lo, hi = study_report.paired_bootstrap(lucky, base)
  items_only = study_report.paired_bootstrap(lucky.mean(0, keepdims=True),
                                             base.mean(0, keepdims=True))
  assert d == pytest.approx(items_only[0])
  assert items_only[1] > 0  # items alone: a clear "effect"
  assert lo <= 0.0 + 1e-12 and hi - lo > 2 * (items_only[2] - items_only[1])
  steady = np.tile(lucky[0], (3, 1))  # every seed the same: no seed spread to add
  d, lo, hi = study_report.paired_bootstrap(steady, base[:1].repeat(3, 0))
  assert lo > 0


def test_the_table_reports_the_recall_gate_per_arm():
  enc = lambda m: "".join("1" if x else "0" for x in m)
  stored, weak = np.ones(100), (np.arange(100) < 80).astype(float)
  lines = [{"arm": arm, "seed": 0, "final_correct": {"A/text_recall": enc(text),
                                                     "A/triple_tail": enc(triple)}}
           for arm, text, triple in (("text", stored, weak), ("uktp", stored, weak))]
  out = study_report.table(lines, {"A/text_recall": 0.1, "A/triple_tail": 0.1})
  assert re.search(r"text A/text_recall 1\.000 met", out)  # the text arm trains no triples
  # UKTP trains A's triples beside their sentences: its gate reads that layout.
  assert re.search(r"uktp A/text_recall 1\.000, A/aligned_tail not probed NOT MET", out)
  for line in lines:
    line["final_correct"]["A/aligned_tail"] = enc(stored)
    line["final_correct"]["A/donor_tail"] = enc(weak)
  lines += [dict(lines[1], arm=a) for a in ("triples", "misaligned")]
  out = study_report.table(lines, {c: 0.1 for c in ("A/text_recall", "A/triple_tail",
                                                    "A/aligned_tail", "A/donor_tail")})
  assert re.search(r"uktp A/text_recall 1\.000, A/aligned_tail 1\.000 met", out)
  assert re.search(r"triples A/text_recall 1\.000, A/triple_tail 0\.800 NOT MET", out)
  # The wrong-sentence control trains A's triples beside another person's sentence.
  assert re.search(r"misaligned A/text_recall 1\.000, A/donor_tail 0\.800 NOT MET", out)
  # UKTP + bare triples trains A's triples in both layouts: its gate reads both.
  lines.append(dict(lines[1], arm="uktp_bare"))
  out = study_report.table(lines, {c: 0.1 for c in ("A/text_recall", "A/triple_tail",
                                                    "A/aligned_tail", "A/donor_tail")})
  assert re.search(r"uktp_bare A/text_recall 1\.000, A/aligned_tail 1\.000, "
                   r"A/triple_tail 0\.800 NOT MET", out)


_SETUP_SCRIPT = r"""
import glob, json, os, sys
sys.argv = ["knowledge_study"]
sys.path.insert(0, "benchmarks")
import knowledge_study as ks
from absl import flags
flags.FLAGS(sys.argv)
# Every committed result line still matches its fingerprint (the settings added since
# stay out of it at the value those lines used), and a new recipe does not.
lines = [json.loads(l) for f in sorted(glob.glob("benchmarks/results/knowledge_study*.jsonl"))
         for l in open(f) if l.strip()]
assert lines and all(ks.fingerprint(l["settings"]) == l["fingerprint"] for l in lines)
now = ks.setup()
assert now["peak_lr"] != ks.SETTINGS_SINCE["peak_lr"]
assert ks.fingerprint(now) != ks.fingerprint(dict(now, **ks.SETTINGS_SINCE))
# A run directory belongs to one setup: the trainer would resume any checkpoint in it.
run = os.path.join(sys.argv_dir, "uktp_seed0")
ks.claim_run_dir(run, now)
os.makedirs(run)
ks.claim_run_dir(run, now)  # its own: resumes
for other, says in ((dict(now, peak_lr=2e-3), "differs in peak_lr"),
                    (now, "unknown setup")):
  if says == "unknown setup":
    os.remove(run + ".setup.json")
  try:
    ks.claim_run_dir(run, other)
  except ValueError as e:
    assert says in str(e) and run in str(e), e
  else:
    raise AssertionError("claimed " + says)
print("ok")
"""


def test_result_lines_and_run_directories_belong_to_one_setup(tmp_path):
  """Old result lines keep their fingerprints; a run directory of another recipe (or of
  no recorded one) is refused, not resumed."""
  script = _SETUP_SCRIPT.replace("sys.argv_dir", repr(str(tmp_path)))
  done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


@pytest.mark.slow  # four short training runs: a few minutes on 2 cores
def test_the_whole_study_pipeline_runs_resumes_and_reports(tmp_path):
  out, results, figure = tmp_path / "study", tmp_path / "results.jsonl", tmp_path / "curves.png"
  cmd = [sys.executable, "benchmarks/knowledge_study.py", f"--out_dir={out}",
         f"--results={results}", f"--figure={figure}", "--num_people=40", "--phrasings=2",
         "--vocab_pieces=256", "--steps=20", "--probe_every=10", "--text_rows=8",
         "--knowledge_rows=4", "--gin=learning_rate_schedule.warmup_steps=5",
         "--arms=text,uktp", "--seeds=0"]
  # One device, as the study runs on a CPU machine (the suite's 8 simulated devices would
  # need every arm's rows per step to split 8 ways).
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=1500)
  text = first.stdout.decode()
  assert first.returncode == 0, text[-3000:] + first.stderr.decode()[-3000:]
  lines = [json.loads(l) for l in results.read_text().splitlines()]
  assert [(l["arm"], l["seed"]) for l in lines] == [("text", 0), ("uktp", 0)]
  assert set(lines[0]["curve"]) == {"10", "20"}
  assert len(lines[0]["final_correct"]["T/triple_tail"]) == 12 * len(ksc.RELATIONS)
  assert "paired bootstrap over seeds and items" in text and figure.stat().st_size > 10_000
  again = subprocess.run(cmd + ["--errors"], cwd=REPO, env=env, capture_output=True,
                         timeout=600)
  text = again.stdout.decode()
  assert "text seed 0: in" in text  # done runs are skipped
  # The last checkpoints re-probed: 12 T people's recall items per arm, wrong or right.
  rows = re.findall(r"^\| (text|uktp) \| \d+/\d+ \(\d+\) \| \d+/(\d+) \(\d+\) \|", text,
                    re.M)
  assert rows == [("text", str(12 * len(ksc.RELATIONS))), ("uktp", str(12 * len(ksc.RELATIONS)))]
  assert len(results.read_text().splitlines()) == 2
  # A probe added after a run finished: --reprobe adds its cells from the checkpoints
  # (and finds the cells already there unchanged).
  added_later = ("/aligned_tail", "/donor_tail")
  stripped = [dict(l, final_correct={c: v for c, v in l["final_correct"].items()
                                     if not c.endswith(added_later)},
                   curve={s: {c: v for c, v in cells.items() if not c.endswith(added_later)}
                          for s, cells in l["curve"].items()}) for l in lines]
  results.write_text("".join(json.dumps(l) + "\n" for l in stripped))
  third = subprocess.run(cmd + ["--report_only", "--reprobe"], cwd=REPO, env=env,
                         capture_output=True, timeout=600)
  assert third.returncode == 0, third.stderr.decode()[-3000:]
  assert "uktp seed 0: added A/aligned_tail, A/donor_tail" in \
      third.stdout.decode()
  restored = [json.loads(l) for l in results.read_text().splitlines()]
  assert [(l["final_correct"], l["curve"]) for l in restored] == \
      [(l["final_correct"], l["curve"]) for l in lines]
