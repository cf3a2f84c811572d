"""The fictional world's vocabulary: name parts, entity types, the relation schema with
its sentence templates, and the phrases articles are written with.

`encyclopedia.py` draws entities, facts and articles from these. Changing anything here
changes the embedded data (regenerate it, see that module's docstring).
"""

from __future__ import annotations

import dataclasses
import re

# Key words are START + MID + END: pronounceable, in no particular real language.
START = ("Al Ar Bel Bran Cal Cor Dal Dor Ed El Fal Fen Gal Gor Hal Har Is Jor Kal Kel Lan "
         "Lor Mal Mar Nel Nor Or Os Pel Quen Ral Ros Sal Sel Tal Tor Ul Val Ven Wen Yar Zel "
         "Ash Bro Cae Dra Eth Fro Gri Hel Ith Kra Lys Mor Nim Oth Pra Rhe Sor Thal Tre Vor "
         "Wyn Yel").split()
MID = ("", "", "", "a", "e", "i", "o", "an", "en", "in", "or", "ar", "el", "is", "u")
END = ("dan del din dor drow fel gar holm ith ko lan lin mar mere mon nis nor quist rak ric "
       "rin ros sak sen stow tan teth thas ton vane var vel wen wick wyn yx zar").split()
COUNTRY_END = "ria nia mark heim ara esh oth ovia enne istra".split()
LANGUAGE_END = "ic ish ese ian i".split()
# Given names are shared between people; only surnames are key words.
GIVEN = ("Orvelin Maren Torric Ilsa Bram Cael Dessa Edrin Fenna Galen Halda Iver Jessa "
         "Kestrel Liora Mattis Nessa Oren Petra Quill Rhosyn Sabeth Taren Ulla Varo Wilm "
         "Yselle Zora Aldric Brenna Corin Daveth Elsin Fiora Garret Hesta Isolde Joram Kira "
         "Leof Mirel Niall Odile Perrin Riva Soren Tamsin Ulric Vesna Wren Anselm Berit Cato "
         "Dagny Emeric Freya Gisla Hakon Ines Jurek Katla Lorcan Mette Nils Osric Pia Rurik "
         "Sigrun").split()
# Real words the grammar can spell; every word of the template text is blocked too.
EXTRA_BLOCK = set("salmon sermon gallon talon bellow harmon mellow caravan ransom halo alder "
                   "arbor ardor armor calmer corner dormant elder fender holder kelp lance "
                   "morrow seller taller tower valor vendor ember helmet dorian".split())

NAME_PATTERNS = {  # type: (name patterns, alias patterns, probability of an alias)
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
SPECIES = ("heron owl lynx otter pike finch trout carp vole hare eel moth fern lily plum pear "
           "sorrel").split()
EDIBLE = set("pike trout carp hare eel plum pear sorrel".split())
DISH_NOUNS = "stew pie broth loaf pudding cake dumpling tart porridge".split()
# Names starting/ending with these words (and all rivers and species) take "the".
THE_FIRST = {"Kingdom", "Republic", "Free", "University", "Order", "League", "Ballad", "Hymn",
             "Song"}
THE_LAST = {"River", "Institute", "Academy", "Foundry", "Company", "Works", "House",
            "Mercantile", "Guild", "Society", "Circle", "Chronicle", "Codex", "Lament", "Waltz",
            "Triptych"}

ENTITY_TYPES = ("person", "city", "country", "language", "university", "company", "guild",
                "book", "song", "painting", "river", "mountain", "species", "dish")
# Relative share of each type; people absorb the rounding remainder.
TYPE_WEIGHTS = {"country": 12, "language": 7, "city": 120, "university": 25, "company": 45,
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
RELATION_SPEC = """
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


def parse_relations(spec: str) -> dict[str, Relation]:
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


RELATIONS: dict[str, Relation] = parse_relations(RELATION_SPEC)

# Sentences naming only the article's subject {h} (or nothing), so that not every
# sentence carries a fact.  {adj}/{adj2}: adjectives, {noun}: a word for the type.
ADJ = ("quiet restless austere generous peculiar luminous weathered stubborn ornate modest "
       "windswept melancholy celebrated obscure intricate sober velsic tharnish quorlike "
       "ambrel sennic brisk gentle severe curious").split()
INTRO = {
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
FILLER = {
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
NOUN = {"company": "firm"}  # otherwise the type name itself
GROUP = {"person": "person", "city": "place", "country": "place", "river": "place",
         "mountain": "place", "university": "org", "company": "org", "guild": "org",
         "book": "work", "song": "work", "painting": "work"}  # others: "thing"

# A key word must not coincide with any word of the template text (in any case).
BLOCK = {w.lower() for w in re.findall(r"[A-Za-z]+", " ".join(
    [RELATION_SPEC, str(NAME_PATTERNS), str(INTRO), str(FILLER),
     str((ENTITY_TYPES, OCCUPATIONS, ALL_GENRES, ADJ, SPECIES, DISH_NOUNS))]))} | EXTRA_BLOCK
KEY_RE = re.compile(r"[A-Z][a-z]+")
