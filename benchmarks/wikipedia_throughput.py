r"""MB of bz2 per minute (and per core) of our Wikipedia stage and of wikiextractor.

  python benchmarks/wikipedia_throughput.py --dump=enwiki-...-pages-articles.xml.bz2 \
      --workers=1,2 --repeats=3

Both read the same `pages-articles` dump from its .bz2 file to plain text:
* ours: `ernie3_jax.data.wikipedia_dump.extract` (read, parse, render; what
  `prepare_dumps` runs per page before cleaning), with 1 and with N worker processes;
* wikiextractor (PyPI, the `[bench]` extra), run as people run it
  (`python -m wikiextractor.WikiExtractor DUMP --json --processes N`), in a subprocess.

Per configuration: the wall-clock rate (MB of bz2 / minute) and the rate per core, where
the core-minutes are the CPU time (user + system) of every process the run used; the
best of --repeats runs is kept. Wall rates need idle cores to mean anything; the per-core
rates are the fairer comparison on a shared machine. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_DUMP = flags.DEFINE_string(
    "dump", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "tests", "fixtures", "wikipedia",
                         "enwiki-pages-articles-sample.xml.bz2"),
    "A pages-articles .xml.bz2 dump.")
_WORKERS = flags.DEFINE_list("workers", ["1", "2"], "Worker processes to measure.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs per configuration (the best is kept).")
_WIKIEXTRACTOR = flags.DEFINE_boolean("wikiextractor", True,
                                      "Also run wikiextractor (if installed).")
_OUTPUT = flags.DEFINE_string("output", None, "Append the JSON line to this file.")


def _cpu_seconds() -> float:
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(fn) -> tuple[float, float, object]:
  cpu, wall = _cpu_seconds(), time.perf_counter()
  result = fn()
  return time.perf_counter() - wall, _cpu_seconds() - cpu, result


def run_ours(dump: str, workers: int) -> tuple[int, dict]:
  from ernie3_jax.data import wikipedia_dump  # pylint: disable=g-import-not-at-top
  articles, characters = 0, 0
  for tag, value in wikipedia_dump.extract(dump, workers=workers):
    if tag == "article":
      articles += 1
      characters += len(value[1])
  return articles, {"characters": characters}


def run_wikiextractor(dump: str, workers: int) -> tuple[int, dict]:
  out = tempfile.mkdtemp(prefix="wikiextractor_")
  try:
    subprocess.run([sys.executable, "-m", "wikiextractor.WikiExtractor", dump, "-o", out,
                    "--json", "--processes", str(workers), "-q"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    articles, characters = 0, 0
    for root, _, files in os.walk(out):
      for name in files:
        with open(os.path.join(root, name), encoding="utf-8") as f:
          for line in f:
            text = json.loads(line)["text"]
            articles += bool(text.strip())
            characters += len(text)
    return articles, {"characters": characters}
  finally:
    shutil.rmtree(out, ignore_errors=True)


def measure(fn, dump: str, workers: int, repeats: int) -> dict:
  megabytes = os.path.getsize(dump) / 1e6
  best = None
  for _ in range(repeats):
    wall, cpu, (articles, extra) = _timed(lambda: fn(dump, workers))
    if best is None or wall < best[0]:
      best = (wall, cpu, articles, extra)
  wall, cpu, articles, extra = best
  return {"workers": workers, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
          "mb_bz2_per_min": round(megabytes / wall * 60, 2),
          "mb_bz2_per_core_min": round(megabytes / max(cpu, 1e-9) * 60, 2),
          "articles": articles, **extra}


def main(argv):
  del argv
  import bench_common  # pylint: disable=g-import-not-at-top
  dump = _DUMP.value
  workers = [int(w) for w in _WORKERS.value]
  results = {"ours": [measure(run_ours, dump, w, _REPEATS.value) for w in workers]}
  try:
    import wikiextractor  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    have = True
  except ImportError:
    have = False
  if _WIKIEXTRACTOR.value and have:
    results["wikiextractor"] = [measure(run_wikiextractor, dump, w, _REPEATS.value)
                                for w in workers]
  else:
    results["wikiextractor"] = ("skipped: not installed (pip install -e '.[bench]')"
                                if not have else "skipped: --nowikiextractor")
  record = {"benchmark": "wikipedia_throughput", "machine": bench_common.machine(),
            "dump": os.path.basename(dump),
            "dump_mb_bz2": round(os.path.getsize(dump) / 1e6, 3), "results": results}
  if isinstance(results["wikiextractor"], list):
    record["ours_over_wikiextractor_per_core"] = round(
        results["ours"][0]["mb_bz2_per_core_min"]
        / results["wikiextractor"][0]["mb_bz2_per_core_min"], 2)
  bench_common.emit(record, _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
