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

DEFAULT_OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded")

# Key words are START + MID + END: pronounceable, in no particular real language.
_START = ("Al Ar Bel Bran Cal Cor Dal Dor Ed El Fal Fen Gal Gor Hal Har Is Jor Kal Kel Lan "
          "Lor Mal Mar Nel Nor Or Os Pel Quen Ral Ros Sal Sel Tal Tor Ul Val Ven Wen Yar Zel "
          "Ash Bro Cae Dra Eth Fro Gri Hel Ith Kra Lys Mor Nim Oth Pra Rhe Sor Thal Tre Vor "
          "Wyn Yel").split()
_MID = ("", "", "", "a", "e", "i", "o", "an", "en", "in", "or", "ar", "el", "is", "u")
_END = ("dan del din dor drow fel gar holm ith ko lan lin mar mere mon nis nor quist rak ric "
        "rin ros sak sen stow tan teth thas ton vane var vel wen wick wyn yx zar").split()
_COUNTRY_END = "ria nia mark heim ara esh oth ovia enne istra".split()
_LANGUAGE_END = "ic ish ese ian i".split()
# Given names are shared between people; only surnames are key words.
_GIVEN = ("Orvelin Maren Torric Ilsa Bram Cael Dessa Edrin Fenna Galen Halda Iver Jessa "
          "Kestrel Liora Mattis Nessa Oren Petra Quill Rhosyn Sabeth Taren Ulla Varo Wilm "
          "Yselle Zora Aldric Brenna Corin Daveth Elsin Fiora Garret Hesta Isolde Joram Kira "
          "Leof Mirel Niall Odile Perrin Riva Soren Tamsin Ulric Vesna Wren Anselm Berit Cato "
          "Dagny Emeric Freya Gisla Hakon Ines Jurek Katla Lorcan Mette Nils Osric Pia Rurik "
          "Sigrun").split()
# Real words the grammar can spell; every word of the template text is blocked too.
_EXTRA_BLOCK = set("salmon sermon gallon talon bellow harmon mellow caravan ransom halo alder "
                   "arbor ardor armor calmer corner dormant elder fender holder kelp lance "
                   "morrow seller taller tower valor vendor ember helmet dorian".split())

_NAME_PATTERNS = {  # type: (name patterns, alias patterns, probability of an alias)
    "country": ("{w}", "Kingdom of {w}|Republic of {w}|Free State of {w}", 0.3),
    "language": ("{w}", "", 0.0),
    "city": ("{w}|{w}|{w}|{w}|{w}|Port {w}|{w} Ford|{w} Bridge", "{w}", 0.5),
    "university": ("{w} Institute|University of {w}|{w} Academy|{w} College", "{w}", 0.6),
    "company": ("{w} Foundry|{w} Trading Company|{w} Works|{w} Printing House|{w} Mercantile",
                "{w}", 0.5),
    "guild": ("{w} Guild|Order of {w}|{w} Society|League of {w}|{w} Circle", "{w}", 0.4),
    "book": ("{w} Chronicle|Letters from {w}|Songs of {w}|{w}|Winter in {w}|Journey to {w}"
             "|{w} Codex", "", 0.0),
    "song": ("Ballad of {w}|{w} Lament|{w} Waltz|Hymn to {w}|Song of {w}", "", 0.0),
    "painting": ("{w} at Dusk|View of {w}|{w} Triptych|Portrait of {w}|Morning over {w}", "",
                 0.0),
    "river": ("{w} River", "{w}", 0.5),
    "mountain": ("Mount {w}|{w} Peak|Mount {w}", "{w}", 0.4),
    "species": ("{w} {n}", "", 0.0),
    "dish": ("{w} {n}", "", 0.0),
}
_SPECIES = ("heron owl lynx otter pike finch trout carp vole hare eel moth fern lily plum pear "
            "sorrel").split()
_EDIBLE = set("pike trout carp hare eel plum pear sorrel".split())
_DISH_NOUNS = "stew pie broth loaf pudding cake dumpling tart porridge".split()
# Names starting/ending with these words (and all rivers and species) take "the".
_THE_FIRST = {"Kingdom", "Republic", "Free", "University", "Order", "League", "Ballad", "Hymn",
              "Song"}
