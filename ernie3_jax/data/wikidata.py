"""Wikidata JSON dumps -> the project's knowledge graph (kg.tsv) and aliases (aliases.tsv).

The dump (`latest-all.json.bz2` / `.gz`) is one JSON array with one entity per line:
"[", then "{...}," per entity, then "]". An item ("Q...") has `labels` and `aliases` per
language, `sitelinks` per wiki ("enwiki": {"title": ...}) and `claims` {property:
[statement]}; a statement has a `mainsnak` {snaktype, property, datatype, datavalue
{value: {"id": "Q..."}}}, a `rank` (preferred, normal, deprecated), and qualifiers and
references. A property ("P...") has `labels`.

What is kept (`Rules`), every drop counted by reason in the report:
- an item with a sitelink to the language's Wikipedia and at least `min_sitelinks`
  sitelinks. Its name in the KG is that article's title (titles are unique within a wiki
  and are the titles the corpus reader gives articles, which UKTP's alignment matches);
  its label and aliases in the language become its aliases;
- a statement of a kept item whose mainsnak is a value of datatype `wikibase-item`, whose
  rank is not deprecated, whose property is allowed and labelled in the language, and whose
  target is a kept item: `head title<TAB>property label<TAB>tail title`, at most
  `max_triples_per_entity` per item in claim order. Qualifiers and references are not
  used (counted).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterator, Sequence

from ernie3_jax.runtime import storage

COUNT = "count"  # the tag of the count events each stage emits


class WikidataError(ValueError):
  """A dump that cannot be read; names the file and line."""


@dataclasses.dataclass(frozen=True)
class Rules:
  language: str = "en"
  min_sitelinks: int = 1
  allow_properties: tuple[str, ...] = ()  # empty: every property not denied
  deny_properties: tuple[str, ...] = ()
  max_triples_per_entity: int = 100

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


def property_label(entity: dict, rules: Rules) -> tuple[str, str] | None:
  """(property id, its label in the language) of a property entity, if it has one."""
  label = _text(entity.get("labels"), rules.language)
  return (entity["id"], label) if label else None


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
  label = _text(entity.get("labels"), rules.language)
  aliases = [a.get("value") for a in (entity.get("aliases") or {}).get(rules.language, [])
             if isinstance(a, dict) and a.get("value")]
  names = tuple(n for n in dict.fromkeys([label] + aliases) if n and n != title)
  statements = []
  for prop, claims in (entity.get("claims") or {}).items():
    if rules.allow_properties and prop not in rules.allow_properties:
      yield from ((COUNT, "statements dropped: property not allowed") for _ in claims)
      continue
    if prop in rules.deny_properties:
      yield from ((COUNT, "statements dropped: property denied") for _ in claims)
      continue
    for claim in claims:
      reason = _statement_problem(claim)
      if reason:
        yield COUNT, "statements dropped: " + reason
        continue
      if claim.get("qualifiers"):
        yield COUNT, "statements kept without their qualifiers"
      statements.append((prop, claim["mainsnak"]["datavalue"]["value"]["id"]))
  if len(statements) > rules.max_triples_per_entity:
    for _ in statements[rules.max_triples_per_entity:]:
      yield COUNT, f"statements dropped: over {rules.max_triples_per_entity} per item"
    statements = statements[:rules.max_triples_per_entity]
  yield COUNT, "items kept"
  yield "item", Item(entity["id"], title, names, tuple(statements))


def _statement_problem(claim: dict) -> str | None:
  snak = claim.get("mainsnak") or {}
  if claim.get("rank") == "deprecated":
    return "deprecated rank"
  if snak.get("snaktype") != "value":
    return f"no value ({snak.get('snaktype')})"
  if snak.get("datatype") != "wikibase-item":
    return f"datatype {snak.get('datatype')} is not an item"
  value = (snak.get("datavalue") or {}).get("value")
  if not isinstance(value, dict) or not str(value.get("id", "")).startswith("Q"):
    return "value is not an item id"
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
      label = property_label(entity, rules)
      yield beam.pvalue.TaggedOutput(COUNT, "properties read")
      if label:
        yield beam.pvalue.TaggedOutput("property", label)
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
    for head, relation in groups["targets"]:
      if not titles:
        yield beam.pvalue.TaggedOutput(COUNT, "statements dropped: target item not kept")
      else:
        yield beam.pvalue.TaggedOutput(COUNT, "triples written")
        yield f"{head}\t{relation}\t{titles[0]}"

  joined = ({"targets": statements.targets, "kept": kept}
            | "wikidata/by_target" >> beam.CoGroupByKey()
            | "wikidata/join" >> beam.FlatMap(join).with_outputs(COUNT, main="tsv"))
  _ = joined.tsv | "wikidata/write_kg" >> beam.io.WriteToText(
      f"{output_dir}/kg", file_name_suffix=".tsv", shard_name_template="")
  _ = (parsed.item | "wikidata/aliases" >> beam.Map(alias_line)
       | "wikidata/has_aliases" >> beam.Filter(bool)
       | "wikidata/write_aliases" >> beam.io.WriteToText(
           f"{output_dir}/aliases", file_name_suffix=".tsv", shard_name_template=""))
  beam_counts.write_report(
      [parsed[COUNT], statements[COUNT], joined[COUNT]], parsed.malformed,
      f"{output_dir}/wikidata_report.json", "wikidata")
