"""Wikidata JSON dumps -> the project's knowledge graph (kg.tsv) and aliases (aliases.tsv).

The dump (`latest-all.json.bz2` / `.gz`) is one JSON array with one entity per line:
"[", then "{...}," per entity, then "]". An item ("Q...") has `labels` and `aliases` per
language, `sitelinks` per wiki ("enwiki": {"title": ...}) and `claims` {property:
[statement]}; a statement has a `mainsnak` {snaktype, property, datatype, datavalue
{value: {"id": "Q..."}}}, a `rank` (preferred, normal, deprecated), and qualifiers and
references. A property ("P...") has `labels`.

What is kept (`Rules`), every decision counted by reason in the report:
- an item with a sitelink to the language's Wikipedia and at least `min_sitelinks`
  sitelinks. Its name in the KG is that article's title (titles are unique within a wiki
  and are the titles the corpus reader gives articles, which UKTP's alignment matches);
  its label and aliases in the language become its aliases. Where the item has no label
  in the language, its `mul` label (the language-independent default label current dumps
  give names such as people's) stands in, counted; `mul` aliases are added to the
  language's (they hold in every language), counted;
- a statement of a kept item whose mainsnak is a value of datatype `wikibase-item` whose
  property is allowed and labelled in the language (or `mul`) and whose target is a kept
  item. The target is the value's `id`; values written before 2016 carry only
  `numeric-id` (and `entity-type`), which is read as `Q<numeric-id>` (counted);
- ranks, as Wikidata's own "best statements" do: deprecated statements are dropped; of a
  property's current statements, the preferred ones win where there are any, and the
  normal ones are then dropped;
- time: a statement with an ending qualifier (`ENDING_QUALIFIERS`: end time P582,
  earliest/latest end date, end cause) no longer holds. By default (`keep_ended=False`,
  current facts only) it is dropped; with `keep_ended=True` it is kept as history, whatever
  its rank (a preferred rank marks the current value, not a truer past one). An ending
  qualifier of snaktype `novalue` ("no end") does not end a statement, and an end time in
  the future ends it as well (the output does not depend on the day it was made);
- duplicates: the same (property, target) twice in one item (two statements for two
  periods, say) is written once, and so is the same (head, relation, tail) line reached
  through two properties with the same label;
- a statement whose target is the item itself (every country's "country" is itself)
  says nothing about it and is dropped, counted;
- at most `max_triples_per_entity` triples per item, in claim order. Other qualifiers
  and references are not used (counted).
Each line is `head title<TAB>property label<TAB>tail title`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterator, Sequence

from ernie3_jax.runtime import storage

COUNT = "count"  # the tag of the count events each stage emits
MUL = "mul"  # the language code of labels and aliases that hold in every language
# Qualifiers saying that a statement no longer holds (Wikidata property ids).
ENDING_QUALIFIERS = {
    "P582": "end time",
    "P8554": "earliest end date",
    "P12506": "latest end date",
    "P1534": "end cause",
}


class WikidataError(ValueError):
  """A dump that cannot be read; names the file and line."""


@dataclasses.dataclass(frozen=True)
class Rules:
  language: str = "en"
  min_sitelinks: int = 1
  allow_properties: tuple[str, ...] = ()  # empty: every property not denied
  deny_properties: tuple[str, ...] = ()
  max_triples_per_entity: int = 100
  # False: current facts only (statements with an ending qualifier are dropped);
  # True: those are kept as history.
  keep_ended: bool = False

  @property
  def wiki(self) -> str:
    return f"{self.language}wiki"


@dataclasses.dataclass(frozen=True)
class Item:
  qid: str
  title: str  # the article title in the language's Wikipedia
  names: tuple[str, ...]  # label and aliases in the language (without the title)
  statements: tuple[tuple[str, str], ...]  # (property id, target item id), kept in order


def open_dump(path: str):
  """A text stream over a plain, .gz or .bz2 dump."""
  return storage.open_decompressed(path, "rt", encoding="utf-8")


def dump_lines(path: str) -> Iterator[tuple[int, str]]:
  """(line number, line) of an entity dump; a truncated or corrupt compressed file is an
  error naming the file and the last line read."""
  lineno = 0
  try:
    with open_dump(path) as f:
      for lineno, line in enumerate(f, 1):
        yield lineno, line
  except (EOFError, OSError, UnicodeDecodeError) as e:
    raise WikidataError(f"{path}: unreadable after line {lineno} ({type(e).__name__}: {e}); "
                        "is the file truncated or corrupt?") from e


def parse_entity(line: str, where: str) -> dict | None:
  """The entity of one dump line (None for the array's brackets and blank lines)."""
  text = line.strip().rstrip(",")
  if text in ("", "[", "]"):
    return None
  try:
    entity = json.loads(text)
  except json.JSONDecodeError as e:
    raise WikidataError(f"{where}: invalid JSON ({e.msg.removesuffix(' at')} at column {e.colno})") from None
  if not isinstance(entity, dict) or "id" not in entity:
    raise WikidataError(f"{where}: not an entity (no 'id')")
  return entity


def _text(values: Any, language: str) -> str | None:
  value = (values or {}).get(language)
  return value.get("value") if isinstance(value, dict) else None


def label_of(entity: dict, language: str) -> tuple[str | None, bool]:
  """The entity's label in `language`, else its `mul` label; and whether it is the
  `mul` one."""
  labels = entity.get("labels")
  label = _text(labels, language)
  if label:
    return label, False
  label = _text(labels, MUL)
  return (label, True) if label else (None, False)


def property_label(entity: dict, rules: Rules) -> tuple[str, str] | None:
  """(property id, its label in the language, else its `mul` label) of a property
  entity, if it has one."""
  label, _ = label_of(entity, rules.language)
  return (entity["id"], label) if label else None


def _alias_values(entity: dict, language: str) -> list[str]:
  return [a.get("value") for a in (entity.get("aliases") or {}).get(language, [])
          if isinstance(a, dict) and a.get("value")]


def read_item(entity: dict, rules: Rules) -> Iterator[tuple[str, Any]]:
  """The Item to keep (tagged "item") or the reason to drop it, plus count events
  ("count", reason) for each statement that cannot make a triple on its own terms."""
  sitelinks = entity.get("sitelinks") or {}
  link = sitelinks.get(rules.wiki)
  if not link or not link.get("title"):
    yield COUNT, "items dropped: no article in " + rules.wiki
    return
  if len(sitelinks) < rules.min_sitelinks:
    yield COUNT, f"items dropped: fewer than {rules.min_sitelinks} sitelinks"
    return
  title = link["title"]
  label, from_mul = label_of(entity, rules.language)
  if from_mul:
    yield COUNT, f"items labelled by their {MUL} label (none in {rules.language})"
  elif label is None:
    yield COUNT, f"items without a label in {rules.language} or {MUL} (named by title only)"
  aliases = _alias_values(entity, rules.language)
  names = [n for n in dict.fromkeys([label] + aliases) if n and n != title]
  for alias in _alias_values(entity, MUL):
    if alias != title and alias not in names:
      names.append(alias)
      yield COUNT, f"aliases taken from {MUL}"
  names = tuple(names)
  statements = []
  for prop, claims in (entity.get("claims") or {}).items():
    if rules.allow_properties and prop not in rules.allow_properties:
      yield from ((COUNT, "statements dropped: property not allowed") for _ in claims)
      continue
    if prop in rules.deny_properties:
      yield from ((COUNT, "statements dropped: property denied") for _ in claims)
      continue
    for event in _property_statements(prop, claims, rules):
      if event[0] == COUNT:
        yield event
      elif event[1] == entity["id"]:  # a country's "country" is itself: says nothing
        yield COUNT, "statements dropped: target is the item itself"
      else:
        statements.append(event)
  if len(statements) > rules.max_triples_per_entity:
    for _ in statements[rules.max_triples_per_entity:]:
      yield COUNT, f"statements dropped: over {rules.max_triples_per_entity} per item"
    statements = statements[:rules.max_triples_per_entity]
  yield COUNT, "items kept"
  yield "item", Item(entity["id"], title, names, tuple(statements))


def _property_statements(prop: str, claims: list, rules: Rules) -> Iterator[tuple[str, Any]]:
  """(prop, target id) per statement of one property that survives the rank, time and
  duplicate rules, in claim order; and a count event ("count", reason) per decision."""
  candidates = []  # (target, rank, ending qualifier or None, claim)
  for claim in claims:
    reason = _statement_problem(claim)
    if reason:
      yield COUNT, "statements dropped: " + reason
      continue
    target, from_numeric_id = _target(claim["mainsnak"]["datavalue"]["value"])
    if from_numeric_id:
      yield COUNT, "statement targets read from numeric-id (pre-2016 form)"
    ending = _ending_qualifier(claim)
    if ending and not rules.keep_ended:
      yield COUNT, f"statements dropped: ended ({ending}; current facts only)"
      continue
    candidates.append((target, claim.get("rank", "normal"), ending, claim))
  preferred = any(rank == "preferred" and not ending for _, rank, ending, _ in candidates)
  seen = set()
  for target, rank, ending, claim in candidates:
    if preferred and rank != "preferred" and not ending:
      yield COUNT, "statements dropped: normal rank beside a preferred one"
      continue
    if target in seen:
      yield COUNT, "statements dropped: duplicate (same property and target)"
      continue
    seen.add(target)
    if ending:
      yield COUNT, f"statements kept: ended ({ending}), kept as history"
    if set(claim.get("qualifiers") or {}) - set(ENDING_QUALIFIERS):
      yield COUNT, "statements kept without their qualifiers"
    yield prop, target


def _statement_problem(claim: dict) -> str | None:
  snak = claim.get("mainsnak") or {}
  if claim.get("rank") == "deprecated":
    return "deprecated rank"
  if snak.get("snaktype") != "value":
    return f"no value ({snak.get('snaktype')})"
  if snak.get("datatype") != "wikibase-item":
    return f"datatype {snak.get('datatype')} is not an item"
  value = (snak.get("datavalue") or {}).get("value")
  if _target(value)[0] is None:
    return "value is not an item id"
  return None


def _target(value: Any) -> tuple[str | None, bool]:
  """The item id a `wikibase-entityid` value names, and whether it came from the
  pre-2016 form {"entity-type": "item", "numeric-id": N} (no "id")."""
  if not isinstance(value, dict):
    return None, False
  qid = value.get("id")
  if qid is not None:
    ok = isinstance(qid, str) and qid[:1] == "Q" and qid[1:].isdigit()
    return (qid, False) if ok else (None, False)
  number = value.get("numeric-id")
  if (value.get("entity-type", "item") == "item" and isinstance(number, int)
      and not isinstance(number, bool) and number > 0):
    return f"Q{number}", True
  return None, False


def _ending_qualifier(claim: dict) -> str | None:
  """"P582 end time" (say) when a qualifier says the statement no longer holds; an
  ending qualifier whose every snak is `novalue` ("it has not ended") does not."""
  qualifiers = claim.get("qualifiers") or {}
  for prop, name in ENDING_QUALIFIERS.items():
    snaks = qualifiers.get(prop) or []
    if any(isinstance(s, dict) and s.get("snaktype") != "novalue" for s in snaks):
      return f"{prop} {name}"
  return None


def triples_of(item: Item, relation_labels: dict[str, str]) -> Iterator[tuple[str, Any]]:
  """(target id, (head title, relation label)) per statement, or a count event for a
  property without a label in the language (it names no relation)."""
  for prop, target in item.statements:
    relation = relation_labels.get(prop)
    if relation is None:
      yield COUNT, "statements dropped: property has no label in the language"
      continue
    yield target, (item.title, relation)


def alias_line(item: Item) -> str | None:
  return "\t".join((item.title,) + item.names) if item.names else None


def dump_to_kg(pipeline, dump_paths: Sequence[str], output_dir: str, rules: Rules):
  """Adds the conversion to a Beam pipeline: writes output_dir/kg.tsv, aliases.tsv and
  wikidata_report.json (counts by reason; malformed lines listed by file:line)."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from ernie3_jax.data import beam_counts  # pylint: disable=g-import-not-at-top

  def lines(path):
    for lineno, line in dump_lines(path):
      yield f"{path}:{lineno}", line

  def parse(element):
    where, line = element
    try:
      entity = parse_entity(line, where)
    except WikidataError as e:
      yield beam.pvalue.TaggedOutput(COUNT, "lines skipped: malformed")
      yield beam.pvalue.TaggedOutput("malformed", str(e))
      return
    if entity is None:
      return
    kind = entity.get("type") or ("property" if entity["id"].startswith("P") else "item")
    if kind == "property":
      label, from_mul = label_of(entity, rules.language)
      yield beam.pvalue.TaggedOutput(COUNT, "properties read")
      if from_mul:
        yield beam.pvalue.TaggedOutput(
            COUNT, f"properties labelled by their {MUL} label (none in {rules.language})")
      if label:
        yield beam.pvalue.TaggedOutput("property", (entity["id"], label))
    elif kind == "item":
      yield beam.pvalue.TaggedOutput(COUNT, "items read")
      for tag, value in read_item(entity, rules):
        yield beam.pvalue.TaggedOutput(tag, value)
    else:
      yield beam.pvalue.TaggedOutput(COUNT, f"entities skipped: type {kind}")

  parsed = (pipeline | "wikidata/files" >> beam.Create(list(dump_paths))
            | "wikidata/lines" >> beam.FlatMap(lines)
            | "wikidata/spread" >> beam.Reshuffle()
            | "wikidata/parse" >> beam.FlatMap(parse).with_outputs(
                COUNT, "malformed", "property", "item"))
  labels = beam.pvalue.AsDict(parsed.property)

  def targets(item, relation_labels):
    for key, value in triples_of(item, relation_labels):
      yield beam.pvalue.TaggedOutput(COUNT, value) if key == COUNT else (key, value)

  statements = (parsed.item | "wikidata/statements" >> beam.FlatMap(
      targets, labels).with_outputs(COUNT, main="targets"))
  kept = parsed.item | "wikidata/kept" >> beam.Map(lambda item: (item.qid, item.title))

  def join(element):
    _, groups = element
    titles = list(groups["kept"])
    written = set()
    for head, relation in groups["targets"]:
      if not titles:
        yield beam.pvalue.TaggedOutput(COUNT, "statements dropped: target item not kept")
      elif (head, relation) in written:  # two properties with one label
        yield beam.pvalue.TaggedOutput(COUNT, "triples dropped: duplicate line")
      else:
        written.add((head, relation))
        yield beam.pvalue.TaggedOutput(COUNT, "triples written")
        yield f"{head}\t{relation}\t{titles[0]}"

  joined = ({"targets": statements.targets, "kept": kept}
            | "wikidata/by_target" >> beam.CoGroupByKey()
            | "wikidata/join" >> beam.FlatMap(join).with_outputs(COUNT, main="tsv"))
  _ = joined.tsv | "wikidata/write_kg" >> beam.io.WriteToText(
      f"{output_dir}/kg", file_name_suffix=".tsv", shard_name_template="")
  def aliases(item):
    line = alias_line(item)
    if line:
      yield beam.pvalue.TaggedOutput(COUNT, "alias lines written")
      yield line

  alias_lines = parsed.item | "wikidata/aliases" >> beam.FlatMap(aliases).with_outputs(
      COUNT, main="tsv")
  _ = alias_lines.tsv | "wikidata/write_aliases" >> beam.io.WriteToText(
      f"{output_dir}/aliases", file_name_suffix=".tsv", shard_name_template="")
  beam_counts.write_report(
      [parsed[COUNT], statements[COUNT], joined[COUNT], alias_lines[COUNT]], parsed.malformed,
      f"{output_dir}/wikidata_report.json", "wikidata")
