"""Deterministic generator of a fictional encyclopedia: a knowledge graph plus articles.

This is the embedded default pre-training data (nothing is downloaded). Entities
(people, places, organisations, works, ...) get invented names, a rule-based
builder draws a consistent knowledge graph over them, and every entity gets an
article stating many, but deliberately not all, of its facts.

Properties that entity matching, distant supervision and knowledge masking rely on:
* Each entity owns an invented key word (a surname, the core of a place name)
  that no other entity and no template uses, so names and aliases match
  unambiguously on word boundaries.
* A sentence that states a triple names both its head and its tail.
* About `heldout_fraction` of the triples are stated by no sentence at all (no
  sentence names both ends); they are listed apart for knowledge completion.

Output is a pure function of `EncyclopediaConfig` (one `random.Random(seed)`, no
iteration over sets), so the shipped files regenerate bit for bit:

  python -m ernie3_jax.data.encyclopedia --out_dir=ernie3_jax/data/embedded
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import itertools
import json
import os
import random
import re
import sys

from ernie3_jax.data import encyclopedia_schema as schema
# Re-exported: the schema's public names are read as encyclopedia.X too.
from ernie3_jax.data.encyclopedia_schema import (  # noqa: F401  pylint: disable=unused-import
    ALL_GENRES, ENTITY_TYPES, GENRES, LITERAL_TYPES, OCCUPATIONS, OCCUPATIONS_BY_WORK,
    RELATIONS, Relation, TYPE_GROUPS)

DEFAULT_OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded")


@dataclasses.dataclass(frozen=True)
class Entity:
  name: str
  type: str
  aliases: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class EncyclopediaConfig:
  seed: int = 0
  num_entities: int = 3000
  heldout_fraction: float = 0.1    # of all triples; drawn from entity-valued ones
  fact_keep_prob: float = 0.85     # a head's fact is written in the head's article
  backward_prob: float = 0.6       # ... and restated in the tail's article
  alias_prob: float = 0.35         # a later mention of the subject uses an alias
  skip_article_prob: float = 0.02  # a few entities get no article at all


@dataclasses.dataclass
class Encyclopedia:
  entities: list[Entity]
  triples: list[tuple[str, str, str]]
  heldout: list[tuple[str, str, str]]
  articles: list[tuple[str, str]]  # (title, text)


def _join(items: list[str]) -> str:
  return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class _Builder:
  """State of one generation run; all randomness flows from `self.rng`."""

  def __init__(self, cfg: EncyclopediaConfig):
    self.cfg = cfg
    self.rng = random.Random(cfg.seed)
    self.used: set[str] = set(schema.GIVEN)
    self.owner: dict[str, str] = {}  # key word -> entity name
    self.entities: list[Entity] = []
    self.ents: dict[str, Entity] = {}
    self.by_type: dict[str, list[str]] = {t: [] for t in ENTITY_TYPES}
    self.noun: dict[str, str] = {}  # species / dish noun
    self.triples: list[tuple[str, str, str]] = []
    self.seen: set[tuple[str, str, str]] = set()
    self.heldout_pairs: set[tuple[str, str]] = set()

  # -- names ------------------------------------------------------------------
  def _word(self, ends: list[str]) -> str:
    r = self.rng
    while True:
      w = r.choice(schema.START) + r.choice(schema.MID) + r.choice(ends)
      # Reject clumsy spellings (4 consonants in a row, doubled vowels) and clashes.
      if (4 <= len(w) <= 11 and w not in self.used and w.lower() not in schema.BLOCK
          and not re.search(r"[^aeiouy]{4}|aa|ee|ii|oo|uu", w.lower())):
        self.used.add(w)
        return w

  def _add_entity(self, etype: str) -> None:
    r = self.rng
    endings = {"country": schema.COUNTRY_END, "language": schema.LANGUAGE_END}
    w = self._word(endings.get(etype, schema.END))
    if etype == "person":
      given = r.sample(schema.GIVEN, 2)
      name = f"{given[0]} {given[1]} {w}" if r.random() < 0.15 else f"{given[0]} {w}"
      aliases = (w,)
    else:
      patterns, alias_patterns, alias_p = schema.NAME_PATTERNS[etype]
      noun = r.choice({"species": schema.SPECIES, "dish": schema.DISH_NOUNS}.get(etype, [""]))
      name = r.choice(patterns.split("|")).format(w=w, n=noun)
      self.noun[name] = noun
      alias = r.choice(alias_patterns.split("|")).format(w=w) if alias_patterns else name
      aliases = (alias,) if alias != name and r.random() < alias_p else ()
    ent = Entity(name, etype, aliases)
    self.entities.append(ent)
    self.ents[name] = ent
    self.by_type[etype].append(name)
    self.owner[w] = name

  # -- knowledge graph ----------------------------------------------------------
  def _add(self, h: str, rel: str, t: str) -> None:
    key = (h, rel, t)
    if h == t or key in self.seen or (RELATIONS[rel].symmetric and (t, rel, h) in self.seen):
      return
    self.seen.add(key)
    self.triples.append(key)

  def _build_places(self) -> tuple[dict, dict, dict]:
    r, T = self.rng, self.by_type
    C, L, cities = T["country"], T["language"], T["city"]
    lang_of = {}
    for i, c in enumerate(C):  # every language is official somewhere
      lang_of[c] = L[i] if i < len(L) else r.choice(L)
      self._add(c, "official_language", lang_of[c])
    # Countries on a ring plus random chords: a connected border graph.
    neighbours: dict[str, list[str]] = {c: [] for c in C}
    pairs = [(C[i], C[(i + 1) % len(C)]) for i in range(len(C))]
    pairs += [tuple(r.sample(C, 2)) for _ in range(len(C) // 2)]
    for a, b in pairs:
      if (a, "borders", b) not in self.seen and (b, "borders", a) not in self.seen:
        neighbours[a].append(b)
        neighbours[b].append(a)
      self._add(a, "borders", b)
    # Every country gets a few cities (round robin first); its first is the capital.
    country_of, cities_in = {}, {c: [] for c in C}
    for i, city in enumerate(cities):
      c = country_of[city] = C[i % len(C)] if i < 3 * len(C) else r.choice(C)
      cities_in[c].append(city)
      self._add(city, "located_in", c)
      if len(cities_in[c]) == 1:
        self._add(city, "capital_of", c)
    for i, m in enumerate(T["mountain"]):
      self._add(m, "lies_in", C[i % len(C)] if i < len(C) else r.choice(C))
    for river in T["river"]:
      path = [r.choice(C)]  # a river crosses a chain of neighbouring countries
      for _ in range(r.choice([0, 1, 1, 2])):
        if options := [n for n in neighbours[path[-1]] if n not in path]:
          path.append(r.choice(options))
      for c in path:
        self._add(river, "flows_through", c)
      banks = [city for c in path for city in cities_in[c]]
      for city in r.sample(banks, min(len(banks), r.randint(1, 3))):
        self._add(river, "flows_past", city)
    for s in T["species"]:
      for c in r.sample(C, min(len(C), r.choice([1, 1, 2, 3]))):
        self._add(s, "native_to", c)
    edible = [s for s in T["species"] if self.noun[s] in schema.EDIBLE]
    for d in T["dish"]:
      self._add(d, "originates_from", r.choice(cities))
      for s in r.sample(edible, min(len(edible), r.choice([1, 2]))):
        self._add(d, "made_with", s)
    return country_of, cities_in, lang_of

  def _build_people(self, country_of: dict, cities_in: dict, lang_of: dict) -> None:
    r, T = self.rng, self.by_type
    C, L, cities, P = T["country"], T["language"], T["city"], T["person"]
    year, langs, birthplace = {}, {}, {}
    for p in P:
      year[p] = r.randint(1520, 1960)
      born = birthplace[p] = r.choice(cities)
      self._add(p, "born_in", born)
      self._add(p, "birth_year", str(year[p]))
      country = country_of[born] if r.random() < 0.9 else r.choice(C)
      self._add(p, "citizen_of", country)
      langs[p] = [lang_of[country]]
      if r.random() < 0.6 and (other := r.choice(L)) not in langs[p]:
        langs[p].append(other)
      for lang in langs[p]:
        self._add(p, "speaks", lang)
      if r.random() < 0.8:
        self._add(p, "educated_at", r.choice(T["university"]))
      if r.random() < 0.5:
        self._add(p, "employed_by", r.choice(T["company"]))
      for g in r.sample(T["guild"], min(len(T["guild"]), r.choice([0, 1, 1, 2, 2]))):
        self._add(p, "member_of", g)
      for city in r.sample(cities, r.choice([0, 1, 1, 2, 2, 3])):
        if city != born:
          self._add(p, "lived_in", city)
      if year[p] < 1940 and r.random() < 0.75:
        pool = cities_in[country_of[born]] if r.random() < 0.5 else cities
        self._add(p, "died_in", r.choice(pool))
    # Relations between people respect chronology: teachers and parents are older.
    order = sorted(P, key=lambda q: (year[q], q))
    years = [year[q] for q in order]

    def born_between(lo: int, hi: int) -> list[str]:
      return order[bisect.bisect_left(years, lo):bisect.bisect_right(years, hi)]

    for p in P:
      y = year[p]
      if r.random() < 0.45 and (cand := born_between(y - 50, y - 10)):
        self._add(p, "student_of", r.choice(cand))
      if r.random() < 0.35 and (cand := born_between(y - 45, y - 20)):
        self._add(r.choice(cand), "parent_of", p)
      cand = born_between(y - 150, y - 5)
      for q in r.sample(cand, min(len(cand), r.choice([0, 1, 1, 2, 2, 3]))):
        self._add(p, "influenced_by", q)
    married = [p for p in order if r.random() < 0.35]  # neighbours in age marry
    for a, b in zip(married[::2], married[1::2]):
      if abs(year[a] - year[b]) <= 15:
        self._add(a, "spouse_of", b)
    # Works; a creator's occupation follows the kind of their first work.
    first_kind: dict[str, str] = {}
    places = cities + T["river"] + T["mountain"]
    for kind, rel in (("book", "author_of"), ("song", "composer_of"),
                      ("painting", "painter_of")):
      for w in T[kind]:
        c = r.choice(P)
        first_kind.setdefault(c, kind)
        self._add(c, rel, w)
        self._add(w, "created_in_year", str(min(2020, year[c] + r.randint(18, 65))))
        self._add(w, "genre", r.choice(GENRES[kind]))
        if kind != "painting":
          self._add(w, "written_in", langs[c][0] if r.random() < 0.9 else r.choice(L))
        if kind == "book" and r.random() < 0.8:
          self._add(w, "published_by", r.choice(T["company"]))
        if kind == "painting":
          for place in r.sample(places, r.choice([1, 1, 2])):
            self._add(w, "depicts", place)
    for p in P:
      self._add(p, "occupation",
                r.choice(OCCUPATIONS_BY_WORK.get(first_kind.get(p, ""), OCCUPATIONS)))
    for o in T["university"] + T["company"] + T["guild"]:
      f = r.choice(P)
      self._add(o, "founded_by", f)
      self._add(o, "founded_in_year", str(min(2015, year[f] + r.randint(25, 60))))
      self._add(o, "based_in", birthplace[f] if r.random() < 0.5 else r.choice(cities))
      cand = [q for q in born_between(year[f], year[f] + 80) if q != f]
      if r.random() < 0.7 and cand:
        self._add(o, "led_by", r.choice(cand))

  def _choose_heldout(self) -> list[tuple[str, str, str]]:
    """Entity-valued triples whose (head, tail) pair is linked by no other triple."""
    pair_count: dict[frozenset, int] = {}
    rel_count: dict[str, int] = {}
    for h, rel, t in self.triples:
      rel_count[rel] = rel_count.get(rel, 0) + 1
      pair = frozenset((h, t))
      pair_count[pair] = pair_count.get(pair, 0) + 1
    cand = [tr for tr in self.triples if tr[2] in self.ents and rel_count[tr[1]] >= 10
            and pair_count[frozenset((tr[0], tr[2]))] == 1]
    self.rng.shuffle(cand)
    target = round(self.cfg.heldout_fraction * len(self.triples))
    taken, per_rel = set(), {}
    for tr in cand:
      # Cap each relation so that most of its triples stay stated in the text.
      if len(taken) < target and per_rel.get(tr[1], 0) < 0.3 * rel_count[tr[1]]:
        per_rel[tr[1]] = per_rel.get(tr[1], 0) + 1
        taken.add(tr)
    return [tr for tr in self.triples if tr in taken]  # in KG order

  # -- articles -----------------------------------------------------------------
  def _surface(self, name: str, alias_p: float) -> str:
    """The name or an alias, with "the" where English wants it."""
    ent = self.ents[name]
    use_alias = ent.aliases and self.rng.random() < alias_p
    form = self.rng.choice(ent.aliases) if use_alias else name
    words = form.split()
    if ent.type in ("river", "species") or (
        ent.type != "person" and (words[0] in schema.THE_FIRST or words[-1] in schema.THE_LAST)):
      return "the " + form
    return form

  def _sentence(self, template: str, **slots: str) -> str | None:
    """Fills a template; None if it would name both ends of a held-out triple."""
    s = template.format(**slots)
    s = s[0].upper() + s[1:] + "."
    # Key words over-approximate mentions: every name and alias contains one.
    names = sorted({self.owner[w] for w in schema.KEY_RE.findall(s) if w in self.owner})
    if any(pair in self.heldout_pairs for pair in itertools.combinations(names, 2)):
      return None
    return s

  def _article(self, name: str, out_facts: list, in_facts: list) -> str:
    r, cfg, etype = self.rng, self.cfg, self.ents[name].type
    group = schema.GROUP.get(etype, "thing")
    mentions, used, fillers = [0], set(), []

    def subj() -> str:  # the full name first, sometimes an alias afterwards
      mentions[0] += 1
      return self._surface(name, cfg.alias_prob if mentions[0] > 1 else 0.0)

    def pick(templates: tuple[str, ...]) -> str:  # avoid repeating a template
      used.add(choice := r.choice([t for t in templates if t not in used] or templates))
      return choice

    def filler() -> str | None:  # drawn without replacement, reshuffled when used up
      if not fillers:
        fillers.extend(schema.FILLER[group].split("|") + schema.FILLER["none"].split("|"))
        r.shuffle(fillers)
      a, b = r.sample(schema.ADJ, 2)
      return self._sentence(fillers.pop(), h=subj(), adj=a, adj2=b)

    a, b = r.sample(schema.ADJ, 2)
    sentences = [self._sentence(r.choice(schema.INTRO[group].split("|")), h=subj(), adj=a, adj2=b,
                                noun=schema.NOUN.get(etype, etype))]
    for rel, t in out_facts:
      if r.random() < cfg.fact_keep_prob:
        ts = self._surface(t, 0.2) if t in self.ents else t
        ta = ("an " if t[0] in "aeiou" else "a ") + t
        sentences.append(self._sentence(pick(RELATIONS[rel].forward), h=subj(), t=ts, ta=ta))
    back = []
    for rel, heads in in_facts:
      spec = RELATIONS[rel]
      if spec.listing and len(heads) >= 2:
        chosen = sorted(r.sample(range(len(heads)), min(6, len(heads))))
        hs = _join([self._surface(heads[i], 0.0) for i in chosen])
        back.append(self._sentence(spec.listing, t=subj(), hs=hs))
      else:
        back += [self._sentence(pick(spec.backward), h=self._surface(h, 0.2), t=subj())
                 for h in heads if r.random() < cfg.backward_prob]
    if len(back) > 10:  # keep hub articles (countries, big cities) readable
      back = [back[i] for i in sorted(r.sample(range(len(back)), 10))]
    sentences = [s for s in sentences + back if s]
    # 2-5 paragraphs of near-equal size, padded with filler to 3-8 sentences each.
    k = max(2, min(5, round(len(sentences) / 3.5)))
    bounds = [-(-i * len(sentences) // k) for i in range(k + 1)]  # ceil: intro in the first
    paragraphs = []
    for i in range(k):
      para = sentences[bounds[i]:bounds[i + 1]][:8]
      for _ in range(max(3 - len(para), min(r.randint(1, 3), 8 - len(para)))):
        if s := filler():  # the intro sentence stays first
          para.insert(r.randint(1 if i == 0 and para else 0, len(para)), s)
      paragraphs.append(" ".join(para))
    return "\n\n".join(paragraphs)

  def build(self) -> Encyclopedia:
    cfg, r = self.cfg, self.rng
    total = sum(schema.TYPE_WEIGHTS.values())
    counts = {t: max(4 if t == "country" else 3, round(cfg.num_entities * w / total))
              for t, w in schema.TYPE_WEIGHTS.items() if t != "person"}
    counts["person"] = max(20, cfg.num_entities - sum(counts.values()))
    for etype in ENTITY_TYPES:
      for _ in range(counts[etype]):
        self._add_entity(etype)
    self._build_people(*self._build_places())
    heldout = self._choose_heldout()
    self.heldout_pairs = {p for h, _, t in heldout for p in ((h, t), (t, h))}
    held = set(heldout)
    out_facts: dict[str, list] = {e.name: [] for e in self.entities}
    in_facts: dict[str, dict[str, list[str]]] = {e.name: {} for e in self.entities}
    for h, rel, t in self.triples:
      if (h, rel, t) not in held:
        out_facts[h].append((rel, t))
        if t in self.ents:
          in_facts[t].setdefault(rel, []).append(h)
    order = {rel: i for i, rel in enumerate(RELATIONS)}  # a fixed narrative order
    articles = []
    for ent in self.entities:
      if r.random() >= cfg.skip_article_prob:
        facts = sorted(out_facts[ent.name], key=lambda f: order[f[0]])
        incoming = sorted(in_facts[ent.name].items(), key=lambda f: order[f[0]])
        articles.append((ent.name, self._article(ent.name, facts, incoming)))
    return Encyclopedia(list(self.entities), list(self.triples), heldout, articles)


def generate(config: EncyclopediaConfig = EncyclopediaConfig()) -> Encyclopedia:
  """Builds the whole encyclopedia; a pure function of `config`."""
  return _Builder(config).build()


def write(enc: Encyclopedia, out_dir: str) -> dict[str, int]:
  """Writes corpus.jsonl, kg.tsv, aliases.tsv and heldout_kg.tsv; returns counts."""
  os.makedirs(out_dir, exist_ok=True)

  def dump(fname: str, lines: list[str]) -> int:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    with open(os.path.join(out_dir, fname), "wb") as f:
      f.write(data)
    return len(data)

  corpus_bytes = dump("corpus.jsonl", [json.dumps({"title": t, "text": x}, ensure_ascii=False)
                                       for t, x in enc.articles])
  dump("kg.tsv", ["\t".join(tr) for tr in enc.triples])
  dump("heldout_kg.tsv", ["\t".join(tr) for tr in enc.heldout])
  dump("aliases.tsv", ["\t".join((e.name,) + e.aliases) for e in enc.entities if e.aliases])
  return {"entities": len(enc.entities), "relation_types": len({t[1] for t in enc.triples}),
          "triples": len(enc.triples), "heldout_triples": len(enc.heldout),
          "articles": len(enc.articles),
          "aliased_entities": sum(bool(e.aliases) for e in enc.entities),
          "corpus_bytes": corpus_bytes}


def write_readme(out_dir: str, config: EncyclopediaConfig, counts: dict[str, int]) -> None:
  """Writes README.md (provenance, counts, regenerate command) into `out_dir`."""
  rows = "\n".join(f"| {k} | {v} |" for k, v in counts.items())
  text = f"""# Embedded fictional encyclopedia

