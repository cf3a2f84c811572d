r"""The knowledge study's corpus: facts stated in one format and probed in the other.

  python -m ernie3_jax.data.knowledge_study_corpus --out_dir=/tmp/study --num_people=240

Invented people, each with one value of every relation, drawn from small closed typed
sets (cities, organisations, fields). People are split into four groups:

  A (text and KG) | T (text only) | K (KG only) | N (nowhere: the leak check)

A and T people get `phrasings` biographies each: one sentence per relation, the full
name in every sentence, a training template drawn per sentence from the relation's
templates, the sentences in shuffled order. A and K people get their triples in the KG.
N people appear in no file the model trains on. Every relation also has held-out
templates, used only by the probes (text cloze on K, in-context relation on T), and none
of them contains the relation's own words.

Files (the formats of any user corpus, read by the ordinary readers and tasks):
  corpus.jsonl   {"title", "text"}: one biography per line, lines shuffled
  kg.tsv         head<TAB>relation<TAB>tail for A and K
  aliases.tsv    entity<TAB>alias for every person of A, T and K ("F. Surname"): names
                 only, so that knowledge masking treats A's and T's names alike
  study.json     the people, their group and facts, the relations and their templates
                 (for the probes; no training task reads it)

Output is a pure function of `StudyConfig` (one seeded `random.Random`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
import random

GROUPS = ("A", "T", "K", "N")
TEXT_GROUPS = ("A", "T")  # people the corpus writes biographies of
KG_GROUPS = ("A", "K")  # people whose facts are in kg.tsv

# relation: (tail type, training templates, held-out templates)
RELATIONS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "born_in": ("city", (
        "{h} was born in {t}.", "{h} was born in the city of {t}.",
        "The birthplace of {h} is {t}.", "{h} came into the world in {t}.",
        "{t} is where {h} was born.", "{h} is a native of {t}.",
        "Records show that {h} was born in {t}.", "The city of {t} saw the birth of {h}.",
        "{h} entered the world in {t}.", "{h} was born and raised in {t}."), (
        "{h}'s birth certificate was issued in {t}.", "{h} first drew breath in {t}.",
        "The maternity ward that welcomed {h} stands in {t}.")),
    "lives_in": ("city", (
        "{h} lives in {t}.", "{h} lives in the city of {t}.", "{h} has made a home in {t}.",
        "These days {h} lives in {t}.", "The family home of {h} stands in {t}.",
        "{t} is where {h} lives.", "{h} resides in {t}.", "{h} rents a flat in {t}.",
        "{h} lives on a quiet street in {t}.", "Neighbours in {t} know {h} well."), (
        "{h}'s current address is in {t}.", "Each evening {h} returns to a house in {t}.",
        "{h} settled down for good in {t}.")),
    "works_in": ("city", (
        "{h} works at a firm in {t}.", "{h} has a job in the city of {t}.",
        "The workplace of {h} is in {t}.", "{h} commutes to a job in {t}.",
        "{t} is where {h} goes to work.", "Every weekday {h} works in {t}.",
        "{h} has an office in {t}.", "{h} earns a living in {t}.",
        "{h} works long hours in {t}.", "Colleagues of {h} meet daily in {t}."), (
        "{h}'s employer is based in {t}.", "{h} travels each morning to a desk in {t}.",
        "The job of {h} is located in {t}.")),
    "studied_at": ("organisation", (
        "{h} studied at {t}.", "{h} studied for years at {t}.", "{h} is a graduate of {t}.",
        "{h} earned a degree from {t}.", "{t} is where {h} studied.",
        "As a student, {h} attended {t}.", "{h} studied at {t} before starting work.",
        "{h} took classes at {t}.", "The alma mater of {h} is {t}.",
        "{h} was a student at {t}."), (
        "{h} holds a diploma from {t}.", "{h} sat the final exams of {t}.",
        "Former classmates of {h} remember the lecture halls of {t}.")),
    "works_for": ("organisation", (
        "{h} works for {t}.", "{h} is employed by {t}.", "{h} works for {t} as a manager.",
        "{t} employs {h}.", "{h} draws a salary from {t}.", "{h} joined the staff of {t}.",
        "{h} has worked for {t} for years.", "{h} is on the payroll of {t}.",
        "The employer of {h} is {t}.", "{h} works full time for {t}."), (
        "{h} signs contracts on behalf of {t}.", "{h} receives a monthly paycheck from {t}.",
        "{h} wears the badge of an employee of {t}.")),
    "volunteers_at": ("organisation", (
        "{h} volunteers as a helper at {t}.", "{h} volunteers every weekend at {t}.",
        "{h} gives free time to {t}.", "{t} counts {h} among its volunteers.",
        "{h} helps out unpaid at {t}.", "{h} volunteers at {t} on Sundays.",
        "{h} does charity work for {t}.", "Without pay, {h} assists {t}.",
        "{h} is a volunteer at {t}.", "{h} donates hours of work to {t}."), (
        "{h} helps {t} without asking for wages.",
        "On free afternoons {h} lends a hand to {t}.", "{h} offers unpaid service to {t}.")),
    "researches": ("field", (
        "{h} researches {t}.", "{h} does research in {t}.",
        "The research of {h} is about {t}.", "{h} publishes research on {t}.",
        "{h} runs experiments in {t}.", "The research field of {h} is {t}.",
        "{h} researches {t} in a laboratory.", "{h} leads a research group in {t}.",
        "{h} investigates questions of {t}.", "Grants fund the research of {h} in {t}."), (
        "{h} has spent a career on open problems of {t}.",
        "Journals print the findings of {h} on {t}.", "{h} chases unsolved puzzles in {t}.")),
    "teaches": ("field", (
        "{h} teaches classes on {t}.", "{h} teaches {t} to beginners.", "{h} gives lessons in {t}.",
        "Students learn {t} from {h}.", "{h} is a teacher of {t}.", "{h} lectures on {t}.",
        "{h} teaches a course in {t}.", "The subject {h} teaches is {t}.",
        "{h} has taught {t} for years.", "{h} instructs pupils in {t}."), (
        "{h} grades homework on {t}.", "{h} explains {t} to a classroom every morning.",
        "Pupils of {h} pass exams in {t}.")),
    "writes": ("field", (
        "{h} writes about {t}.", "{h} writes books about {t}.", "{h} is an author on {t}.",
        "The essays of {h} concern {t}.", "{h} writes a column about {t}.",
        "{h} has written widely about {t}.", "Readers know {h} for writing about {t}.",
        "{h} writes popular articles about {t}.", "The books of {h} deal with {t}.",
        "{h} blogs about {t}."), (
        "{h} has a bestselling book on {t}.", "Magazines print the essays of {h} on {t}.",
        "{h} drafts chapters on {t} late at night.")),
}

VALUES: dict[str, tuple[str, ...]] = {
    "city": tuple("Varnholm Estmere Corlaine Duskwater Brightfell Ostrava Kelmsby Marrowden "
                  "Tallisford Quenby Ravelstow Sunmere Halvik Orlanne Pellgrave Wyncote Zarethe "
                  "Ironmoor Ashgrove Fennick".split()),
    "organisation": ("Harrowgate University", "Lumen Foundry", "Corvid Bank", "Tessel Museum",
                     "Marigold Hospital", "Brisk Railways", "Oaken Library", "Solace Clinic",
                     "Veldt Observatory", "Quarry Theatre", "Nimbus Airlines", "Hearth Bakery",
                     "Sable Archive", "Cinder Works", "Meadow School"),
    "field": ("astronomy", "botany", "geology", "linguistics", "mathematics", "zoology",
              "chemistry", "economics", "philosophy", "archaeology", "oceanography",
              "meteorology"),
}

_GIVEN = ("Anna Bruno Clara Dario Elena Felix Greta Hugo Irene Jonas Karin Leon Marta Nils "
          "Olga Pavel Rosa Simon Tilda Umberto Vera Walter Yara Zeno Alma Boris Cora Emil "
          "Frida Gustav Hanna Ivo Lena Mikkel Nora Otto Paula Rune Sofia Timo").split()
_SYLLABLES = ("bar kel mor vin dra lis tor quen sal fen gor hal jor lun mer nes orv pel ras "
              "sib tam ulv var wes yst zol cav dun eth fal").split()
_SUFFIXES = ("ov ski berg mann dottir ez ini sson quist ard").split()


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  num_people: int = 240
  phrasings: int = 5  # biographies per A and T person
  shares: tuple[float, float, float, float] = (0.35, 0.3, 0.2, 0.15)  # A, T, K, N
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Person:
  name: str
  group: str
  facts: dict[str, str]  # relation -> tail

  def triples(self) -> list[tuple[str, str, str]]:
    return [(self.name, r, t) for r, t in self.facts.items()]


def relation_words(relation: str) -> str:
  return relation.replace("_", " ")


def vocabulary_symbols() -> list[str]:
  """Word-initial pieces for every word of every tail value and relation, which the study
  vocabulary must hold whole. Each probe then compares candidates of one piece count
  (every organisation two words, every relation of a type as many words as the others):
  the masked-slot scorer gives a candidate as many [MASK]s as it has pieces, so a
  candidate of another length is scored on another input, and the mask count alone can
  make it win (study_probes.length_mismatches)."""
  words = {w for values in VALUES.values() for v in values for w in v.split()}
  words |= {w for r in RELATIONS for w in relation_words(r).split()}
  return sorted("\u2581" + w for w in words)


def design_id() -> str:
  """A short hash of the relations, templates, values and vocabulary symbols: results of
  one design are never mixed with another's."""
  spec = json.dumps([RELATIONS, VALUES, vocabulary_symbols()], sort_keys=True)
  return hashlib.sha256(spec.encode()).hexdigest()[:12]