_THE_LAST = {"River", "Institute", "Academy", "Foundry", "Company", "Works", "House",
             "Mercantile", "Guild", "Society", "Circle", "Chronicle", "Codex", "Lament", "Waltz",
             "Triptych"}

ENTITY_TYPES = ("person", "city", "country", "language", "university", "company", "guild",
                "book", "song", "painting", "river", "mountain", "species", "dish")
# Relative share of each type; people absorb the rounding remainder.
_TYPE_WEIGHTS = {"country": 12, "language": 7, "city": 120, "university": 25, "company": 45,
                 "guild": 25, "book": 85, "song": 50, "painting": 45, "river": 25,
                 "mountain": 30, "species": 40, "dish": 30, "person": 470}
TYPE_GROUPS = {"org": ("university", "company", "guild"), "work": ("book", "song", "painting"),
               "place": ("city", "river", "mountain")}
LITERAL_TYPES = ("year", "occupation", "genre")
OCCUPATIONS_BY_WORK = {"book": ("novelist", "poet", "historian", "essayist"),
                       "song": ("composer", "singer", "organist"),
                       "painting": ("painter", "engraver", "illustrator")}
OCCUPATIONS = tuple(sorted({o for v in OCCUPATIONS_BY_WORK.values() for o in v} | set(
    "cartographer astronomer merchant physician architect judge shipwright botanist diplomat "
    "mathematician clockmaker engineer teacher apothecary surveyor weaver".split())))
GENRES = {"book": ("historical novel", "epic poem", "travel memoir", "philosophical treatise",
                   "comic novel", "verse drama", "collection of essays", "adventure story"),
          "song": ("folk ballad", "lullaby", "drinking song", "hymn", "lament", "march",
                   "serenade"),
          "painting": ("landscape", "portrait", "still life", "allegory", "seascape",
                       "genre scene")}
ALL_GENRES = tuple(sorted({g for v in GENRES.values() for g in v}))

