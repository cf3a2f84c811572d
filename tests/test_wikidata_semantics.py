"""Wikidata's statement semantics in the KG: ranks, ending qualifiers, duplicates, `mul`
labels and pre-2016 `numeric-id` values, each decision counted in the report.

The entities are written line by line as the JSON dump (`latest-all.json`) holds them:
statements with `mainsnak`, `type`, `id`, `rank`, `qualifiers`, `qualifiers-order` and
`references`; snaks with `snaktype`, `property`, `hash`, `datavalue` and `datatype`.
Karlsruhe's country (P17) and head of government (P6) follow the item's real structure
(a preferred current value beside normal-rank historical ones with start and end
times); the mayors' ids and the snak hashes are placeholders.
"""

import hashlib
import json

import pytest

from ernie3_jax.data import wikidata

GREGORIAN = "http://www.wikidata.org/entity/Q1985727"


def _hash(*parts) -> str:
  return hashlib.sha1(json.dumps(parts).encode()).hexdigest()


def item_value(qid: str, pre_2016: bool = False) -> dict:
  """A wikibase-entityid datavalue; before 2016 the dump held only the numeric id."""
  value = {"entity-type": "item", "numeric-id": int(qid[1:])}
  if not pre_2016:
    value["id"] = qid
  return {"value": value, "type": "wikibase-entityid"}


def time_snak(prop: str, date: str | None) -> dict:
  """A time qualifier snak; date None is `novalue` ("there is none")."""
  if date is None:
    return {"snaktype": "novalue", "property": prop, "hash": _hash(prop), "datatype": "time"}
  return {"snaktype": "value", "property": prop, "hash": _hash(prop, date),
          "datavalue": {"value": {"time": f"+{date}T00:00:00Z", "timezone": 0, "before": 0,
                                  "after": 0, "precision": 11, "calendarmodel": GREGORIAN},
                        "type": "time"},
          "datatype": "time"}


def statement(subject: str, prop: str, target: str, rank: str = "normal",
              start: str | None = None, end: str | bool | None = False,
              pre_2016: bool = False, n: int = 0) -> dict:
  """A statement; end False: no P582 qualifier, None: P582 `novalue`, a date: ended."""
  qualifiers = {}
  if start:
    qualifiers["P580"] = [time_snak("P580", start)]
  if end is not False:
    qualifiers["P582"] = [time_snak("P582", end)]
  claim = {"mainsnak": {"snaktype": "value", "property": prop,
                        "hash": _hash(prop, target, n), "datavalue": item_value(target, pre_2016),
                        "datatype": "wikibase-item"},
           "type": "statement", "id": f"{subject}${_hash(subject, prop, target, n)[:8]}-x",
           "rank": rank,
           "references": [{"hash": _hash("ref", n), "snaks": {"P143": [{
               "snaktype": "value", "property": "P143", "hash": _hash("P143"),
               "datavalue": item_value("Q48183"), "datatype": "wikibase-item"}]},
                           "snaks-order": ["P143"]}]}
  if qualifiers:
    claim["qualifiers"] = qualifiers
    claim["qualifiers-order"] = list(qualifiers)
  return claim


def item(qid: str, title: str | None, labels: dict, claims: dict | None = None,
         aliases: dict | None = None, sitelinks: tuple = ("enwiki", "dewiki")) -> dict:
  return {"type": "item", "id": qid,
          "labels": {lang: {"language": lang, "value": v} for lang, v in labels.items()},
          "descriptions": {},
          "aliases": {lang: [{"language": lang, "value": v} for v in values]
                      for lang, values in (aliases or {}).items()},
          "claims": claims or {},
          "sitelinks": {} if title is None else {
              site: {"site": site, "title": title, "badges": []} for site in sitelinks},
          "lastrevid": 2000000000}


def prop(pid: str, labels: dict) -> dict:
  return {"type": "property", "datatype": "wikibase-item", "id": pid,
          "labels": {lang: {"language": lang, "value": v} for lang, v in labels.items()},
          "descriptions": {}, "aliases": {}, "claims": {}, "lastrevid": 2000000000}