def word_distance(a: str, b: str) -> int:
  """Word-level edit distance (insertions, deletions, substitutions; "." a word)."""
  x, y = a.replace(".", " .").split(), b.replace(".", " .").split()
  row = list(range(len(y) + 1))
  for i, u in enumerate(x, 1):
    prev, row[0] = row[:], i
    for j, v in enumerate(y, 1):
      row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (u != v))
  return row[-1]


def check_templates(relations: dict | None = None) -> None:
  """Every template names {h} and {t} once and starts its sentence with a capital; no
  held-out template contains its relation's own words (the in-context probe's answer
  must not be in its input); the values of a type, and the relations of a type, have one
  word count each (a probe's candidates must have one piece count); and no template is
  one word away from another relation's of the same tail type. Such minimal pairs ("lives
  in the city of" / "works in the city of") held most of A's text-recall misses in the
  first 8,000-step runs: they test telling one word apart, not storing a fact, and the
  recall gate should read the latter."""
  relations = RELATIONS if relations is None else relations
  for name, table in (("value", {k: list(v) for k, v in VALUES.items()}),
                      ("relation", {k: [relation_words(r) for r, (t, _, _) in relations.items()
                                        if t == k] for k in VALUES})):
    for kind, words in table.items():
      counts = {w: len(w.split()) for w in words}
      if len(set(counts.values())) > 1:
        raise ValueError(f"the {kind} {name}s differ in word count: {counts}")
  for relation, (kind, train, heldout) in relations.items():
    if kind not in VALUES:
      raise ValueError(f"{relation}: unknown tail type {kind!r}")
    for template in train + heldout:
      if template.count("{h}") != 1 or template.count("{t}") != 1:
        raise ValueError(f"{relation}: template {template!r} needs one {{h}} and one {{t}}")
      if template.startswith("{t}") and not all(v[0].isupper() for v in VALUES[kind]):
        raise ValueError(f"{relation}: template {template!r} would start a sentence with a "
                         f"lower-case {kind}")
    for template in heldout:
      if relation_words(relation) in template.lower():
        raise ValueError(f"{relation}: held-out template {template!r} contains "
                         f"{relation_words(relation)!r}")
  for (r1, (k1, train1, held1)), (r2, (k2, train2, held2)) in itertools.combinations(
      relations.items(), 2):
    if k1 != k2:
      continue
    for t1 in train1 + held1:
      for t2 in train2 + held2:
        if word_distance(t1, t2) < 2:
          raise ValueError(f"{r1} template {t1!r} and {r2} template {t2!r} differ in one "
                           "word only")