# Relations.  Header: "name: head types -> tail types [flags] * list template"
# (flags: f = one tail per head, s = symmetric and stored once; the list template
# names several heads in the tail's article).  "+" lines hold templates for the
# head's article, "-" lines for the tail's article, separated by " | ".
# Slots: {h} head, {t} tail, {ta} tail with "a"/"an", {hs} a list of heads.
_RELATION_SPEC = """
born_in: person -> city [f] * Notable people born in {t} include {hs}
+ {h} was born in {t}, near the old market square | Born in {t}, {h} grew up among its lanes
+ {t} is the birthplace of {h}, who returned there often in later years
- Among those born in {t} was {h}, whose name still appears on a street sign
birth_year: person -> year [f]
+ {h} was born in {t}, a hard year of floods | Parish records give {t} as the birth year of {h}
+ The year {t} saw the birth of {h}, according to most surviving accounts
citizen_of: person -> country [f] * Well known citizens of {t} include {hs}
+ {h} was a citizen of {t} by birth and by choice | {h} held the citizenship of {t} all life long
+ As a citizen of {t}, {h} was called upon to serve on several public commissions
- {t} counts {h} among the most celebrated of its citizens
occupation: person -> occupation [f]
+ {h} worked as {ta} for most of a long career | {h} is best remembered as {ta} of rare skill
+ As {ta}, {h} earned a reputation that reached well beyond the home region
speaks: person -> language [] * Well known speakers of {t} include {hs}
+ {h} spoke {t} fluently and wrote letters in it | {h} was a fluent speaker of {t} from childhood
+ Besides other tongues, {h} could speak {t} with ease and some elegance
- {t} was among the languages that {h} spoke with ease and elegance
educated_at: person -> university [f] * Former students of {t} include {hs}
+ {h} studied history and geometry at {t} | {h} graduated from {t} with some distinction
+ {h} was educated at {t}, an experience later described as formative
- {h} is counted among the most distinguished graduates of {t}
student_of: person -> person []
+ {h} was a student of {t} for several years | As a young pupil, {h} studied under {t}
+ {h} learned the craft as a student of {t}, later surpassing the teacher in fame
- {t} taught {h}, the most famous of all the pupils | Among the students of {t} was {h}
parent_of: person -> person []
+ {h} was the parent of {t}, a lively child | {t} was a child of {h} and grew up among books
+ Among the children of {h} was {t}, who later became well known in their own right
- {t} was born to {h}, who encouraged every early interest of the child
spouse_of: person -> person [fs]
+ {h} was married to {t} for many happy years | {h} and {t} were married in a small ceremony
+ The marriage of {h} to {t} was, by all accounts, a happy and equal one
- {t} married {h} in a small ceremony attended by close friends and family
influenced_by: person -> person []
+ {h} was deeply influenced by the ideas of {t} | {h} often acknowledged a debt to {t} in letters
+ The influence of {t} on {h} is visible in almost every surviving work
- {t} influenced {h}, among many younger figures | The work of {t} had a deep influence on {h}
lived_in: person -> city [] * Residents of {t} over the years have included {hs}
+ {h} lived for some years in {t}, above a bakery | For a time {h} made a home in {t} near the docks
+ {h} settled in {t} and came to know its streets and alleys intimately
- {h} lived in {t} for a number of years and wrote fondly of the city
died_in: person -> city [f]
+ {h} died in {t} after a long and painful illness | {h} passed away in {t} and was buried there
+ In {t}, where {h} died, a small library keeps a collection of personal letters
- {t} is also where {h} died, and a simple stone there marks the grave
employed_by: person -> company [f] * Over the years {t} has employed {hs}, among many others
+ {h} was employed by {t} for many busy years | For a long period {h} kept the accounts of {t}
+ {t} employed {h} during the busiest decade of its long history
- Among the staff of {t} was {h}, who served the firm with great loyalty
member_of: person -> guild [] * Prominent members of {t} have included {hs}
+ {h} was a loyal member of {t} for decades | {h} joined {t} and remained a member for life
+ Membership of {t} gave {h} access to a wide circle of patrons and collaborators
- {h} was one of the most active members of {t} in its early decades
author_of: person -> book []
+ {h} wrote {t}, a book that found many readers | {h} is the author of {t}, often reprinted since
+ Among the books written by {h}, perhaps the best known is {t}
- {t} was written by {h}, who worked on the manuscript for several years
- The author of {t} was {h}, then still unknown | Written by {h}, {t} was an instant success
composer_of: person -> song []
+ {h} composed {t}, still sung at village fairs | {h} is credited as the composer of {t}
+ Among the pieces composed by {h} is {t}, written for a small ensemble
- {t} was composed by {h} for a crowded hall | The composer of {t} was {h}, who revised it twice
painter_of: person -> painting []
+ {h} painted {t}, admired for its strange colours | {h} is the painter of {t}, now in private hands
+ Among the works painted by {h} is {t}, completed after months of labour
- {t} was painted by {h} in a single summer | The painter of {t} was {h}, who signed it in a corner
created_in_year: work -> year [f]
+ {h} was completed in {t}, after years of revision | {h} first appeared in {t} to a curious public
+ {h} dates from {t}, according to the earliest surviving catalogue
genre: work -> genre [f]
+ {h} is usually described as {ta} by critics | As {ta}, {h} was considered unusual for its time
+ {h} is generally classified as {ta} by librarians and scholars alike
written_in: book song -> language [f] * Works written in {t} include {hs}
+ {h} was written in {t} and translated much later | The original text of {h} is written in {t}
+ Composed in {t}, {h} makes playful use of its old idioms and proverbs
- {h} is one of the best known works ever written in {t}
published_by: book -> company [f] * Books published by {t} include {hs}
+ {h} was first published by {t} in cloth | {t} published {h}, which sold steadily for years
+ The first edition of {h} was issued by {t}, whose printers worked through the night
- {t} published {h}, one of the most successful titles in its catalogue
depicts: painting -> place []
+ {h} depicts {t} in the pale light of morning | The subject of {h} is {t}, seen from a hillside
+ {h} shows {t} under a heavy sky, with small figures in the foreground
- {t} is depicted in {h}, a much copied image | {t} appears in the painting {h}, rendered with care
located_in: city -> country [f] * Cities in {t} include {hs}
+ {h} is a city in {t}, set above a fertile plain | {h} lies in {t}, close to several trade roads
+ Located in {t}, {h} has long been known for its crafts and its fairs
- {h} is one of the older cities of {t}, with walls dating back centuries
capital_of: city -> country [f]
+ {h} is the capital and seat of government of {t} | As the capital of {t}, {h} hosts its courts
+ {h} became the capital of {t} after a long dispute between rival towns
- The capital of {t} is {h}, its busiest city | {t} is governed from {h}, its old capital
official_language: country -> language [f] * {t} is official in several countries, including {hs}
+ {h} uses {t} as its official language in law | {t} is the official language of {h}, used in courts
+ In {h}, {t} has official status and appears on all public notices
- {t} serves as the official language of {h}, where it is used in all courts
borders: country -> country [s]
+ {h} shares a border with {t}, marked by cairns | {h} borders {t}, and trade across it is brisk
+ The frontier between {h} and {t} follows a line of low hills
- {t} shares a long and peaceful border with {h}, crossed by several roads
founded_by: org -> person [f]
+ {h} was founded by {t}, who drafted its charter | {t} founded {h} with a handful of companions
+ The founder of {h} was {t}, whose portrait still hangs in its main hall
- {t} founded {h}, as histories of the period recall | {t} is remembered as the founder of {h}
founded_in_year: org -> year [f]
+ {h} was founded in {t}, in a period of growth | The year {t} marks the foundation of {h}
+ Established in {t}, {h} soon attracted attention far beyond its home town
based_in: org -> city [f] * Institutions based in {t} include {hs}
+ {h} is based in {t}, close to the main square | {t} is home to {h} and its busy offices
+ From its headquarters in {t}, {h} manages affairs across the whole region
- {t} is home to {h}, one of the best known institutions in the city
led_by: org -> person [f]
+ {h} was led for many years by {t}, a reformer | Under the leadership of {t}, {h} grew quickly
+ {t} served as the head of {h} and reformed many of its customs
- {t} led {h} for many years of expansion | As head of {h}, {t} reformed its finances and customs
flows_through: river -> country [] * Rivers flowing through {t} include {hs}
+ {h} flows through {t}, watering fields of grain | The course of {h} runs through {t} for miles
+ Through {t}, {h} winds slowly between reed beds and low hills
- {h} is one of the principal rivers of {t}, and boats still use it for trade
flows_past: river -> city []
+ {h} flows past {t}, under old stone bridges | {t} stands on the banks of {h}, which often floods
+ Downstream, {h} passes {t} and widens into a broad, slow channel
- {t} lies on {h}, and the river has shaped much of the history of the city
lies_in: mountain -> country [f] * Mountains of {t} include {hs}
+ {h} is a mountain in {t}, popular with walkers | {h} rises in {t}, above the surrounding valleys
+ Located in {t}, {h} has been climbed by many expeditions over the years
- {h} is one of the notable mountains of {t}, visible from a great distance
native_to: species -> country [] * Species native to {t} include {hs}
+ {h} is native to {t}, common in damp woodland | {h} occurs naturally in {t}, along quiet streams
+ In {t}, {h} is a familiar sight in gardens, hedgerows and fields
- {h} is native to {t} and appears in many of its local stories
originates_from: dish -> city [f] * Dishes from {t} include {hs}
+ {h} originates from {t}, served at every festival | {h} was first prepared in {t}, locals say
+ The home of {h} is {t}, whose cooks guard the recipe jealously
- {t} is famous for {h}, a dish served at almost every festival
made_with: dish -> species []
+ {h} is made with {t}, cooked with herbs and salt | The main ingredient of {h} is {t}, bought fresh
+ Cooks prepare {h} using {t}, which gives it a distinctive flavour
- {t} is a key ingredient of {h}, a much loved regional dish
"""