K = "Q1040"  # Karlsruhe
KARLSRUHE = item(K, "Karlsruhe", {"en": "Karlsruhe", "de": "Karlsruhe"}, {
    "P17": [  # country
        statement(K, "P17", "Q183", "preferred", start="1990-10-03", n=0),  # Germany
        statement(K, "P17", "Q43287", start="1871-01-18", end="1918-11-09", n=1),  # Empire
        statement(K, "P17", "Q41304", start="1918-11-09", end="1933-03-23", n=2),  # Weimar
        statement(K, "P17", "Q183", start="1949-05-23", n=3),  # Germany again, normal rank
        statement(K, "P17", "Q7318", "deprecated", n=4),  # a wrong value, kept deprecated
    ],
    "P6": [  # head of government: the current mayor (preferred) and two former ones
        statement(K, "P6", "Q90001", "preferred", start="2013-03-01", end=None, n=0),
        statement(K, "P6", "Q90002", start="1998-03-01", end="2013-03-01", n=1),
        statement(K, "P6", "Q90003", start="1986-03-01", end="1998-03-01", n=2),
    ],
    "P31": [  # instance of: the same class twice (two sources), both normal rank
        statement(K, "P31", "Q1549591", n=0), statement(K, "P31", "Q1549591", n=1),
    ],
    "P131": [  # located in: written before 2016, the value has no "id"
        statement(K, "P131", "Q8165", pre_2016=True, n=0),
    ],
})
ENTITIES = [
    KARLSRUHE,
    item("Q183", "Germany", {"en": "Germany"}, aliases={"en": ["FRG"]}),
    item("Q43287", "German Empire", {"en": "German Empire"}),
    item("Q41304", "Weimar Republic", {"en": "Weimar Republic"}),
    item("Q7318", "Nazi Germany", {"en": "Nazi Germany"}),
    item("Q1549591", "Big city", {"en": "big city"}),
    item("Q8165", "Karlsruhe (region)", {"en": "Karlsruhe Government Region"}),
    # Current dumps give people one language-independent `mul` label.
    item("Q90001", "Frank Mentrup", {"mul": "Frank Mentrup"}, aliases={"mul": ["F. Mentrup"]}),
    item("Q90002", "Heinz Fenrich", {"mul": "Heinz Fenrich", "en": "Heinz Fenrich"}),
    item("Q90003", "Gerhard Seiler", {"de": "Gerhard Seiler"}),
    prop("P17", {"en": "country"}), prop("P6", {"en": "head of government"}),
    prop("P31", {"en": "instance of"}), prop("P131", {"mul": "located in"}),
]


def dump_text(entities) -> str:
  """The dump's layout: "[", one entity per line followed by ",", then "]"."""
  lines = [json.dumps(e, ensure_ascii=False) for e in entities]
  return "[\n" + ",\n".join(lines) + "\n]\n"


def _read(entity, rules=wikidata.Rules("en")):
  events = list(wikidata.read_item(entity, rules))
  (kept,) = [v for t, v in events if t == "item"]
  counts = {}
  for tag, value in events:
    if tag == wikidata.COUNT:
      counts[value] = counts.get(value, 0) + 1
  return kept, counts


def test_the_dump_text_parses_line_by_line(tmp_path):
  path = tmp_path / "latest-all.json"
  path.write_text(dump_text(ENTITIES))
  parsed = [wikidata.parse_entity(line, f"{path}:{n}") for n, line in wikidata.dump_lines(str(path))]
  assert [e["id"] for e in parsed if e] == [e["id"] for e in ENTITIES]


def test_current_facts_only_by_default_preferred_wins_and_deprecated_is_dropped():
  kept, counts = _read(KARLSRUHE)
  p17 = [t for p, t in kept.statements if p == "P17"]
  p6 = [t for p, t in kept.statements if p == "P6"]
  assert p17 == ["Q183"]  # not the Empire, Weimar, the deprecated value, nor Germany twice
  assert p6 == ["Q90001"]  # the current mayor; an end time of `novalue` has not ended
  assert counts["statements dropped: deprecated rank"] == 1
  assert counts["statements dropped: ended (P582 end time; current facts only)"] == 4
  assert counts["statements dropped: normal rank beside a preferred one"] == 1  # Germany, normal


def test_keep_ended_statements_keeps_history_whatever_the_preferred_rank_says():
  kept, counts = _read(KARLSRUHE, wikidata.Rules("en", keep_ended=True))
  assert [t for p, t in kept.statements if p == "P17"] == ["Q183", "Q43287", "Q41304"]
  assert [t for p, t in kept.statements if p == "P6"] == ["Q90001", "Q90002", "Q90003"]
  assert counts["statements kept: ended (P582 end time), kept as history"] == 4
  assert counts["statements dropped: normal rank beside a preferred one"] == 1


