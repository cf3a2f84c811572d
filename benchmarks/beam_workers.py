r"""Wall time of the Beam pipelines with 1 and with 2 local worker processes.

  python benchmarks/beam_workers.py --workers=1,2 --copies=2

Two pipelines, each run end to end (start-up, worker processes, writing) with
`--direct_num_workers=N` through the tools' own options (`ernie3_jax.tools.beam_runner`:
N > 1 runs N SDK worker processes):
  dumps      prepare_dumps on a Wikipedia XML dump made of the embedded corpus (every
             document, --copies times, as a page with wikitext markup) and a Wikidata
             dump of the test fixture's entities repeated as many times
  alignment  preprocess step 1, the UKTP alignment, of the embedded corpus (in
             --files files) against the embedded knowledge graph, both splits
Prints one JSON line: per pipeline and worker count the seconds (best of --repeats),
the input size, and the speed-up of each count over 1 worker (in Beam's in_memory mode,
what one worker runs in); with --process_baseline also 1 worker in multi_processing mode,
which separates the mode's own cost (a gRPC hop per bundle, one more process) from the
parallelism. Each run's outputs are
checked equal to the 1-worker run's. The machine's load average is recorded: on a
shared machine the figures move with it.
"""

from __future__ import annotations

import bz2
import html
import json
import os
import re
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_WORKERS = flags.DEFINE_list("workers", ["1", "2"], "Worker counts to time.")
_PIPELINES = flags.DEFINE_list("pipelines", ["dumps", "alignment"], "dumps, alignment.")
_COPIES = flags.DEFINE_integer("copies", 2, "Times each document (and entity) is repeated.")
_DOCUMENTS = flags.DEFINE_integer("documents", 0, "First documents of the embedded corpus "
                                  "used (0: all).")
_PROCESS_BASELINE = flags.DEFINE_bool(
    "process_baseline", True, "Also time 1 worker in multi_processing mode (the cost of "
    "the mode itself, apart from the parallelism).")
_FILES = flags.DEFINE_integer("files", 8, "Corpus files the alignment reads.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Runs per worker count (the best is kept).")
_OUTPUT = flags.DEFINE_string("output", None, "Append the JSON line to this file.")

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "tests", "fixtures", "dumps")
MARKUP = ("{{Infobox thing\n| name = %s\n}}\n'''%s''' <ref>{{cite web |url=http://example.org"
          " |title=x}}</ref>\n\n%s\n\n[[Category:Things]]")


def _documents():
  from ernie3_jax.data import corpus_readers  # pylint: disable=g-import-not-at-top
  with open(corpus_readers.EMBEDDED_CORPUS, encoding="utf-8") as f:
    docs = [json.loads(line) for line in f]
  return docs[:_DOCUMENTS.value] if _DOCUMENTS.value else docs


def make_dumps(directory: str, copies: int) -> tuple[str, str, int]:
  """A pages-articles dump and a Wikidata dump; returns their paths and the page count."""
  pages = []
  for copy in range(copies):
    for i, doc in enumerate(_documents()):
      title = f"{doc['title']} ({copy})" if copy else doc["title"]
      text = MARKUP % (title, title, doc["text"])
      pages.append(f"<page><title>{html.escape(title)}</title><ns>0</ns><id>{copy}{i}</id>"
                   f"<revision><id>1</id><text xml:space=\"preserve\">{html.escape(text)}"
                   "</text></revision></page>")
  xml = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">\n'
         + "\n".join(pages) + "\n</mediawiki>\n")
  wikipedia = os.path.join(directory, "pages-articles.xml.bz2")
  with open(wikipedia, "wb") as f:
    f.write(bz2.compress(xml.encode()))
  with open(os.path.join(FIXTURES, "wikidata.json"), encoding="utf-8") as f:
    lines = [l.rstrip(",\n") for l in f if l.startswith("{")]
  items = [l for l in lines if '"type": "item"' in l]
  others = [l for l in lines if '"type": "item"' not in l]
  # Each copy of an item gets other ids (and titles), its statements pointing at the copy.
  shifted = [re.sub(r'"(?:numeric-id": |id": "Q)(\d+)',
                    lambda m, c=c: m.group(0)[:-len(m.group(1))] + str(int(m.group(1)) + 1000 * c),
                    re.sub(r'"title": "([^"]+)"', lambda m, c=c: f'"title": "{m.group(1)} {c}"', l))
             for c in range(copies * 50) for l in items]
  wikidata = os.path.join(directory, "latest-all.json.bz2")
  with open(wikidata, "wb") as f:
    f.write(bz2.compress(("[\n" + ",\n".join(shifted + others) + "\n]\n").encode()))
  return wikipedia, wikidata, len(pages)