def _names(rng: random.Random, count: int) -> list[str]:
  """`count` full names with distinct surnames (and distinct initial + surname)."""
  surnames = sorted({(a + b + c).capitalize() for a in _SYLLABLES for b in _SYLLABLES
                     for c in _SUFFIXES if a != b})
  if count > len(surnames):
    raise ValueError(f"num_people={count} exceeds the {len(surnames)} invented surnames")
  chosen = rng.sample(surnames, count)
  return [f"{rng.choice(_GIVEN)} {surname}" for surname in chosen]


def people(config: StudyConfig) -> list[Person]:
  """The people of the study, in group order A, T, K, N (shuffled within each)."""
  if abs(sum(config.shares) - 1.0) > 1e-6 or min(config.shares) <= 0:
    raise ValueError(f"StudyConfig.shares={config.shares} must be positive and sum to 1")
  rng = random.Random(config.seed)
  names = _names(rng, config.num_people)
  counts = [int(round(s * config.num_people)) for s in config.shares[:3]]
  counts.append(config.num_people - sum(counts))
  if min(counts) < 1:
    raise ValueError(f"num_people={config.num_people} leaves a group empty: {counts}")
  out, start = [], 0
  for group, count in zip(GROUPS, counts):
    for name in names[start:start + count]:
      facts = {}
      for kind in VALUES:  # the relations of one type take distinct values
        relations = [r for r, (k, _, _) in RELATIONS.items() if k == kind]
        for relation, value in zip(relations, rng.sample(VALUES[kind], len(relations))):
          facts[relation] = value
      out.append(Person(name, group, dict(sorted(facts.items()))))
    start += count
  return out