def test_other_ending_qualifiers_end_a_statement_too():
  claim = statement("Q1", "P17", "Q183")
  claim["qualifiers"] = {"P1534": [{"snaktype": "value", "property": "P1534", "hash": "h",
                                    "datavalue": item_value("Q12"), "datatype": "wikibase-item"}]}
  somevalue_end = statement("Q1", "P17", "Q7318", n=1)
  somevalue_end["qualifiers"] = {"P582": [{"snaktype": "somevalue", "property": "P582",
                                           "hash": "h2", "datatype": "time"}]}
  _, counts = _read(item("Q1", "Somewhere", {"en": "Somewhere"},
                         {"P17": [claim, somevalue_end]}))
  assert counts["statements dropped: ended (P1534 end cause; current facts only)"] == 1
  # An end time that is known to exist but not known ("unknown value") has ended too.
  assert counts["statements dropped: ended (P582 end time; current facts only)"] == 1


def test_duplicates_are_written_once_and_counted():
  kept, counts = _read(KARLSRUHE)
  assert [t for p, t in kept.statements if p == "P31"] == ["Q1549591"]
  assert counts["statements dropped: duplicate (same property and target)"] == 1


def test_a_pre_2016_numeric_id_value_names_its_item():
  kept, counts = _read(KARLSRUHE)
  assert ("P131", "Q8165") in kept.statements
  assert counts["statement targets read from numeric-id (pre-2016 form)"] == 1
  # A numeric id of another entity type is not an item.
  claim = statement("Q1", "P17", "Q183", pre_2016=True)
  claim["mainsnak"]["datavalue"]["value"]["entity-type"] = "property"
  _, counts = _read(item("Q1", "X", {"en": "X"}, {"P17": [claim]}))
  assert counts["statements dropped: value is not an item id"] == 1


def test_mul_labels_stand_in_when_the_language_has_none_and_are_counted():
  mentrup, counts = _read(ENTITIES[7])
  assert mentrup.names == ("F. Mentrup",)  # the mul label equals the title; the alias stays
  assert counts["items labelled by their mul label (none in en)"] == 1
  assert counts["aliases taken from mul"] == 1
  _, counts = _read(ENTITIES[8])  # an English label as well: no fallback
  assert "items labelled by their mul label (none in en)" not in counts
  _, counts = _read(ENTITIES[9])  # only German
  assert counts["items without a label in en or mul (named by title only)"] == 1
  assert wikidata.property_label(ENTITIES[-1], wikidata.Rules("en")) == ("P131", "located in")


@pytest.fixture(scope="module", name="karlsruhe_kg")
def fixture_karlsruhe_kg(tmp_path_factory):
  from ernie3_jax.tools import prepare_dumps
  dumps = tmp_path_factory.mktemp("dumps")
  # Two properties with one English label lead to one line, written once.
  entities = ENTITIES + [prop("P1376", {"en": "country"})]
  entities[0] = json.loads(json.dumps(KARLSRUHE))
  entities[0]["claims"]["P1376"] = [statement(K, "P1376", "Q183")]
  (dumps / "latest-all.json").write_text(dump_text(entities))
  out = tmp_path_factory.mktemp("parent") / "kg"
  prepare_dumps.run(str(out), [], [str(dumps / "latest-all.json")], None,
                    wikidata.Rules("en"), pipeline_args=["--runner=DirectRunner"])
  return out


def test_the_pipeline_writes_current_unique_triples_and_counts_every_decision(karlsruhe_kg):
  kg = sorted((karlsruhe_kg / "kg.tsv").read_text().splitlines())
  assert kg == ["Karlsruhe\tcountry\tGermany",
                "Karlsruhe\thead of government\tFrank Mentrup",
                "Karlsruhe\tinstance of\tBig city",
                "Karlsruhe\tlocated in\tKarlsruhe (region)"]
  counts = json.loads((karlsruhe_kg / "wikidata_report.json").read_text())["counts"]
  assert counts["triples written"] == 4
  assert counts["triples dropped: duplicate line"] == 1  # P17 and P1376 both "country"
  assert counts["statements dropped: ended (P582 end time; current facts only)"] == 4
  assert counts["statements dropped: deprecated rank"] == 1
  assert counts["statements dropped: normal rank beside a preferred one"] == 1
  assert counts["statements dropped: duplicate (same property and target)"] == 1
  assert counts["statement targets read from numeric-id (pre-2016 form)"] == 1
  assert counts["items labelled by their mul label (none in en)"] == 1
  assert counts["properties labelled by their mul label (none in en)"] == 1
  assert counts["alias lines written"] == len(
      (karlsruhe_kg / "aliases.tsv").read_text().splitlines())
  aliases = sorted((karlsruhe_kg / "aliases.tsv").read_text().splitlines())
  assert "Frank Mentrup\tF. Mentrup" in aliases and "Germany\tFRG" in aliases