def dumps_outputs(out: str) -> dict:
  names = sorted(os.listdir(out))
  read = lambda n: sorted(open(os.path.join(out, n), encoding="utf-8").read().splitlines())
  return {"kg": read("kg.tsv"), "aliases": read("aliases.tsv"),
          "corpus": sorted(l for n in names if n.startswith("corpus-") for l in read(n)),
          "reports": [json.load(open(os.path.join(out, n))) for n in names
                      if n.endswith("_report.json")]}


def make_corpus(directory: str, files: int) -> str:
  docs = _documents()
  for i in range(files):
    with open(os.path.join(directory, f"part{i}.jsonl"), "w", encoding="utf-8") as f:
      f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs[i::files])
  return os.path.join(directory, "*.jsonl")


def alignment_outputs(out: str) -> dict:
  from ernie3_jax.data import beam_alignment  # pylint: disable=g-import-not-at-top
  return {split: beam_alignment.read_alignment(out, split) for split in ("train", "validation")}


def main(argv):
  del argv
  import bench_common  # pylint: disable=g-import-not-at-top
  from ernie3_jax.data import corpus_readers, wikidata  # pylint: disable=g-import-not-at-top
  from ernie3_jax.data import data_config as dc  # pylint: disable=g-import-not-at-top
  # (preprocess's flags clash with prepare_dumps's: its step 1 is rebuilt as it runs it)
  from ernie3_jax.tools import beam_runner, prepare_dumps  # pylint: disable=g-import-not-at-top
  workdir = tempfile.mkdtemp(prefix="beam_workers_")
  load_before = os.getloadavg()
  results, sizes = {}, {}
  try:
    if "dumps" in _PIPELINES.value:
      wikipedia, wikidata_dump, pages = make_dumps(workdir, _COPIES.value)
      sizes["dumps"] = {"pages": pages, "wikipedia_bz2_bytes": os.path.getsize(wikipedia),
                        "wikidata_bz2_bytes": os.path.getsize(wikidata_dump)}

      def dumps(out, args):
        prepare_dumps.run(out, [wikipedia], [wikidata_dump], None, wikidata.Rules("en"),
                          pipeline_args=args)
        return dumps_outputs(out)
      results["dumps"] = dumps
    if "alignment" in _PIPELINES.value:
      corpus = make_corpus(workdir, _FILES.value)
      kg = os.path.join(corpus_readers.EMBEDDED_DIR, "kg.tsv")
      aliases = os.path.join(corpus_readers.EMBEDDED_DIR, "aliases.tsv")
      config = dc.DataConfig(corpus=corpus, kg=kg, aliases=aliases)
      sizes["alignment"] = {"documents": len(_documents()), "files": _FILES.value,
                            "triples": sum(1 for _ in open(kg, encoding="utf-8"))}

      def alignment(out, args):
        import apache_beam as beam  # pylint: disable=g-import-not-at-top
        from ernie3_jax.data import beam_alignment  # pylint: disable=g-import-not-at-top
        with beam.Pipeline(options=beam_runner.pipeline_options(args)) as pipeline:
          for split in ("train", "validation"):
            beam_alignment.align_triples_pipeline(pipeline, config, split, out)
        return alignment_outputs(out)
      results["alignment"] = alignment
    settings = [(w, [f"--direct_num_workers={w}"]) for w in _WORKERS.value]
    if _PROCESS_BASELINE.value:
      settings.insert(1, ("1_multi_processing", ["--direct_num_workers=1",
                                                 "--direct_running_mode=multi_processing"]))
    seconds: dict[str, dict[str, float]] = {}
    for name, run in results.items():
      reference = None
      for label, args in settings:
        best = float("inf")
        for repeat in range(_REPEATS.value):
          out = os.path.join(workdir, f"{name}_{label}_{repeat}")
          start = time.perf_counter()
          outputs = run(out, ["--runner=DirectRunner", *args])
          best = min(best, time.perf_counter() - start)
          reference = outputs if reference is None else reference
          if outputs != reference:
            raise AssertionError(f"{name}: {label} wrote other outputs than {settings[0][0]}")
          shutil.rmtree(out)
        seconds.setdefault(name, {})[label] = round(best, 2)
        print(f"{name}: {label} worker(s) {best:.1f} s", flush=True)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  base = _WORKERS.value[0]
  record = {"benchmark": "beam_workers", "unit": "s", "machine": bench_common.machine(),
            "cores_usable": len(os.sched_getaffinity(0)), "runner": "FnApiRunner",
            "mode_over_1_worker": "multi_processing", "repeats": _REPEATS.value,
            "load_average_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "sizes": sizes, "seconds": seconds,
            f"speedup_over_{base}_worker": {
                name: {w: round(s[base] / t, 2) for w, t in s.items()}
                for name, s in seconds.items()}}
  bench_common.emit(record, _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
