"""The knowledge study's probes: every fact of every group, asked in several formats.

Probes (one item per person and relation; candidates typed, the answer never in the input):

  text_recall         a training template with the tail masked (A: training recall)
  text_heldout        a held-out template with the tail masked (K: KG facts in text)
  triple_tail         `[CLS] head relation [MASK] [SEP]` (T: text facts as triples)
  triple_relation     `[CLS] head [MASK] tail [SEP]`, candidates the relations of the
                      tail's type (T)
  in_context_relation triple_relation plus a second segment stating the fact in held-out
                      wording (T: relation extraction)
  paired_tail         triple_tail plus a second segment, a training template with the
                      tail masked too, scored in both places: UKTP's own layout (A: the
                      recall of an arm that trains A's triples beside their sentences)
  aligned_tail        paired_tail with the very sentence UKTP pairs the triple with in
                      training (A: UKTP's training rows, read back as they were trained)
  donor_tail          triple_tail beside the other person's sentence the wrong-sentence
                      control pairs the triple with, unmasked as in training (A: that
                      arm's training rows; items whose donor sentence names the answer
                      are left out)

The last two need the arms' training rows (`rows`, from
`tasks/knowledge_study.knowledge_rows`); without them build_items makes none.

Tail candidates are every value of the relation's type; relation candidates the relations
of that type (a person's relations of one type take distinct values, so exactly one is
true). Text probes read the knowledge-masked-LM task embedding, triple probes UKTP's (or
knowledge-masked LM's for an arm that never trained UKTP's). Group N's items are the leak
check: nothing trains on N, so N must stay at chance in every closed-book probe. The
in-context probe states the fact in its second segment, so on N it measures reading the
relation off unseen wording alone, and on T that plus what the model remembers.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from typing import Iterable, Mapping, Sequence

import numpy as np

from ernie3_jax.data.knowledge_study_corpus import GROUPS, Person, relation_words
from ernie3_jax.evaluation.knowledge_probe import RELATION, TAIL, SlotItem

PROBES = ("text_recall", "text_heldout", "triple_tail", "triple_relation",
          "in_context_relation", "paired_tail", "aligned_tail", "donor_tail")
TEXT_PROBES = ("text_recall", "text_heldout")
RELATION_PROBES = ("triple_relation", "in_context_relation")


@dataclasses.dataclass(frozen=True)
class StudyItem:
  group: str
  probe: str
  person: str
  relation: str
  item: SlotItem


def _template(study: dict, relation: str, which: str, rng: random.Random) -> str:
  return rng.choice(study["relations"][relation][which])


# {pairing: {(head, relation): (the sentence training puts beside the triple, the tail's
# character span in it or (-1, -1))}} for the pairings "uktp" and "misaligned".
TrainingRows = Mapping[str, Mapping[tuple[str, str], tuple[str, tuple[int, int]]]]


def training_rows(knowledge_rows: Mapping[str, Sequence[dict]]) -> TrainingRows:
  """`TrainingRows` of {pairing: `tasks/knowledge_study.knowledge_rows(...)` of it}; a
  triple trained without a sentence (K's) has none."""
  return {pairing: {(r["head"], r["relation"]): (r["sentence"], tuple(r["tail_span"]))
                    for r in rows if r["sentence"]}
          for pairing, rows in knowledge_rows.items()}


def _row_items(h: str, relation: str, values: tuple[str, ...], tail: str,
               rows: TrainingRows) -> dict[str, SlotItem]:
  """aligned_tail and donor_tail of one fact, where its training rows have a sentence."""
  triple = (h, relation_words(relation), "{}")
  out = {}
  sentence, (start, end) = rows.get("uktp", {}).get((h, relation), ("", (-1, -1)))
  if sentence:
    if sentence[start:end] != tail:
      raise ValueError(f"aligned row of ({h}, {relation}): tail span {start}:{end} of "
                       f"{sentence!r} is not {tail!r}")
    out["aligned_tail"] = SlotItem(TAIL, triple, values, values.index(tail),
                                   context=sentence[:start] + "{}" + sentence[end:])
  donor, _ = rows.get("misaligned", {}).get((h, relation), ("", (-1, -1)))
  # A donor sentence (another person's) may name this fact's value as its own; such an
  # item would show its answer, so it is left out (the benchmark reports how many).
  if donor and tail.lower() not in donor.lower():
    out["donor_tail"] = SlotItem(TAIL, triple, values, values.index(tail), context=donor)
  return out


def build_items(study: dict, seed: int = 0,
                rows: TrainingRows | None = None) -> list[StudyItem]:
  """Every probe's items for every person of `study` (from `load_study`), in a fixed order
  (the same items for every arm and seed, so arms compare item by item). `rows`
  (`training_rows`) adds aligned_tail and donor_tail for A, whose triples train beside
  sentences."""
  rng = random.Random(seed)
  # Probes added later draw from their own generator, so the earlier probes' items (and
  # results already recorded for them) stay the same.
  paired_rng = random.Random(f"{seed}/paired_tail")
  relations = study["relations"]
  out = []
  person: Person
  for person in study["people"]:
    for relation, tail in person.facts.items():
      kind = relations[relation]["type"]
      values = tuple(study["values"][kind])
      same_type = tuple(r for r in relations if relations[r]["type"] == kind)
      words = tuple(relation_words(r) for r in same_type)
      h = person.name

      def text(which: str, draw: random.Random = rng) -> str:
        return _template(study, relation, which, draw).replace("{h}", h).replace("{t}", "{}")

      items = {
          "text_recall": SlotItem(TAIL, (text("train_templates"),), values,
                                  values.index(tail)),
          "text_heldout": SlotItem(TAIL, (text("heldout_templates"),), values,
                                   values.index(tail)),
          "triple_tail": SlotItem(TAIL, (h, relation_words(relation), "{}"), values,
                                  values.index(tail)),
          "triple_relation": SlotItem(RELATION, (h, "{}", tail), words,
                                      same_type.index(relation)),
          "in_context_relation": SlotItem(
              RELATION, (h, "{}", tail), words, same_type.index(relation),
              context=_template(study, relation, "heldout_templates", rng).format(h=h, t=tail)),
          "paired_tail": SlotItem(TAIL, (h, relation_words(relation), "{}"), values,
                                  values.index(tail),
                                  context=text("train_templates", paired_rng)),
      }
      if rows is not None and person.group == "A":
        items.update(_row_items(h, relation, values, tail, rows))
      out += [StudyItem(person.group, probe, h, relation, items[probe])
              for probe in PROBES if probe in items]
  return out


def answer_leaks(items: Sequence[StudyItem]) -> list[StudyItem]:
  """Items whose own input contains their answer (must be none): the gold tail in a tail
  probe's input, or the gold relation's words in a relation probe's."""
  leaks = []
  for it in items:
    gold = it.item.candidates[it.item.gold]
    shown = " ".join(p for p in it.item.prompt if p != "{}") + " " + it.item.context
    if gold.lower() in shown.replace("{}", "").lower():
      leaks.append(it)
  return leaks


def length_mismatches(items: Sequence[StudyItem], encode) -> list[StudyItem]:
  """Items whose candidates differ in piece count under `encode` (text -> ids; must be
  none). The masked-slot scorer gives each candidate as many [MASK]s as it has pieces,
  so candidates of different lengths are scored on different inputs, and the mask count
  alone can decide: in the first version of the study (organisations of 3-5 pieces) all
  26 organisation errors of a text-only run were candidates of another length than the
  answer, which won 0.99 of the same items among candidates of its own length."""
  return [it for it in items if len({len(encode(c)) for c in it.item.candidates}) > 1]


def chance(items: Sequence[StudyItem]) -> float:
  return float(np.mean([1.0 / len(it.item.candidates) for it in items])) if items else np.nan


def _share_of_commonest(counts: Sequence[int], gold: int) -> float:
  """1 if candidate `gold` has the most counts, 1/k if it ties with k-1 others, else 0."""
  seen = np.asarray(counts, np.float64)
  best = np.flatnonzero(seen == seen.max())
  return float(gold in best) / len(best)


def tail_prior(items: Sequence[StudyItem], triples: Sequence[tuple[str, str, str]],
               relations: dict) -> float:
  """Accuracy of relation items answered from the KG's statistics alone: the candidate
  relation that `triples` (the KG the knowledge arms train on) pair most often with the
  item's tail, ties shared (`relations`: the study's, which order the candidates).
  Above chance without any fact of the item's person: which
  relation a city or a field goes with is a corpus-level regularity, not a leak."""
  count = collections.Counter((t, r) for _, r, t in triples)
  scores = []
  for it in items:
    if it.item.kind != RELATION:
      continue
    tail = it.item.prompt[2]
    kind = relations[it.relation]["type"]
    same_type = [r for r in relations if relations[r]["type"] == kind]  # build_items' order
    scores.append(_share_of_commonest([count[(tail, r)] for r in same_type], it.item.gold))
  return float(np.mean(scores)) if scores else np.nan


def value_prior(items: Sequence[StudyItem], facts: Iterable[tuple[str, str]]) -> float:
  """Accuracy of tail items answered from value counts alone: the candidate that `facts`
  ((relation, value) pairs a run trains on) give the item's relation most often, ties
  shared. Values are drawn with replacement, so some are commoner than others; a model
  that learned only that reaches this on people it never saw, without any leak."""
  count = collections.Counter(facts)
  scores = []
  for it in items:
    if it.item.kind != TAIL:
      continue
    scores.append(_share_of_commonest([count[(it.relation, c)] for c in it.item.candidates],
                                      it.item.gold))
  return float(np.mean(scores)) if scores else np.nan


def cells(items: Sequence[StudyItem]) -> dict[tuple[str, str], list[int]]:
  """{(group, probe): indices into `items`}."""
  out: dict[tuple[str, str], list[int]] = {(g, p): [] for g in GROUPS for p in PROBES}
  for i, it in enumerate(items):
    out[(it.group, it.probe)].append(i)
  return out


def predictions(items: Sequence[StudyItem], text_scorer, triple_scorer) -> np.ndarray:
  """int [len(items)]: the candidate each item's scorer ranks first (ties: the first);
  text probes read `text_scorer`, the triple layout `triple_scorer`."""
  out = np.zeros(len(items), np.int64)
  for scorer, probes in ((text_scorer, TEXT_PROBES),
                         (triple_scorer, tuple(p for p in PROBES if p not in TEXT_PROBES))):
    index = [i for i, it in enumerate(items) if it.probe in probes]
    if not index:
      continue
    scores = scorer([items[i].item for i in index])
    for i, s in zip(index, scores):
      out[i] = int(np.argmax(s))
  return out


def correct(items: Sequence[StudyItem], text_scorer, triple_scorer) -> np.ndarray:
  """bool [len(items)]: the gold candidate scored highest (ties: the first)."""
  return predictions(items, text_scorer, triple_scorer) == [it.item.gold for it in items]


def own_value_errors(items: Sequence[StudyItem], predicted: Sequence[int],
                     people: Sequence[Person]) -> dict[tuple[str, str], tuple[int, int]]:
  """{(group, probe): (wrong tail items, those answered with another of the person's own
  values)} over the tail probes. A person's relations of one type take distinct values,
  so an answer that is the person's value for another relation means the model stored
  the value but bound it to the wrong relation; any other wrong answer, that it did not
  store it (or stored another person's)."""
  facts = {p.name: p.facts for p in people}
  out: dict[tuple[str, str], list[int]] = {}
  for it, k in zip(items, predicted):
    if it.item.kind != TAIL:
      continue
    counts = out.setdefault((it.group, it.probe), [0, 0])
    answer = it.item.candidates[k]
    if k != it.item.gold:
      counts[0] += 1
      counts[1] += answer in {t for r, t in facts[it.person].items() if r != it.relation}
  return {cell: (wrong, own) for cell, (wrong, own) in out.items()}
