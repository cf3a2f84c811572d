"""Beam runners for the preprocessing tools: local runs name their engine, more than one
worker runs in as many processes, and the dump pipeline writes the same files with two
worker processes as with one."""

import bz2
import json
import os
import threading

import pytest

from ernie3_jax.data import wikidata
from ernie3_jax.tools import beam_runner, prepare_dumps

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "dumps")
SDK_WORKER = "apache_beam.runners.worker.sdk_worker_main"


# ------------------------------------------------------------------ options


def _view(options, name):
  from apache_beam.options import pipeline_options as po  # pylint: disable=g-import-not-at-top
  return options.view_as(getattr(po, name))


@pytest.mark.parametrize("args", [[], ["--runner=DirectRunner"], ["--runner=direct"],
                                  ["--runner=FnApiRunner"]])
def test_a_local_run_names_the_engine_and_one_worker_stays_in_process(args):
  options = beam_runner.pipeline_options(args)
  assert _view(options, "StandardOptions").runner == "FnApiRunner"  # Prism is not tried
  assert _view(options, "DirectOptions").direct_running_mode == "in_memory"


@pytest.mark.parametrize("workers", [2, 16, 0])  # 0: every core
def test_more_than_one_worker_runs_in_processes(workers):
  options = beam_runner.pipeline_options(["--runner=DirectRunner",
                                          f"--direct_num_workers={workers}"])
  direct = _view(options, "DirectOptions")
  assert direct.direct_running_mode == "multi_processing"
  assert direct.direct_num_workers == workers
  # An explicit in_memory would give no parallelism either; multi_threading is kept.
  options = beam_runner.pipeline_options(["--direct_num_workers=2",
                                          "--direct_running_mode=in_memory"])
  assert _view(options, "DirectOptions").direct_running_mode == "multi_processing"
  options = beam_runner.pipeline_options(["--direct_num_workers=2",
                                          "--direct_running_mode=multi_threading"])
  assert _view(options, "DirectOptions").direct_running_mode == "multi_threading"


def test_other_runners_get_the_options_as_given():
  args = ["--runner=DataflowRunner", "--direct_num_workers=2", "--project=p"]
  options = beam_runner.pipeline_options(args)
  assert _view(options, "StandardOptions").runner == "DataflowRunner"
  assert _view(options, "DirectOptions").direct_running_mode == "in_memory"
  from apache_beam.options import pipeline_options as po  # pylint: disable=g-import-not-at-top
  assert (options.get_all_options(drop_default=True)
          == po.PipelineOptions(args).get_all_options(drop_default=True))


# ------------------------------------------------------------------ processes


class WorkerProcesses:
  """Collects, while active, the pids of Beam SDK worker processes below this process."""

  def __init__(self):
    self.pids: set[int] = set()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._watch, daemon=True)

  @staticmethod
  def _descendants(root: int) -> set[int]:
    parents = {}
    for name in os.listdir("/proc"):
      if name.isdigit():
        try:
          with open(f"/proc/{name}/stat") as f:
            parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
          pass
    found, frontier = set(), {root}
    while frontier:
      frontier = {p for p, parent in parents.items() if parent in frontier} - found
      found |= frontier
    return found

  def _watch(self):
    while not self._stop.wait(0.05):
      for pid in self._descendants(os.getpid()):
        try:
          with open(f"/proc/{pid}/cmdline", "rb") as f:
            if SDK_WORKER.encode() in f.read():
              self.pids.add(pid)
        except OSError:
          pass

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def test_two_workers_process_bundles_in_two_other_processes(tmp_path):
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  options = beam_runner.pipeline_options(["--direct_num_workers=2"])
  with beam.Pipeline(options=options) as pipeline:
    _ = (pipeline | beam.Create(range(40)) | beam.Reshuffle()
         | beam.Map(lambda _: os.getpid()) | beam.combiners.Count.PerElement()
         | beam.combiners.ToDict() | beam.Map(json.dumps)
         | beam.io.WriteToText(str(tmp_path / "pids.json"), shard_name_template=""))
  pids = json.loads((tmp_path / "pids.json").read_text())
  assert len(pids) == 2 and str(os.getpid()) not in pids, pids
  assert sum(pids.values()) == 40


# ------------------------------------------------------------------ the dump pipeline


@pytest.fixture(scope="module", name="dumps")
def fixture_dumps(tmp_path_factory):
  dumps = tmp_path_factory.mktemp("dumps")
  with open(os.path.join(FIXTURES, "wikidata.json"), "rb") as f:
    (dumps / "latest-all.json.bz2").write_bytes(bz2.compress(f.read()))
  with open(os.path.join(FIXTURES, "wikipedia.xml"), "rb") as f:
    (dumps / "pages-articles.xml.bz2").write_bytes(bz2.compress(f.read()))
  return dumps


def prepare(dumps, out, beam_args):
  prepare_dumps.run(str(out), [str(dumps / "pages-articles.xml.bz2")],
                    [str(dumps / "latest-all.json.bz2")], None, wikidata.Rules("en"),
                    pipeline_args=beam_args)
  return dump_outputs(out)


def dump_outputs(out) -> dict:
  """What prepare_dumps wrote, independent of how the corpus was sharded."""
  names = sorted(os.listdir(out))
  assert not [n for n in names if n.startswith("beam-temp")], names
  lines = lambda name: sorted(open(os.path.join(out, name), encoding="utf-8").read().splitlines())
  corpus = sorted(line for n in names if n.startswith("corpus-") for line in lines(n))
  return {"kg": lines("kg.tsv"), "aliases": lines("aliases.tsv"), "corpus": corpus,
          "corpus_report": json.load(open(os.path.join(out, "corpus_report.json"))),
          "wikidata_report": json.load(open(os.path.join(out, "wikidata_report.json")))}


def test_the_dump_pipeline_writes_the_same_with_two_worker_processes(dumps, tmp_path):
  one = prepare(dumps, tmp_path / "one", ["--runner=DirectRunner"])
  with WorkerProcesses() as workers:
    two = prepare(dumps, tmp_path / "two", ["--runner=DirectRunner", "--direct_num_workers=2"])
  assert len(workers.pids) >= 2, workers.pids  # the bundles ran outside this process
  assert two == one
  assert len(one["kg"]) == 3 and len(one["corpus"]) == 2
  assert one["wikidata_report"]["counts"]["items read"] == 6