Default pre-training data, made by `ernie3_jax/data/encyclopedia.py` (standard library
only, deterministic from the seed). Every name, fact and article is invented: a syllable
grammar makes unique names, a rule-based builder draws a consistent knowledge graph, and
each article states many of its entity's facts with varied templates, mixed with filler.

Config: seed={config.seed}, num_entities={config.num_entities}, \
heldout_fraction={config.heldout_fraction}.

| item | count |
|---|---|
{rows}

- `corpus.jsonl`: one `{{"title": ..., "text": ...}}` per line; paragraphs split by a blank line.
- `kg.tsv`: `head<TAB>relation<TAB>tail`, the complete knowledge graph (tails of
  `birth_year`, `created_in_year`, `founded_in_year`, `occupation`, `genre` are literals).
- `aliases.tsv`: `entity<TAB>alias...` for the entities that have other names.
- `heldout_kg.tsv`: triples of `kg.tsv` that no sentence states (no sentence names both
  ends), for evaluating knowledge completion.

Regenerate (bit-identical):

    python -m ernie3_jax.data.encyclopedia --out_dir=ernie3_jax/data/embedded \\
        --seed={config.seed} --num_entities={config.num_entities}
"""
  with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
    f.write(text)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out_dir", default=DEFAULT_OUT_DIR)
  parser.add_argument("--seed", type=int, default=EncyclopediaConfig.seed)
  parser.add_argument("--num_entities", type=int, default=EncyclopediaConfig.num_entities)
  parser.add_argument("--heldout_fraction", type=float,
                      default=EncyclopediaConfig.heldout_fraction)
  args = parser.parse_args(argv)
  config = EncyclopediaConfig(seed=args.seed, num_entities=args.num_entities,
                              heldout_fraction=args.heldout_fraction)
  counts = write(generate(config), args.out_dir)
  write_readme(args.out_dir, config, counts)
  print(json.dumps(counts))


if __name__ == "__main__":
  main(sys.argv[1:])
