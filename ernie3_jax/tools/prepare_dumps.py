r"""Public dumps -> a pre-training corpus and knowledge graph, on Apache Beam.

  python -m ernie3_jax.tools.prepare_dumps --output_dir=/data/ernie3_en \
      --wikipedia_dump=enwiki-latest-pages-articles.xml.bz2 \
      --wikidata_dump=latest-all.json.bz2 --language=en \
      -- --runner=DirectRunner --direct_num_workers=8

Writes into --output_dir:
  corpus-*.jsonl         articles as {"title", "text"}, cleaned as ERNIE 3.0 cleaned its
                         corpus (ernie3_jax/data/corpus_cleaning.py; --noclean skips it)
  corpus_report.json     pages read and skipped, and what each cleaning rule removed
  kg.tsv, aliases.tsv    the Wikidata items with an article in --language's Wikipedia,
                         their item-valued statements (ernie3_jax/data/wikidata.py)
  wikidata_report.json   entities and statements kept and dropped, by reason
--corpus='GLOB' cleans a corpus of your own (any format the corpus readers take) instead
of (or beside) the Wikipedia dump. Everything after `--` configures Beam (see
`beam_runner`: more than one local worker runs in as many processes). Then pre-train
with gin_configs/experiments/wikipedia_wikidata.gin (README, "From public dumps").
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

from absl import app
from absl import flags

from ernie3_jax.runtime import storage

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the files go.")
_WIKIPEDIA = flags.DEFINE_list("wikipedia_dump", [], "pages-articles .xml(.bz2) dumps.")
_WIKIDATA = flags.DEFINE_list("wikidata_dump", [], "Wikidata JSON dumps (.json, .gz, .bz2).")
_CORPUS = flags.DEFINE_string("corpus", None, "Your own corpus (globs) to clean as well.")
_CLEAN = flags.DEFINE_bool("clean", True, "Apply ERNIE 3.0's corpus cleaning.")
_LANGUAGE = flags.DEFINE_string("language", "en", "Wikipedia language (labels, sitelinks).")
_MIN_SITELINKS = flags.DEFINE_integer("min_sitelinks", 1, "Items need this many sitelinks.")
_ALLOW = flags.DEFINE_list("allow_properties", [], "Only these properties (empty: all).")
_DENY = flags.DEFINE_list("deny_properties", [], "Never these properties.")
_MAX_TRIPLES = flags.DEFINE_integer("max_triples_per_entity", 100,
                                    "Statements kept per item, in claim order.")
_SHARDS = flags.DEFINE_integer("num_shards", 0, "Corpus files (0: Beam decides).")


def corpus_pipeline(pipeline, output_dir: str, wikipedia_dumps: Sequence[str],
                    corpus: str | None, clean: bool, num_shards: int = 0) -> None:
  """Articles (and `corpus`'s documents) -> cleaned corpus-*.jsonl + corpus_report.json."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from ernie3_jax.data import beam_counts, corpus_cleaning, corpus_readers, wikipedia_dump
  # pylint: enable=g-import-not-at-top

  def events(page):
    for tag, value in wikipedia_dump.page_events(wikipedia_dump.Page(*page)):
      yield beam.pvalue.TaggedOutput(tag, value)

  pages = (pipeline | "wikipedia/files" >> beam.Create(list(wikipedia_dumps))
           | "wikipedia/pages" >> beam.FlatMap(
               lambda p: map(tuple, wikipedia_dump.read_pages(p)))
           | "wikipedia/spread" >> beam.Reshuffle()
           | "wikipedia/text" >> beam.FlatMap(events).with_outputs("count", "article"))
  documents, counts = pages.article, [pages["count"]]
  if corpus:
    paths = corpus_readers.expand_paths(corpus)
    own = (pipeline | "corpus/files" >> beam.Create(paths)
           | "corpus/read" >> beam.FlatMap(
               lambda p: ((d.title, d.text) for d in corpus_readers.read_documents([p]))))
    documents = (documents, own) | "corpus/merge" >> beam.Flatten()
  if clean:
    documents, cleaning = corpus_cleaning.CleanCorpus(documents)
    counts += cleaning
  _ = (documents | "corpus/json" >> beam.Map(
      lambda d: json.dumps({"title": d[0], "text": d[1]}, ensure_ascii=False))
       | "corpus/write" >> beam.io.WriteToText(os.path.join(output_dir, "corpus"),
                                              file_name_suffix=".jsonl",
                                              num_shards=num_shards))
  beam_counts.write_report(counts, None, os.path.join(output_dir, "corpus_report.json"),
                           "corpus_report")


def run(output_dir: str, wikipedia_dumps: Sequence[str], wikidata_dumps: Sequence[str],
        corpus: str | None, rules, clean: bool = True, pipeline_args: Sequence[str] = (),
        num_shards: int = 0) -> None:
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from ernie3_jax.data import wikidata  # pylint: disable=g-import-not-at-top
  from ernie3_jax.tools import beam_runner  # pylint: disable=g-import-not-at-top
  for path in list(wikipedia_dumps) + list(wikidata_dumps):
    if not storage.isfile(path):
      raise FileNotFoundError(f"dump {path!r} does not exist")
  storage.makedirs(output_dir)
  options = beam_runner.pipeline_options(pipeline_args)
  print(beam_runner.describe(options), flush=True)
  with beam.Pipeline(options=options) as pipeline:
    if wikipedia_dumps or corpus:
      corpus_pipeline(pipeline, output_dir, wikipedia_dumps, corpus, clean, num_shards)
    if wikidata_dumps:
      wikidata.dump_to_kg(pipeline, wikidata_dumps, output_dir, rules)


def main(argv: Sequence[str]) -> None:
  from ernie3_jax.data import wikidata  # pylint: disable=g-import-not-at-top
  if not _OUTPUT_DIR.value:
    raise app.UsageError("--output_dir is required")
  if not (_WIKIPEDIA.value or _WIKIDATA.value or _CORPUS.value):
    raise app.UsageError("give --wikipedia_dump, --wikidata_dump or --corpus")
  rules = wikidata.Rules(_LANGUAGE.value, _MIN_SITELINKS.value, tuple(_ALLOW.value),
                         tuple(_DENY.value), _MAX_TRIPLES.value)
  run(storage.resolve(_OUTPUT_DIR.value, "--output_dir"), _WIKIPEDIA.value, _WIKIDATA.value, _CORPUS.value,
      rules, _CLEAN.value, [a for a in argv[1:] if a != "--"], _SHARDS.value)
  for name in ("corpus_report.json", "wikidata_report.json"):
    path = os.path.join(_OUTPUT_DIR.value, name)
    if storage.exists(path):
      print(f"{path}:\n{storage.read_text(path)}")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl takes its flags; the rest (after `--` or unknown) goes to Beam."""
  return flags.FLAGS(argv, known_only=True)


if __name__ == "__main__":
  app.run(main, argv=sys.argv, flags_parser=_parse_flags)
