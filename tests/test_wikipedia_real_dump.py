"""The Wikipedia reader and the corpus cleaning on real dump text: sixteen pages of the
English Wikipedia's pages-articles export (tests/fixtures/wikipedia, see its NOTICE.md),
none of them written for these tests.

What is asserted was checked by hand on these pages: templates that carry text are
rendered and the others leave no "()" or " ," behind; tables, references, file links,
galleries, source sections and disambiguation pages go, and are counted; lists stay one
item a line; the cleaning's sentence splitter does not cut at "i.e.", "Dr." or an initial.
"""

from __future__ import annotations

import collections
import functools
import os
import re

import pytest

from ernie3_jax.data import corpus_cleaning as cleaning
from ernie3_jax.data import wikipedia_dump

DUMP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "wikipedia",
                    "enwiki-pages-articles-sample.xml.bz2")
ARTICLES = ["Adobe", "Affirming the consequent", "Agriculture", "Alabama", "Alain Connes",
            "Allah", "Ambiguity", "Ampere", "Anarchism", "Articles of Confederation", "Asia",
            "Atlantic Ocean"]


@functools.lru_cache(maxsize=1)
def _events() -> tuple:
  return tuple(e for page in wikipedia_dump.read_pages(DUMP)
               for e in wikipedia_dump.page_events(page))


def _articles() -> dict[str, str]:
  return dict(v for t, v in _events() if t == "article")


def _removed() -> collections.Counter:
  removed = collections.Counter()
  for tag, value in _events():
    if tag == "count" and isinstance(value, tuple):
      removed[value[0]] += value[1]
  return removed


def test_document_count_is_stable_and_disambiguation_pages_are_skipped():
  assert sorted(_articles()) == ARTICLES
  skips = collections.Counter(v for t, v in _events()
                              if t == "count" and isinstance(v, str))
  # Austin (disambiguation) by its title; Alien ({{disambiguation}}) and Aa River
  # ({{geodis}}) by their templates.
  assert skips == {"articles read": 12, "pages skipped: disambiguation": 3,
                   "pages skipped: redirect": 1}


def test_no_empty_brackets_or_dangling_separators():
  for title, text in _articles().items():
    for pattern in (r"\(\s*[,;:]?\s*\)", r" [,;]", r"\(\s*[,;]", r"[,;]\s*\)", r",\s*,"):
      found = re.findall(r".{0,30}" + pattern + r".{0,30}", text)
      assert not found, (title, pattern, found[:3])


def test_text_bearing_templates_are_rendered():
  articles = _articles()
  # {{convert|...|km2|...}}; before, "With a total area of about , it covers".
  assert ("With a total area of about 106,400,000 km², it covers approximately 20 percent "
          "of the Earth's surface") in articles["Atlantic Ocean"]
  # {{IPAc-en|...}}; before, "Alabama () is a state".
  assert articles["Alabama"].startswith("Alabama (/ˌæləˈbæmə/) is a state located in the "
                                        "southeastern region of the United States.")
  # {{IPAc-en}}, {{lang-ar}}, {{transl}} and {{IPA-ar}} in a row.
  assert articles["Allah"].startswith("Allah (/ˈælə, ˈɑːlə, əlˈlɑː/; الله Allāh, "
                                      "ʔalˤˈlˤɑːh) is the Arabic word referring to God")
  # {{birth date and age|1947|4|1}}.
  assert articles["Alain Connes"].startswith("Alain Connes (alɛ̃ kɔn; born 1 April 1947) is "
                                             "a French mathematician")
  assert _removed()["wikitext: templates rendered"] == 158


def test_no_table_ref_file_or_citation_markup():
  leaks = {}
  for markup in ("{|", "|}", "|-", "wikitable", "<ref", "</ref", "{{", "}}", "[[", "]]",
                 "File:", "Image:", "thumb|", "<gallery", "Category:", "ISBN", "<math",
                 "&nbsp;"):
    for title, text in _articles().items():
      if markup in text:
        i = text.find(markup)
        leaks.setdefault(markup, []).append((title, text[max(0, i - 60):i + 60]))
  assert not leaks, leaks


def test_source_sections_are_removed_with_what_they_list():
  articles = _articles()
  # Anarchism's "Further reading" and Ambiguity's "See also" lists.
  assert "Bastards of Utopia" not in articles["Anarchism"]
  assert "Two Cheers for Anarchism" not in articles["Anarchism"]
  assert "Sinc function" in articles["Ambiguity"]  # a list in the article's body stays
  # The Ambiguity figure whose caption holds an unbalanced ''' used to leak whole.
  assert "Pepe vio a Pablo" not in articles["Ambiguity"]
  removed = _removed()
  assert removed["wikitext: sections removed (references, see also, ...)"] == 44
  assert removed["wikitext: tables removed"] == 19
  assert removed["wikitext: references removed"] == 1161
  assert removed["wikitext: file links removed"] == 184
  assert removed["wikitext: <gallery> removed"] == 3