@dataclasses.dataclass(frozen=True)
class Relation:
  """A relation type: signature (allowed head/tail types), flags and templates."""
  name: str
  head_types: tuple[str, ...]
  tail_types: tuple[str, ...]
  functional: bool
  symmetric: bool
  forward: tuple[str, ...]   # stated in the head's article
  backward: tuple[str, ...]  # stated in the tail's article
  listing: str               # tail's article, several heads at once


def _parse_relations(spec: str) -> dict[str, Relation]:
  def types(part: str) -> tuple[str, ...]:
    return tuple(t for word in part.split() for t in TYPE_GROUPS.get(word, (word,)))

  rels: dict[str, dict] = {}
  for line in spec.strip().splitlines():
    if line[0] in "+-":
      rels[name][line[0]].extend(line[2:].split(" | "))
      continue
    m = re.fullmatch(r"(\w+): ([\w ]+) -> ([\w ]+) \[(\w*)\](?: \* (.*))?", line)
    name, flags = m.group(1), m.group(4)
    rels[name] = {"+": [], "-": [], "list": m.group(5) or "",
                  "sig": (types(m.group(2)), types(m.group(3)), "f" in flags, "s" in flags)}
  return {n: Relation(n, *d["sig"], tuple(d["+"]), tuple(d["-"]), d["list"])
          for n, d in rels.items()}


