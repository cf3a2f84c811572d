"""Loading a knowledge graph: `head<TAB>relation<TAB>tail` triples plus entity aliases.

Malformed input fails with the file and line at fault. Blank lines and lines that start
with '#' are skipped, and how many were skipped is reported, never hidden.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterable, Iterator, NamedTuple

from ernie3_jax.data.corpus_readers import EMBEDDED_DIR
from ernie3_jax.runtime import storage

EMBEDDED_KG = os.path.join(EMBEDDED_DIR, "kg.tsv")
EMBEDDED_ALIASES = os.path.join(EMBEDDED_DIR, "aliases.tsv")
EMBEDDED_HELDOUT_KG = os.path.join(EMBEDDED_DIR, "heldout_kg.tsv")

# Relations whose tails are values rather than entities in the embedded graph (see
# ernie3_jax/data/embedded/README.md). A tail written only in digits is a literal too.
DEFAULT_LITERAL_RELATIONS = frozenset(
    {"birth_year", "created_in_year", "founded_in_year", "occupation", "genre"})
_NUMERIC_TAIL = re.compile(r"[+-]?\d[\d\s.,:/-]*")


class Triple(NamedTuple):
  head: str
  relation: str
  tail: str


class KnowledgeGraphError(ValueError):
  """Malformed knowledge-graph input; the message names the file and line."""


def _data_lines(path: str) -> Iterator[tuple[int, str | None]]:
  """(line number, text) per line; text is None for a skipped blank/comment line."""
  if not storage.isfile(path):
    raise FileNotFoundError(f"knowledge-graph file {path!r} does not exist")
  with storage.open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise KnowledgeGraphError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte "
                                  f"{e.start})") from None
      if lineno == 1:
        line = line.lstrip("\ufeff")  # a byte-order mark is not part of the first field
      line = line.rstrip("\r\n")
      if not line.strip() or line.lstrip().startswith("#"):
        yield lineno, None
      else:
        yield lineno, line


def _fields(path: str, lineno: int, line: str) -> list[str]:
  fields = [f.strip() for f in line.split("\t")]
  if any(not f for f in fields):
    raise KnowledgeGraphError(f"{path}:{lineno}: empty tab-separated field in {line!r}")
  return fields


def read_triples(path: str) -> tuple[list[Triple], int]:
  """(triples in file order, number of skipped blank/comment lines)."""
  triples, skipped = [], 0
  for lineno, line in _data_lines(path):
    if line is None:
      skipped += 1
      continue
    num_fields = line.count("\t") + 1
    if num_fields != 3:
      raise KnowledgeGraphError(
          f"{path}:{lineno}: expected 3 tab-separated fields (head, relation, tail), got "
          f"{num_fields} in {line!r}")
    triples.append(Triple(*_fields(path, lineno, line)))
  if not triples:
    raise KnowledgeGraphError(f"{path}: the knowledge graph is empty (no triple in "
                              f"{skipped} line(s))")
  return triples, skipped


def read_aliases(path: str) -> tuple[dict[str, list[str]], int]:
  """({entity: aliases}, number of skipped lines); repeated entities are merged."""
  aliases: dict[str, list[str]] = {}
  skipped = 0
  for lineno, line in _data_lines(path):
    if line is None:
      skipped += 1
      continue
    fields = _fields(path, lineno, line)
    if len(fields) < 2:
      raise KnowledgeGraphError(f"{path}:{lineno}: expected an entity and at least one alias "
                                f"separated by tabs, got {line!r}")
    known = aliases.setdefault(fields[0], [])
    known.extend(a for a in dict.fromkeys(fields[1:]) if a != fields[0] and a not in known)
  return aliases, skipped


def load_triples(path: str) -> list[Triple]:
  """Triples of a `head<TAB>relation<TAB>tail` file; see `read_triples` for skip counts."""
  return read_triples(path)[0]


def load_aliases(path: str) -> dict[str, list[str]]:
  """`entity<TAB>alias...` lines -> {entity: [alias, ...]}."""
  return read_aliases(path)[0]


def is_literal_tail(relation: str, tail: str,
                    literal_relations: Iterable[str] = DEFAULT_LITERAL_RELATIONS) -> bool:
  """True when the tail is a value (a year, an occupation word), not an entity name."""
  return relation in literal_relations or _NUMERIC_TAIL.fullmatch(tail) is not None


@dataclasses.dataclass(frozen=True)
class KnowledgeGraph:
  """Triples, aliases and the number of skipped blank/comment lines per file."""

  triples: list[Triple]
  aliases: dict[str, list[str]]
  skipped_lines: dict[str, int]
  literal_relations: frozenset[str] = DEFAULT_LITERAL_RELATIONS

  def is_literal(self, triple: Triple) -> bool:
    return is_literal_tail(triple.relation, triple.tail, self.literal_relations)

  def entities(self) -> list[str]:
    """Heads, non-literal tails and aliased entities, in order of first appearance."""
    seen: dict[str, None] = {}
    for t in self.triples:
      seen.setdefault(t.head)
      if not self.is_literal(t):
        seen.setdefault(t.tail)
    for entity in self.aliases:
      seen.setdefault(entity)
    return list(seen)

  def names_to_entity(self) -> tuple[dict[str, str], list[str]]:
    """({surface name: entity}, aliases dropped as ambiguous).

    Every entity is named by itself. An alias that is another entity's name, or that
    several entities share, would make mentions ambiguous, so it is dropped (and listed).
    """
    names = {e: e for e in self.entities()}
    claims: dict[str, list[str]] = {}
    for entity, aliases in self.aliases.items():
      for alias in aliases:
        claims.setdefault(alias, []).append(entity)
    dropped = []
    for alias, owners in claims.items():
      if alias in names or len(set(owners)) > 1:
        dropped.append(alias)
      else:
        names[alias] = owners[0]
    return names, dropped


def load_knowledge_graph(triples_path: str = EMBEDDED_KG,
                         aliases_path: str | None = EMBEDDED_ALIASES,
                         literal_relations: Iterable[str] = DEFAULT_LITERAL_RELATIONS
                         ) -> KnowledgeGraph:
  """Triples and (optionally) aliases; the embedded encyclopedia's graph by default."""
  triples, skipped = read_triples(triples_path)
  skipped_lines = {triples_path: skipped}
  aliases: dict[str, list[str]] = {}
  if aliases_path is not None:
    aliases, skipped_lines[aliases_path] = read_aliases(aliases_path)
  return KnowledgeGraph(triples, aliases, skipped_lines, frozenset(literal_relations))
