"""Tests for knowledge-graph loading and the entity matcher."""

import pytest

from ernie3_jax.data import knowledge_graph as kgm
from ernie3_jax.data.entity_matcher import EntityMatcher, Mention


def write(tmp_path, name, content):
  path = tmp_path / name
  if isinstance(content, str):
    content = content.encode("utf-8")
  path.write_bytes(content)
  return str(path)


# ---------------------------------------------------------------------------- loading


def test_load_triples_skips_and_counts_blank_and_comment_lines(tmp_path):
  path = write(tmp_path, "kg.tsv", "# header\nA\tborn_in\tB\n\n  \nB\tlies_in\tC\r\n# end\n")
  assert kgm.load_triples(path) == [kgm.Triple("A", "born_in", "B"),
                                    kgm.Triple("B", "lies_in", "C")]
  triples, skipped = kgm.read_triples(path)
  assert len(triples) == 2 and skipped == 4


def test_knowledge_graph_reports_skipped_lines_per_file(tmp_path):
  kg_path = write(tmp_path, "kg.tsv", "\nA\tborn_in\tB\n")
  alias_path = write(tmp_path, "aliases.tsv", "# x\n\nA\tAy\tAlpha\nA\tAy\n")
  kg = kgm.load_knowledge_graph(kg_path, alias_path)
  assert kg.skipped_lines == {kg_path: 1, alias_path: 2}
  assert kg.aliases == {"A": ["Ay", "Alpha"]}  # repeated entity lines merge, no duplicates


def test_missing_file_names_the_file(tmp_path):
  path = str(tmp_path / "nope.tsv")
  with pytest.raises(FileNotFoundError, match="nope.tsv"):
    kgm.load_triples(path)
  with pytest.raises(FileNotFoundError, match="nope.tsv"):
    kgm.load_aliases(path)


def test_empty_graph_is_an_error(tmp_path):
  path = write(tmp_path, "empty.tsv", "# only a comment\n\n")
  with pytest.raises(ValueError, match=r"empty\.tsv.*empty"):
    kgm.load_triples(path)
  with pytest.raises(ValueError, match="empty"):
    kgm.load_triples(write(tmp_path, "zero.tsv", b""))


@pytest.mark.parametrize("bad_line", ["A\tborn_in", "A\tborn_in\tB\tC", "A born_in B",
                                      "A\t\tB", " \tborn_in\tB", "A\tborn_in\t "])
def test_malformed_triple_line_names_file_and_line(tmp_path, bad_line):
  path = write(tmp_path, "bad.tsv", f"A\tborn_in\tB\n# c\n{bad_line}\nB\tlies_in\tC\n")
  with pytest.raises(kgm.KnowledgeGraphError, match=r"bad\.tsv:3:") as info:
    kgm.load_triples(path)
  assert isinstance(info.value, ValueError)


def test_non_utf8_names_file_and_line(tmp_path):
  path = write(tmp_path, "latin1.tsv", "A\tborn_in\tB\n".encode() + b"Caf\xe9\tborn_in\tB\n")
  with pytest.raises(ValueError, match=r"latin1\.tsv:2: not valid UTF-8"):
    kgm.load_triples(path)
  alias_path = write(tmp_path, "aliases.tsv", b"\xff\xfe\n")
  with pytest.raises(ValueError, match=r"aliases\.tsv:1: not valid UTF-8"):
    kgm.load_aliases(alias_path)


def test_malformed_alias_lines_name_file_and_line(tmp_path):
  path = write(tmp_path, "aliases.tsv", "A\tAy\nB\n")
  with pytest.raises(ValueError, match=r"aliases\.tsv:2:"):
    kgm.load_aliases(path)
  path = write(tmp_path, "aliases2.tsv", "A\t\tAy\n")
  with pytest.raises(ValueError, match=r"aliases2\.tsv:1: empty"):
    kgm.load_aliases(path)


def test_byte_order_mark_is_ignored(tmp_path):
  path = write(tmp_path, "bom.tsv", "\ufeffA\tborn_in\tB\n")
  assert kgm.load_triples(path) == [kgm.Triple("A", "born_in", "B")]


def test_literal_tails_and_entities():
  assert kgm.is_literal_tail("birth_year", "1843")
  assert kgm.is_literal_tail("occupation", "organist")
  assert kgm.is_literal_tail("anything", "1843")  # digits are never a name
  assert not kgm.is_literal_tail("born_in", "Isgar")
  kg = kgm.KnowledgeGraph(
      [kgm.Triple("Ann Ros", "born_in", "Isgar"), kgm.Triple("Ann Ros", "birth_year", "1843"),
       kgm.Triple("Ann Ros", "occupation", "organist")], {"Isgar": ["Old Isgar"]}, {})
  assert kg.entities() == ["Ann Ros", "Isgar"]