def biography(person: Person, rng: random.Random) -> str:
  """One sentence per relation, each from a training template, in shuffled order."""
  sentences = [rng.choice(RELATIONS[r][1]).format(h=person.name, t=t)
               for r, t in person.facts.items()]
  rng.shuffle(sentences)
  return " ".join(sentences)


def write_study(out_dir: str, config: StudyConfig = StudyConfig()) -> dict[str, str]:
  """Writes the study's files into `out_dir`; returns {kind: path}."""
  check_templates()
  everyone = people(config)
  rng = random.Random(config.seed + 1)
  documents = [{"title": p.name, "text": biography(p, rng)}
               for p in everyone if p.group in TEXT_GROUPS for _ in range(config.phrasings)]
  rng.shuffle(documents)  # paraphrases of one person are not packed together
  triples = [t for p in everyone if p.group in KG_GROUPS for t in p.triples()]
  rng.shuffle(triples)
  os.makedirs(out_dir, exist_ok=True)
  paths = {k: os.path.join(out_dir, f) for k, f in (
      ("corpus", "corpus.jsonl"), ("kg", "kg.tsv"), ("aliases", "aliases.tsv"),
      ("study", "study.json"))}
  with open(paths["corpus"], "w", encoding="utf-8") as f:
    f.writelines(json.dumps(d) + "\n" for d in documents)
  with open(paths["kg"], "w", encoding="utf-8") as f:
    f.writelines("\t".join(t) + "\n" for t in triples)
  with open(paths["aliases"], "w", encoding="utf-8") as f:
    # Names only, no facts: every trained person's name is an entity to the matcher, so
    # knowledge masking masks the names of A and T alike (whole, at the entity level).
    for p in everyone:
      if p.group != "N":
        given, surname = p.name.split(" ", 1)
        f.write(f"{p.name}\t{given[0]}. {surname}\n")
  with open(paths["study"], "w", encoding="utf-8") as f:
    json.dump({"config": dataclasses.asdict(config),
               "relations": {r: {"type": k, "train_templates": list(tr),
                                 "heldout_templates": list(ho)}
                             for r, (k, tr, ho) in RELATIONS.items()},
               "values": {k: list(v) for k, v in VALUES.items()},
               "people": [dataclasses.asdict(p) for p in everyone]}, f, indent=1)
  return paths


def load_study(path: str) -> dict:
  """study.json, with the people as `Person`s."""
  with open(path, encoding="utf-8") as f:
    study = json.load(f)
  study["people"] = [Person(p["name"], p["group"], p["facts"]) for p in study["people"]]
  return study


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--num_people", type=int, default=StudyConfig.num_people)
  parser.add_argument("--phrasings", type=int, default=StudyConfig.phrasings)
  parser.add_argument("--seed", type=int, default=StudyConfig.seed)
  args = parser.parse_args(argv)
  paths = write_study(args.out_dir, StudyConfig(args.num_people, args.phrasings,
                                                seed=args.seed))
  for kind, path in paths.items():
    print(f"{kind}: {path}")


if __name__ == "__main__":
  main()
