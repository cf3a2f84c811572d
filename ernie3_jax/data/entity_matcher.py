"""Finding entity mentions (names and aliases) in text with an Aho-Corasick automaton.

Matching is case-sensitive (names are proper nouns) and on whole words only: a match
preceded or followed by a letter or digit is rejected. Of overlapping matches, the
leftmost wins and, among those starting at the same place, the longest.

Built from a knowledge graph, the matcher knows every head, every non-literal tail and
every alias. Literal tails (years, occupation words such as "organist") are left out
on purpose, so that a mention is always a real name; `knowledge_graph.is_literal_tail`
decides which tails are literals.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import ahocorasick

from ernie3_jax.data.knowledge_graph import KnowledgeGraph


class Mention(NamedTuple):
  start: int  # character offsets into the searched text, end exclusive
  end: int
  entity: str
  surface: str


def _is_word_char(c: str) -> bool:
  return c.isalnum()


class EntityMatcher:
  """Whole-word, leftmost-longest, non-overlapping matcher over names and aliases."""

  def __init__(self, names_to_entity: Mapping[str, str]):
    self.names_to_entity = dict(names_to_entity)
    for name, entity in self.names_to_entity.items():
      if not name or name != name.strip() or not entity:
        raise ValueError(f"entity name {name!r} (for {entity!r}) must be non-empty and "
                         "without surrounding whitespace")
    self._automaton = None
    if self.names_to_entity:
      automaton = ahocorasick.Automaton()
      for name, entity in self.names_to_entity.items():
        automaton.add_word(name, (len(name), entity))
      automaton.make_automaton()
      self._automaton = automaton
    self.dropped_aliases: list[str] = []

  @classmethod
  def from_knowledge_graph(cls, kg: KnowledgeGraph) -> "EntityMatcher":
    """Matcher over heads, non-literal tails and unambiguous aliases of `kg`."""
    names, dropped = kg.names_to_entity()
    matcher = cls(names)
    matcher.dropped_aliases = dropped
    return matcher

  def __len__(self) -> int:
    return len(self.names_to_entity)

  def entity_of(self, name: str) -> str | None:
    """The entity a whole string names, or None."""
    return self.names_to_entity.get(name)

  def find(self, text: str) -> list[Mention]:
    """Mentions in `text`, sorted by start, non-overlapping."""
    if self._automaton is None or not text:
      return []
    n = len(text)
    candidates = []
    for last, (length, entity) in self._automaton.iter(text):
      start, end = last - length + 1, last + 1
      if start > 0 and _is_word_char(text[start - 1]):
        continue
      if end < n and _is_word_char(text[end]):
        continue
      candidates.append((start, -length, entity))
    # Sorting by (start, -length) and then taking greedily gives leftmost-longest.
    candidates.sort()
    mentions, covered = [], 0
    for start, neg_length, entity in candidates:
      if start >= covered:
        covered = start - neg_length
        mentions.append(Mention(start, covered, entity, text[start:covered]))
    return mentions