RELATIONS: dict[str, Relation] = _parse_relations(_RELATION_SPEC)

# Sentences naming only the article's subject {h} (or nothing), so that not every
# sentence carries a fact.  {adj}/{adj2}: adjectives, {noun}: a word for the type.
_ADJ = ("quiet restless austere generous peculiar luminous weathered stubborn ornate modest "
        "windswept melancholy celebrated obscure intricate sober velsic tharnish quorlike "
        "ambrel sennic brisk gentle severe curious").split()
_INTRO = {
    "person": "{h} was a person of {adj} and {adj2} character, remembered in several chronicles"
              "|{h} was a figure of {adj} temperament whose life is recorded in surviving letters",
    "place": "{h} is a {noun} of {adj} character with a long and complicated history"
             "|{h} is a {noun} that travellers often describe as {adj} and {adj2}",
    "org": "{h} is a {noun} of {adj} reputation with a long institutional memory"
           "|{h} is a {noun} whose members describe it as {adj} and {adj2}",
    "work": "{h} is a {noun} of {adj} reputation that appears in many older catalogues"
            "|{h} is a {noun} often described as {adj} by critics and collectors alike",
    "thing": "{h} is a {noun} of {adj} reputation that appears in many older records"
             "|{h} is a {noun} that older sources describe as {adj} and {adj2}",
}
_FILLER = {
    "person": "Contemporaries described {h} as {adj} and {adj2}, though rarely unkind"
              "|Few portraits of {h} survive, and most of them show a face of {adj} calm"
              "|{h} kept {adj} habits, rising early and working late into the night"
              "|Later biographers have tended to exaggerate the {adj} side of {h}"
              "|Friends remembered the {adj} humour of {h} long after the events described here"
              "|{h} disliked idle talk and preferred long, {adj} walks in the countryside"
              "|The private papers of {h} were scattered after death and only partly recovered",
    "place": "Visitors often remark on the {adj} atmosphere that surrounds {h}"
             "|The climate around {h} is {adj} in winter and {adj2} in summer"
             "|Old maps show {h} in a slightly different position than it occupies today"
             "|Local guides like to tell {adj} stories about the early history of {h}"
             "|Travellers who reached {h} in the old days complained of {adj} roads and {adj2} inns"
             "|The light around {h} has been praised as {adj} by more than one landscape painter",
    "org": "The archives of {h} are kept in {adj} oak cabinets and are rarely opened"
           "|People associated with {h} describe its culture as {adj} and {adj2}"
           "|The early finances of {h} were precarious, and it nearly closed more than once"
           "|{h} has an old motto that few of its own members can translate"
           "|The buildings used by {h} have been rebuilt several times after fires and floods",
    "work": "Critics have called {h} {adj}, while admirers prefer the word {adj2}"
            "|Several {adj} anecdotes about {h} circulate, most of them impossible to verify"
            "|The reputation of {h} has risen and fallen with the fashions of each generation"
            "|Early audiences found {h} {adj}, but later generations came to admire it"
            "|Scholars have written at length about the {adj} structure of {h}",
    "thing": "Little is known about the {adj} early history of {h}"
             "|Opinions about {h} are divided, with some calling it {adj} and others {adj2}"
             "|{h} is mentioned in several old almanacs, usually with {adj} remarks"
             "|Accounts of {h} from earlier centuries are {adj} and not always reliable"
             "|{h} has become something of a local emblem in recent decades",
    "none": "Sources from this period are scarce and often contradict one another"
            "|Much of what follows is drawn from letters, ledgers and parish records"
            "|Historians continue to debate how much of the traditional account can be trusted"
            "|The surviving documents are fragmentary, and several dates remain uncertain"
            "|A number of later legends have grown up around these events"
            "|Not every detail of the older accounts can be confirmed from independent sources",
}
_NOUN = {"company": "firm"}  # otherwise the type name itself
_GROUP = {"person": "person", "city": "place", "country": "place", "river": "place",
          "mountain": "place", "university": "org", "company": "org", "guild": "org",
          "book": "work", "song": "work", "painting": "work"}  # others: "thing"