def test_ambiguous_aliases_are_dropped():
  kg = kgm.KnowledgeGraph(
      [kgm.Triple("Ann Ros", "spouse_of", "Bo Ros"), kgm.Triple("Bo Ros", "born_in", "Isgar")],
      {"Ann Ros": ["Ros", "Annie"], "Bo Ros": ["Ros"], "Isgar": ["Bo Ros"]}, {})
  names, dropped = kg.names_to_entity()
  assert names == {"Ann Ros": "Ann Ros", "Bo Ros": "Bo Ros", "Isgar": "Isgar",
                   "Annie": "Ann Ros"}
  assert sorted(dropped) == ["Bo Ros", "Ros"]


def test_embedded_graph_loads():
  kg = kgm.load_knowledge_graph()
  assert len(kg.triples) == 22475
  assert len(kg.aliases) == 1696
  assert len(kg.entities()) == 3000
  assert set(kg.skipped_lines.values()) == {0}
  assert kgm.load_triples(kgm.EMBEDDED_HELDOUT_KG)


# ----------------------------------------------------------------------------- matcher


@pytest.fixture(name="small_matcher")
def fixture_small_matcher():
  return EntityMatcher({"Lysdrow": "Lysdrow", "Port Lysdrow": "Port Lysdrow",
                        "Isgar": "Isgar", "Cael Helelteth": "Cael Helelteth",
                        "Helelteth": "Cael Helelteth", "Helelteth Guild": "Helelteth Guild"})


def test_matcher_whole_words_only(small_matcher):
  assert small_matcher.find("Isgarian Isgar2 xIsgar 2Isgar Isgarß") == []
  assert small_matcher.find("(Isgar), Isgar's; Isgar-born") == [
      Mention(1, 6, "Isgar", "Isgar"), Mention(9, 14, "Isgar", "Isgar"),
      Mention(18, 23, "Isgar", "Isgar")]


def test_matcher_prefers_longest_and_resolves_aliases(small_matcher):
  text = "Port Lysdrow lies near Lysdrow. Helelteth met Cael Helelteth."
  assert [(m.surface, m.entity) for m in small_matcher.find(text)] == [
      ("Port Lysdrow", "Port Lysdrow"), ("Lysdrow", "Lysdrow"),
      ("Helelteth", "Cael Helelteth"), ("Cael Helelteth", "Cael Helelteth")]


def test_matcher_leftmost_then_longest_without_overlap(small_matcher):
  # "Cael Helelteth" and "Helelteth Guild" overlap; the leftmost start wins.
  mentions = small_matcher.find("Cael Helelteth Guild")
  assert [(m.start, m.end, m.entity) for m in mentions] == [(0, 14, "Cael Helelteth")]
  mentions = small_matcher.find("the Helelteth Guild")
  assert [(m.start, m.end, m.entity) for m in mentions] == [(4, 19, "Helelteth Guild")]


def test_matcher_uses_character_offsets(small_matcher):
  text = "😀 café — Isgar"
  (mention,) = small_matcher.find(text)
  assert text[mention.start:mention.end] == "Isgar" == mention.surface


def test_matcher_edge_cases():
  assert EntityMatcher({}).find("anything") == []
  assert EntityMatcher({"Isgar": "Isgar"}).find("") == []
  with pytest.raises(ValueError):
    EntityMatcher({" Isgar": "Isgar"})


def test_matcher_from_embedded_graph_finds_real_names_only():
  kg = kgm.load_knowledge_graph()
  matcher = EntityMatcher.from_knowledge_graph(kg)
  assert matcher.dropped_aliases == []
  text = ("Cael Helelteth worked as an organist. Parish records give 1711 as the birth year "
          "of Cael Helelteth. Helelteth settled in Port Lysdrow.")
  found = [(m.surface, m.entity) for m in matcher.find(text)]
  assert found == [("Cael Helelteth", "Cael Helelteth"), ("Cael Helelteth", "Cael Helelteth"),
                   ("Helelteth", "Cael Helelteth"), ("Port Lysdrow", "Port Lysdrow")]
  assert matcher.entity_of("organist") is None and matcher.entity_of("1711") is None
