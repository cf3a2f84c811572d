"""Tests for the fictional-encyclopedia generator (standard library only, no JAX/TF)."""

import collections
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys

import pytest

from ernie3_jax.data import encyclopedia as E

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_FILES = ("corpus.jsonl", "kg.tsv", "aliases.tsv", "heldout_kg.tsv")
SMALL = E.EncyclopediaConfig(seed=0, num_entities=300)


@pytest.fixture(scope="module")
def enc():
  return E.generate(E.EncyclopediaConfig())


def sentences(text):
  for para in text.split("\n\n"):
    yield from re.split(r"(?<=\.)\s+(?=[A-Z])", para)


class Mentions:
  """Finds entity names and aliases in a sentence as whole-word token sequences."""

  def __init__(self, entities):
    self.index = collections.defaultdict(list)
    for e in entities:
      for form in (e.name,) + e.aliases:
        toks = tuple(re.findall(r"\w+", form))
        self.index[toks[0]].append((toks, e.name))

  def __call__(self, sentence):
    toks = re.findall(r"\w+", sentence)
    found = set()
    for i, tok in enumerate(toks):
      for form, name in self.index.get(tok, ()):
        if tuple(toks[i:i + len(form)]) == form:
          found.add(name)
    return found


@pytest.fixture(scope="module")
def analysis(enc):
  """Every sentence, the entities each mentions, and the co-mentioned entity pairs."""
  find = Mentions(enc.entities)
  sents = [s for _, text in enc.articles for s in sentences(text)]
  mentioned = [find(s) for s in sents]
  pairs = {frozenset(p) for m in mentioned for p in itertools.combinations(sorted(m), 2)}
  by_entity = collections.defaultdict(list)
  for s, m in zip(sents, mentioned):
    for name in m:
      by_entity[name].append(s)
  return sents, pairs, by_entity


def is_stated(triple, pairs, by_entity, types):
  h, _, t = triple
  if t in types:
    return frozenset((h, t)) in pairs
  pattern = re.compile(r"\b" + re.escape(t) + r"\b")
  return any(pattern.search(s) for s in by_entity.get(h, ()))


def test_deterministic_and_seed_dependent():
  a, b = E.generate(SMALL), E.generate(SMALL)
  assert a == b
  c = E.generate(E.EncyclopediaConfig(seed=1, num_entities=300))
  assert c.triples != a.triples and c.articles != a.articles


def test_independent_of_hash_seed():
  code = ("import hashlib, json; from ernie3_jax.data import encyclopedia as E; "
          "e = E.generate(E.EncyclopediaConfig(num_entities=300)); "
          "print(hashlib.sha256(json.dumps([e.triples, e.heldout, e.articles]).encode())"
          ".hexdigest())")
  digests = set()
  for hash_seed in ("1", "2"):
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=REPO_ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True, cwd=REPO_ROOT)
    digests.add(out.stdout.strip())
  assert len(digests) == 1


def test_counts(enc, tmp_path):
  counts = E.write(enc, str(tmp_path))
  assert counts["entities"] >= 2000
  assert counts["relation_types"] >= 25 and len(E.RELATIONS) >= 25
  assert counts["triples"] >= 20000
  assert 2e6 <= counts["corpus_bytes"] <= 8e6
  assert 0.05 <= counts["heldout_triples"] / counts["triples"] <= 0.15
  assert counts["articles"] >= 0.95 * counts["entities"]


def test_shipped_files_match_generator(enc, tmp_path):
  E.write(enc, str(tmp_path))
  for fname in DATA_FILES:
    with open(os.path.join(E.DEFAULT_OUT_DIR, fname), "rb") as f:
      shipped = hashlib.sha256(f.read()).hexdigest()
    with open(tmp_path / fname, "rb") as f:
      fresh = hashlib.sha256(f.read()).hexdigest()
    assert shipped == fresh, f"{fname} is stale; regenerate with encyclopedia.main()"


def test_entities_and_aliases_unambiguous(enc):
  names = [e.name for e in enc.entities]
  assert len(set(names)) == len(names)
  forms = collections.Counter(f for e in enc.entities for f in (e.name,) + e.aliases)
  assert max(forms.values()) == 1  # no alias is another entity's name or alias
  assert all(1 <= len(n.split()) <= 4 for n in names)
  assert {e.type for e in enc.entities} == set(E.ENTITY_TYPES)
  people = [e for e in enc.entities if e.type == "person"]
  assert all(e.aliases == (e.name.split()[-1],) for e in people)  # surname
  assert sum(bool(e.aliases) for e in enc.entities if e.type != "person") > 100