def test_lists_stay_one_item_a_line():
  trenches = [p for p in _articles()["Atlantic Ocean"].split("\n\n")
              if p.startswith("Puerto Rico Trench")]
  assert trenches and trenches[0].split("\n") == [
      "Puerto Rico Trench, in the North Atlantic, is the deepest trench at 8605 m",
      "Laurentian Abyss is found off the eastern coast of Canada",
      "South Sandwich Trench reaches a depth of 8428 m",
      "Romanche Trench is located near the equator and reaches a depth of about 7454 m."]
  # The cleaning keeps the lines apart: each item is a sentence of its own.
  text, removed = cleaning.clean_document(trenches[0])
  assert text == ("Puerto Rico Trench, in the North Atlantic, is the deepest trench at 8605 m\n"
                  "Laurentian Abyss is found off the eastern coast of Canada\n"
                  "Romanche Trench is located near the equator and reaches a depth of about "
                  "7454 m.")
  assert removed.sentences == 1  # the item under ten words


HAND_CHECKED = {  # sentences the cleaning used to cut at an abbreviation, then drop
    "Anarchism": [
        "In abandoning the hyphenated anarchisms (i.e. collectivist-, communist-, "
        "mutualist– and individualist-anarchism), it sought to emphasise the "
        "anti-authoritarian beliefs common to all anarchist schools of thought.",
        "Woodcock also reports that the American individualist anarchists Lysander Spooner "
        "and William B. Greene had been members of the First International.",
        "Phenomena such as civilization, technology (e.g. within anarcho-primitivism), and "
        "the democratic process may be sharply criticised within some anarchist tendencies "
        "and simultaneously lauded in others."],
    "Agriculture": [
        "Dr. Samuel Jutzi, director of FAO's animal production and health division, states "
        "that lobbying by large corporations has stopped reforms that would improve human "
        "health and the environment."],
    "Asia": [
        "In 2006, Dr. Muhammad Yunus of Bangladesh was awarded the Nobel Peace Prize for the "
        "establishment of Grameen Bank, a community development bank that lends money to "
        "poor people, especially women in Bangladesh."],
}
_ENDS_IN_ABBREVIATION = re.compile(r"(?:^|[\s(])(?:i\.e|e\.g|Dr|St|Mr|Mrs|cf|vs|[A-Z])\.$")


@pytest.mark.parametrize("title", sorted(HAND_CHECKED))
def test_no_sentence_is_cut_at_an_abbreviation(title):
  text, _ = cleaning.clean_document(_articles()[title])
  kept = [s for p in text.split("\n\n") for s in cleaning.sentences(p)]
  for sentence in HAND_CHECKED[title]:
    assert sentence in kept
  cut = [s[-40:] for p in _articles()[title].split("\n\n")
         for s in cleaning.sentences(p)[:-1] if _ENDS_IN_ABBREVIATION.search(s)]
  assert not cut


def test_two_workers_give_the_same_events_in_the_same_order():
  assert tuple(wikipedia_dump.extract(DUMP, workers=2)) == _events()


def test_the_throughput_benchmark_runs_both_readers():
  from tests.test_benchmarks import run_benchmark  # pylint: disable=import-outside-toplevel
  r = run_benchmark("wikipedia_throughput.py", f"--dump={DUMP}", "--workers=1,2",
                    "--repeats=1")
  ours = r["results"]["ours"]
  assert [o["workers"] for o in ours] == [1, 2]
  assert {o["articles"] for o in ours} == {12}
  assert ours[0]["characters"] == ours[1]["characters"] > 0
  for o in ours:
    assert o["mb_bz2_per_min"] > 0 and o["mb_bz2_per_core_min"] > 0
  try:
    import wikiextractor  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    assert r["results"]["wikiextractor"].startswith("skipped")
    return
  theirs = r["results"]["wikiextractor"]
  # wikiextractor keeps the three disambiguation pages.
  assert [t["articles"] for t in theirs] == [15, 15]
  assert r["ours_over_wikiextractor_per_core"] == pytest.approx(
      ours[0]["mb_bz2_per_core_min"] / theirs[0]["mb_bz2_per_core_min"], abs=0.01)
