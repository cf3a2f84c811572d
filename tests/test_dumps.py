"""Public dumps to a corpus and a knowledge graph: the Wikidata and Wikipedia readers on
fixtures in the real formats, ERNIE 3.0's cleaning rules, the Beam pipeline and its
counted report, bad input, and (slow) training on what comes out."""

import bz2
import gzip
import json
import os
import shutil

import pytest

from ernie3_jax.data import corpus_cleaning as cleaning
from ernie3_jax.data import wikidata, wikipedia_dump

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "dumps")
WIKIDATA = os.path.join(FIXTURES, "wikidata.json")
WIKIPEDIA = os.path.join(FIXTURES, "wikipedia.xml")


# ------------------------------------------------------------------ cleaning, rule by rule


def test_rule_1_collapses_repeated_whitespace_and_punctuation_only():
  raw = "Wow!!!  It   cost 1000 --- in Mississippi..\n\n\n\nNext"
  text, removed = cleaning.collapse_characters(raw)
  assert text == "Wow! It cost 1000 - in Mississippi.\n\nNext"
  assert removed == len(raw) - len(text) == 10  # 2 + 1 + 2 + 2 + 1 + 2


def test_rule_2_drops_a_paragraph_identical_to_the_one_before():
  kept, removed = cleaning.drop_repeated_paragraphs(["a", "a", "b", "a", "a", "a"])
  assert kept == ["a", "b", "a"] and removed == 3


def test_rule_3_drops_sentences_under_ten_words():
  ten = "One two three four five six seven eight nine ten."
  text, removed = cleaning.drop_short_sentences(
      f"Too short here. {ten} Nine words are not quite enough for this one.")
  assert text == ten and removed == 2


def test_rule_4_keys_documents_by_their_three_longest_sentences():
  s = ["A first sentence that is fairly long indeed, with many words in it.",
       "A second sentence, also long enough to be among the longest three.",
       "A third sentence of the document which is long as well, truly.", "Short one."]
  a = " ".join(s)
  b = " ".join([s[2], "Another short one.", s[0], s[1]])  # same three longest, reordered
  c = " ".join(s[:2] + ["A different third sentence that is long as well, truly so."])
  assert cleaning.duplicate_key(a) == cleaning.duplicate_key(b) != cleaning.duplicate_key(c)


# ------------------------------------------------------------------ the readers


def test_wikidata_items_statements_and_counted_drops():
  rules = wikidata.Rules("en")
  entities = {}
  for lineno, line in wikidata.dump_lines(WIKIDATA):
    try:
      entity = wikidata.parse_entity(line, f"{WIKIDATA}:{lineno}")
    except wikidata.WikidataError as e:
      assert str(e).startswith(f"{WIKIDATA}:7: invalid JSON")
      continue
    if entity:
      entities[entity["id"]] = entity
  events = list(wikidata.read_item(entities["Q100"], rules))
  (item,) = [v for t, v in events if t == "item"]
  assert item.title == "Anna Rosenthal" and item.names == ("A. Rosenthal",)  # en only
  assert item.statements == (("P19", "Q200"), ("P27", "Q400"), ("P999", "Q200"),
                             ("P26", "Q500"))
  counts = [v for t, v in events if t == wikidata.COUNT]
  assert sorted(counts) == sorted([
      "statements kept without their qualifiers", "statements dropped: deprecated rank",
      "statements dropped: datatype time is not an item",
      "statements dropped: no value (somevalue)", "items kept"])
  # An item without an English article, with too few sitelinks, or any property allowed.
  assert list(wikidata.read_item(entities["Q500"], rules)) == [
      (wikidata.COUNT, "items dropped: no article in enwiki")]
  assert list(wikidata.read_item(entities["Q400"], wikidata.Rules("en", min_sitelinks=3))) == [
      (wikidata.COUNT, "items dropped: fewer than 3 sitelinks")]
  only = [v for t, v in wikidata.read_item(entities["Q100"],
                                           wikidata.Rules("en", allow_properties=("P19",)))
          if t == "item"][0]
  assert only.statements == (("P19", "Q200"),)
  german = [v for t, v in wikidata.read_item(entities["Q200"], wikidata.Rules("de"))
            if t == "item"][0]
  assert german.title == "Lissabon"


def test_wikipedia_pages_become_plain_text_and_skips_are_counted():
  events = [e for page in wikipedia_dump.read_pages(WIKIPEDIA)
            for e in wikipedia_dump.page_events(page)]
  articles = dict(v for t, v in events if t == "article")
  assert sorted(articles) == ["Anna Rosenthal", "Lisbon", "Lisbon (copy)"]
  anna = articles["Anna Rosenthal"]
  assert anna.startswith("Anna Rosenthal (2 March 1871 – 1944) was a Portuguese painter")
  for markup in ("{{", "}}", "[[", "<ref", "cite web", "thumb", "File:", "Category",
                 "wikitable", "Early life", "'''", "de:Anna", "* Her"):
    assert markup not in anna, markup
  assert "Her best known painting shows the river Tagus" in anna
  assert len(anna.split("\n\n")) == 5  # paragraphs stay apart
  counts = [v for t, v in events if t == "count" and isinstance(v, str)]
  removed = dict(v for t, v in events if t == "count" and isinstance(v, tuple))
  assert removed["wikitext: tables removed"] == 1
  assert sorted(counts) == ["articles read"] * 3 + [
      "pages skipped: disambiguation", "pages skipped: namespace 1",
      "pages skipped: redirect"]  # "Empty" holds only {{Disambiguation}} and a category


