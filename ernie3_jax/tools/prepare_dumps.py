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
The run writes into a fresh folder beside --output_dir (`.NAME.partial-XXXXXXXX`) and
moves it into place only when every file and report is written, so the folder never
mixes two runs and its reports describe exactly the files beside them. A non-empty
--output_dir is refused unless --overwrite is given (and even then only when it holds
nothing but this tool's outputs); the old folder is replaced only after the new run
completed. Output that is empty or under --min_documents / --min_triples /
--min_aliases stops the run (exit status 1) with the report's counts, before anything is
replaced; the staged folder is kept for inspection and named.
--corpus='GLOB' cleans a corpus of your own (any format the corpus readers take) instead
of (or beside) the Wikipedia dump. Everything after `--` configures Beam (see
`beam_runner`: more than one local worker runs in as many processes). Then pre-train
with gin_configs/experiments/wikipedia_wikidata.gin (README, "From public dumps").
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import sys
from typing import Sequence

from absl import app
from absl import flags

from ernie3_jax.runtime import output_folder
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
_KEEP_ENDED = flags.DEFINE_bool(
    "keep_ended_statements", False,
    "Keep statements with an ending qualifier (end time P582 etc.) as history; by default "
    "the KG holds current facts only.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace a non-empty --output_dir of this tool's outputs (only "
    "once the new run has completed).")
_MIN_DOCUMENTS = flags.DEFINE_integer("min_documents", 1,
                                      "Fewer documents written stops the run.")
_MIN_TRIPLES = flags.DEFINE_integer("min_triples", 1, "Fewer KG triples stops the run.")
_MIN_ALIASES = flags.DEFINE_integer("min_aliases", 1, "Fewer alias lines stops the run.")

# What a run writes; --overwrite replaces only a folder holding nothing else.
OUTPUT_PATTERNS = ("corpus-*.jsonl", "corpus_report.json", "kg.tsv", "aliases.tsv",
                   "wikidata_report.json")
CORPUS_REPORT = "corpus_report.json"
WIKIDATA_REPORT = "wikidata_report.json"


class EmptyOutputError(RuntimeError):
  """A run whose output is empty or too small to build a vocabulary or train on."""


@dataclasses.dataclass(frozen=True)
class Minimums:
  documents: int = 1
  triples: int = 1
  aliases: int = 1


def own_file(name: str) -> bool:
  return any(fnmatch.fnmatchcase(name, p) for p in OUTPUT_PATTERNS)


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

  def as_json(document):
    yield beam.pvalue.TaggedOutput("count", "documents written")
    yield json.dumps({"title": document[0], "text": document[1]}, ensure_ascii=False)

  lines = documents | "corpus/json" >> beam.FlatMap(as_json).with_outputs("count",
                                                                          main="jsonl")
  _ = lines.jsonl | "corpus/write" >> beam.io.WriteToText(
      storage.join(output_dir, "corpus"), file_name_suffix=".jsonl", num_shards=num_shards)
  counts.append(lines["count"])
  beam_counts.write_report(counts, None, storage.join(output_dir, CORPUS_REPORT),
                           "corpus_report")


def check_sizes(output_dir: str, corpus: bool, kg: bool, minimums: Minimums) -> None:
  """EmptyOutputError, with the reports' counts, when a part of the output is under its
  minimum: documents (corpus), triples and alias lines (KG)."""
  from ernie3_jax.data import beam_counts  # pylint: disable=g-import-not-at-top
  problems, shown = [], []
  checks = []
  if corpus:
    checks.append((CORPUS_REPORT, [("documents written", minimums.documents,
                                    "--min_documents")]))
  if kg:
    checks.append((WIKIDATA_REPORT, [("triples written", minimums.triples, "--min_triples"),
                                     ("alias lines written", minimums.aliases,
                                      "--min_aliases")]))
  for report_name, wanted in checks:
    counts = beam_counts.read_report(storage.join(output_dir, report_name))["counts"]
    for key, minimum, flag in wanted:
      if counts.get(key, 0) < minimum:
        problems.append(f"{counts.get(key, 0)} {key} ({flag}={minimum})")
    shown.append(f"{report_name}: {json.dumps(counts, ensure_ascii=False)}")
  if problems:
    raise EmptyOutputError("the output is too small to train on: " + "; ".join(problems)
                           + "\n" + "\n".join(shown))


def run(output_dir: str, wikipedia_dumps: Sequence[str], wikidata_dumps: Sequence[str],
        corpus: str | None, rules, clean: bool = True, pipeline_args: Sequence[str] = (),
        num_shards: int = 0, overwrite: bool = False,
        minimums: Minimums = Minimums()) -> None:
  """Writes the outputs into a staging folder beside `output_dir`, checks their sizes,
  then puts them in `output_dir`'s place (see the module docstring)."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from ernie3_jax.data import wikidata  # pylint: disable=g-import-not-at-top
  from ernie3_jax.tools import beam_runner  # pylint: disable=g-import-not-at-top
  for path in list(wikipedia_dumps) + list(wikidata_dumps):
    if not storage.isfile(path):
      raise FileNotFoundError(f"dump {path!r} does not exist")
  output_folder.check_target(output_dir, overwrite, "--output_dir", own_file)
  options = beam_runner.pipeline_options(pipeline_args)
  print(beam_runner.describe(options), flush=True)
  staging = output_folder.new_staging(output_dir)
  try:
    with beam.Pipeline(options=options) as pipeline:
      if wikipedia_dumps or corpus:
        corpus_pipeline(pipeline, staging, wikipedia_dumps, corpus, clean, num_shards)
      if wikidata_dumps:
        wikidata.dump_to_kg(pipeline, wikidata_dumps, staging, rules)
  except BaseException:
    storage.rmtree(staging)  # a failed run's partial files are of no use
    raise
  try:
    check_sizes(staging, bool(wikipedia_dumps or corpus), bool(wikidata_dumps), minimums)
  except EmptyOutputError as e:
    raise EmptyOutputError(f"{e}\n--output_dir={output_dir!r} was left as it was; this "
                           f"run's files are in {staging!r} for inspection") from None
  output_folder.publish(staging, output_dir)


def main(argv: Sequence[str]) -> None:
  from ernie3_jax.data import wikidata  # pylint: disable=g-import-not-at-top
  if not _OUTPUT_DIR.value:
    raise app.UsageError("--output_dir is required")
  if not (_WIKIPEDIA.value or _WIKIDATA.value or _CORPUS.value):
    raise app.UsageError("give --wikipedia_dump, --wikidata_dump or --corpus")
  rules = wikidata.Rules(_LANGUAGE.value, _MIN_SITELINKS.value, tuple(_ALLOW.value),
                         tuple(_DENY.value), _MAX_TRIPLES.value, _KEEP_ENDED.value)
  output_dir = storage.resolve(_OUTPUT_DIR.value, "--output_dir")
  try:
    run(output_dir, _WIKIPEDIA.value, _WIKIDATA.value, _CORPUS.value, rules, _CLEAN.value,
        [a for a in argv[1:] if a != "--"], _SHARDS.value, _OVERWRITE.value,
        Minimums(_MIN_DOCUMENTS.value, _MIN_TRIPLES.value, _MIN_ALIASES.value))
  except (output_folder.OutputFolderError, EmptyOutputError) as e:
    print(f"prepare_dumps: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  for name in (CORPUS_REPORT, WIKIDATA_REPORT):
    path = storage.join(output_dir, name)
    if storage.exists(path):
      print(f"{path}:\n{storage.read_text(path)}")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl takes its flags; the rest (after `--` or unknown) goes to Beam."""
  return flags.FLAGS(argv, known_only=True)


if __name__ == "__main__":
  app.run(main, argv=sys.argv, flags_parser=_parse_flags)