# A key word must not coincide with any word of the template text (in any case).
_BLOCK = {w.lower() for w in re.findall(r"[A-Za-z]+", " ".join(
    [_RELATION_SPEC, str(_NAME_PATTERNS), str(_INTRO), str(_FILLER),
     str((ENTITY_TYPES, OCCUPATIONS, ALL_GENRES, _ADJ, _SPECIES, _DISH_NOUNS))]))} | _EXTRA_BLOCK
_KEY_RE = re.compile(r"[A-Z][a-z]+")


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
    self.used: set[str] = set(_GIVEN)
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
      w = r.choice(_START) + r.choice(_MID) + r.choice(ends)
      # Reject clumsy spellings (4 consonants in a row, doubled vowels) and clashes.
      if (4 <= len(w) <= 11 and w not in self.used and w.lower() not in _BLOCK
          and not re.search(r"[^aeiouy]{4}|aa|ee|ii|oo|uu", w.lower())):
        self.used.add(w)
        return w

  def _add_entity(self, etype: str) -> None:
    r = self.rng
    w = self._word({"country": _COUNTRY_END, "language": _LANGUAGE_END}.get(etype, _END))
    if etype == "person":
      given = r.sample(_GIVEN, 2)
      name = f"{given[0]} {given[1]} {w}" if r.random() < 0.15 else f"{given[0]} {w}"
      aliases = (w,)
    else:
      patterns, alias_patterns, alias_p = _NAME_PATTERNS[etype]
      noun = r.choice({"species": _SPECIES, "dish": _DISH_NOUNS}.get(etype, [""]))
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
    edible = [s for s in T["species"] if self.noun[s] in _EDIBLE]
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
        ent.type != "person" and (words[0] in _THE_FIRST or words[-1] in _THE_LAST)):
      return "the " + form
    return form

  def _sentence(self, template: str, **slots: str) -> str | None:
    """Fills a template; None if it would name both ends of a held-out triple."""
    s = template.format(**slots)
    s = s[0].upper() + s[1:] + "."
    # Key words over-approximate mentions: every name and alias contains one.
    names = sorted({self.owner[w] for w in _KEY_RE.findall(s) if w in self.owner})
    if any(pair in self.heldout_pairs for pair in itertools.combinations(names, 2)):
      return None
    return s

  def _article(self, name: str, out_facts: list, in_facts: list) -> str:
    r, cfg, etype = self.rng, self.cfg, self.ents[name].type
    group = _GROUP.get(etype, "thing")
    mentions, used, fillers = [0], set(), []

    def subj() -> str:  # the full name first, sometimes an alias afterwards
      mentions[0] += 1
      return self._surface(name, cfg.alias_prob if mentions[0] > 1 else 0.0)

    def pick(templates: tuple[str, ...]) -> str:  # avoid repeating a template
      used.add(choice := r.choice([t for t in templates if t not in used] or templates))
      return choice

    def filler() -> str | None:  # drawn without replacement, reshuffled when used up
      if not fillers:
        fillers.extend(_FILLER[group].split("|") + _FILLER["none"].split("|"))
        r.shuffle(fillers)
      a, b = r.sample(_ADJ, 2)
      return self._sentence(fillers.pop(), h=subj(), adj=a, adj2=b)

    a, b = r.sample(_ADJ, 2)
    sentences = [self._sentence(r.choice(_INTRO[group].split("|")), h=subj(), adj=a, adj2=b,
                                noun=_NOUN.get(etype, etype))]
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
    total = sum(_TYPE_WEIGHTS.values())
    counts = {t: max(4 if t == "country" else 3, round(cfg.num_entities * w / total))
              for t, w in _TYPE_WEIGHTS.items() if t != "person"}
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