def test_truncated_and_corrupt_dumps_are_named(tmp_path):
  data = open(WIKIDATA, "rb").read()
  truncated = tmp_path / "latest-all.json.bz2"
  truncated.write_bytes(bz2.compress(data)[:-40])
  with pytest.raises(wikidata.WikidataError, match=rf"{truncated}: unreadable after line \d+"):
    list(wikidata.dump_lines(str(truncated)))
  gz = tmp_path / "latest-all.json.gz"
  gz.write_bytes(gzip.compress(data))
  assert len(list(wikidata.dump_lines(str(gz)))) == len(data.decode().splitlines())
  xml = tmp_path / "pages-articles.xml.bz2"
  xml.write_bytes(bz2.compress(open(WIKIPEDIA, "rb").read())[:-60])
  with pytest.raises(wikipedia_dump.WikipediaDumpError, match=rf"{xml}: unreadable after page"):
    list(wikipedia_dump.read_pages(str(xml)))


# ------------------------------------------------------------------ the Beam pipeline


@pytest.fixture(scope="module", name="prepared")
def fixture_prepared(tmp_path_factory):
  from ernie3_jax.tools import prepare_dumps
  out = tmp_path_factory.mktemp("prepared")
  dumps = tmp_path_factory.mktemp("dumps")
  shutil.copy(WIKIDATA, dumps / "latest-all.json")
  (dumps / "latest-all.json.bz2").write_bytes(bz2.compress(open(WIKIDATA, "rb").read()))
  (dumps / "pages-articles.xml.bz2").write_bytes(bz2.compress(open(WIKIPEDIA, "rb").read()))
  prepare_dumps.run(str(out), [str(dumps / "pages-articles.xml.bz2")],
                    [str(dumps / "latest-all.json.bz2")], None, wikidata.Rules("en"),
                    pipeline_args=["--runner=DirectRunner"])
  return out


def test_the_pipeline_writes_kg_aliases_corpus_and_counted_reports(prepared):
  kg = sorted(open(prepared / "kg.tsv").read().splitlines())
  assert kg == ["Anna Rosenthal\tcountry of citizenship\tPortugal",
                "Anna Rosenthal\tplace of birth\tLisbon", "Lisbon\tcountry\tPortugal"]
  assert sorted(open(prepared / "aliases.tsv").read().splitlines()) == [
      "Anna Rosenthal\tA. Rosenthal", "Lisbon\tLisboa", "Painter (occupation)\tpainter"]
  report = json.load(open(prepared / "wikidata_report.json"))
  counts = report["counts"]
  assert counts["items read"] == 6 and counts["items kept"] == 4
  assert counts["items dropped: no article in enwiki"] == 2
  assert counts["triples written"] == 3
  assert counts["statements dropped: target item not kept"] == 1  # spouse, no enwiki
  assert counts["statements dropped: property has no label in the language"] == 1  # P999
  assert counts["lines skipped: malformed"] == 1 and counts["entities skipped: type lexeme"] == 1
  assert report["skipped_examples"][0].startswith(str(prepared.parent))  # file:line named
  assert ":7: invalid JSON" in report["skipped_examples"][0]
  docs = [json.loads(l) for f in sorted(os.listdir(prepared)) if f.startswith("corpus-")
          for l in open(prepared / f)]
  assert sorted(d["title"] for d in docs) == ["Anna Rosenthal", "Lisbon"]
  corpus = json.load(open(prepared / "corpus_report.json"))["counts"]
  markup = {k: corpus.pop(k) for k in list(corpus) if k.startswith("wikitext: ")}
  assert markup["wikitext: tables removed"] == markup["wikitext: references removed"] == 1
  assert corpus == {
      "articles read": 3, "characters removed (rule 1)": 3, "documents dropped: duplicate "
      "(rule 4)": 1, "documents kept": 2, "documents read": 3, "documents written": 2,
      "pages skipped: namespace 1": 1, "pages skipped: disambiguation": 1,
      "pages skipped: redirect": 1, "repeated paragraphs removed (rule 2)": 1,
      "short sentences removed (rule 3)": 2}


@pytest.mark.slow  # UKTP alignment and two training steps on what the pipeline wrote
def test_the_prepared_files_align_and_train(prepared, tmp_path):
  from ernie3_jax.config import gin_utils
  from ernie3_jax.data import data_config as dc
  from ernie3_jax.data.vocabulary import EMBEDDED_VOCAB
  from ernie3_jax.training import train as train_lib
  import ernie3_jax.tasks  # noqa: F401
  from ernie3_jax.tasks import pretraining
  gin_utils.parse_gin(["gin_configs/experiments/wikipedia_wikidata.gin",
                       "gin_configs/models/tiny.gin"], [
      f"MODEL_DIR = '{tmp_path}'", f"DUMPS_DIR = '{prepared}'",
      # Two articles cannot train a vocabulary: the embedded one reads them.
      "DataConfig.vocabulary = @vocabulary/prepared_file()",
      f"vocabulary/prepared_file.directory = '{os.path.dirname(EMBEDDED_VOCAB)}'",
      "DataConfig.validation_every = 0", "NLU_BATCH = 4", "NLG_BATCH = 2",
      "SEQUENCE_LENGTH = 64", "NLG_SEGMENT_LENGTH = 32", "train.num_steps = 2",
      "train.checkpoint_every = 0", "train.progress_bar = False", "make_mesh.num_devices = 1",
      "ProgressiveSchedule.steps = 0"])
  examples, report = pretraining.aligned_rows_and_report(dc.current(), "train")
  assert report.total == 3 and len(examples) >= 2  # two triples name both ends in a sentence
  result = train_lib.train(str(tmp_path))
  assert result.final_step == 2