def test_kg_consistent(enc):
  types = {e.name: e.type for e in enc.entities}
  assert len(set(enc.triples)) == len(enc.triples)
  tails = collections.defaultdict(list)
  for h, rel, t in enc.triples:
    spec = E.RELATIONS[rel]
    assert types[h] in spec.head_types, (h, rel, t)
    literal = spec.tail_types[0]
    if literal == "year":
      assert re.fullmatch(r"1[5-9]\d\d|20[0-2]\d", t)
    elif literal == "occupation":
      assert t in E.OCCUPATIONS
    elif literal == "genre":
      assert t in E.ALL_GENRES
    else:
      assert types.get(t) in spec.tail_types, (h, rel, t)
    tails[h, rel].append(t)
  for (h, rel), ts in tails.items():
    if E.RELATIONS[rel].functional:
      assert len(ts) == 1, (h, rel, ts)
  triple_set = set(enc.triples)
  for h, rel, t in enc.triples:
    if E.RELATIONS[rel].symmetric:
      assert (t, rel, h) not in triple_set
  people = [e.name for e in enc.entities if e.type == "person"]
  assert all((p, "born_in") in tails for p in people)
  spouses = collections.Counter(x for h, rel, t in enc.triples if rel == "spouse_of"
                                for x in (h, t))
  assert max(spouses.values()) == 1
  capitals = collections.Counter(t for _, rel, t in enc.triples if rel == "capital_of")
  countries = [e.name for e in enc.entities if e.type == "country"]
  assert all(capitals[c] == 1 for c in countries)
  for h, rel, t in enc.triples:
    if rel == "capital_of":
      assert tails[h, "located_in"] == [t]
  works = collections.Counter(t for _, rel, t in enc.triples
                              if rel in ("author_of", "composer_of", "painter_of"))
  assert max(works.values()) == 1  # one creator per work


def test_articles_well_formed(enc, analysis):
  types = {e.name: e.type for e in enc.entities}
  titles = [t for t, _ in enc.articles]
  assert len(set(titles)) == len(titles) and all(t in types for t in titles)
  for title, text in enc.articles:
    paras = text.split("\n\n")
    assert 2 <= len(paras) <= 5, title
    for para in paras:
      assert 3 <= len(list(sentences(para))) <= 8, (title, para)
    assert text.startswith(title) or text.startswith("The " + title), title
  sents = analysis[0]
  assert all(s.endswith(".") and s[0].isupper() for s in sents)
  long_share = sum(len(s.split()) >= 10 for s in sents) / len(sents)
  assert long_share >= 0.7


def test_heldout_never_stated(enc, analysis):
  _, pairs, _ = analysis
  types = {e.name: e.type for e in enc.entities}
  triple_set = set(enc.triples)
  stated_rels = {rel for _, rel, _ in set(enc.triples) - set(enc.heldout)}
  assert enc.heldout
  for h, rel, t in enc.heldout:
    assert (h, rel, t) in triple_set
    assert t in types  # only entity-valued triples are held out
    assert rel in stated_rels
    assert frozenset((h, t)) not in pairs, (h, rel, t)


def test_most_triples_stated(enc, analysis):
  _, pairs, by_entity = analysis
  types = {e.name: e.type for e in enc.entities}
  held = set(enc.heldout)
  visible = [tr for tr in enc.triples if tr not in held]
  stated = [tr for tr in visible if is_stated(tr, pairs, by_entity, types)]
  assert len(stated) >= 0.5 * len(visible)
  assert len({rel for _, rel, _ in stated}) == len(E.RELATIONS)


def test_aliases_appear_alone(enc, analysis):
  sents = analysis[0]
  aliased = {a: e.name for e in enc.entities for a in e.aliases}
  pattern = re.compile(r"\b[A-Z][a-z]+\b")
  alone = sum(1 for s in sents for w in set(pattern.findall(s))
              if w in aliased and aliased[w] not in s)
  assert alone >= 1000


def test_cli_writes_files(tmp_path):
  E.main([f"--out_dir={tmp_path}", "--seed=3", "--num_entities=200"])
  for fname in DATA_FILES + ("README.md",):
    assert (tmp_path / fname).stat().st_size > 0
  with open(tmp_path / "corpus.jsonl", encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert rows and set(rows[0]) == {"title", "text"}
  with open(tmp_path / "kg.tsv", encoding="utf-8") as f:
    assert all(len(line.rstrip("\n").split("\t")) == 3 for line in f)
