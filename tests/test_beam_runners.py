"""Beam runners for the preprocessing tools: local runs name their engine, more than one
worker runs in as many processes, and the dump pipeline writes the same files with two
worker processes, and on a Dask cluster of two worker processes, as with one; Beam's own
DaskRunner loses outputs as docs/DATA.md says."""

import bz2
import json
import os

import pytest

from ernie3_jax.data import wikidata
from ernie3_jax.tools import beam_runner, prepare_dumps
from tests import beam_testing
from tests.beam_testing import WorkerProcesses

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "dumps")


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


# ------------------------------------------------------------------ Dask


@pytest.fixture(scope="module", name="cluster")
def fixture_cluster():
  yield from beam_testing.dask_cluster()


def test_the_dump_pipeline_writes_the_same_on_dask(dumps, cluster, tmp_path):
  one = prepare(dumps, tmp_path / "direct", ["--runner=DirectRunner"])
  assert prepare(dumps, tmp_path / "dask", beam_testing.dask_args(cluster)) == one


def toy_pipeline(out, beam_args):
  """Two sinks, the first fed by a multi-output step's main output, the second (with
  Beam's default sharding) by its tagged output."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  with beam.Pipeline(options=beam_runner.pipeline_options(beam_args)) as pipeline:
    split = (pipeline | beam.Create(range(6)) | beam.FlatMap(
        lambda x: [x] + ([beam.pvalue.TaggedOutput("odd", -x)] if x % 2 else []))
             .with_outputs("odd", main="all"))
    _ = split.all | "all" >> beam.Map(str) | "write_all" >> beam.io.WriteToText(
        str(out / "all"), shard_name_template="")
    _ = split.odd | "odd" >> beam.Map(str) | "write_odd" >> beam.io.WriteToText(
        str(out / "odd"))
  return {name: sorted(open(out / name).read().split()) for name in os.listdir(out)
          if not name.startswith("beam-temp")}, sorted(
              os.path.join(d, f) for d, _, files in os.walk(out) for f in files
              if "beam-temp" in d)


def test_beams_own_dask_runner_loses_outputs_and_this_one_does_not(cluster, tmp_path):
  expected = {"all": ["0", "1", "2", "3", "4", "5"], "odd-00000-of-00001": ["-1", "-3", "-5"]}
  (tmp_path / "direct").mkdir()
  assert toy_pipeline(tmp_path / "direct", ["--runner=DirectRunner"]) == (expected, [])
  (tmp_path / "ours").mkdir()
  written, temporary = toy_pipeline(tmp_path / "ours", beam_testing.dask_args(cluster))
  odd = sorted(v for name in list(written) if name.startswith("odd-")
               for v in written.pop(name))  # one shard per partition
  assert odd == expected["odd-00000-of-00001"]
  assert written == {"all": expected["all"]} and temporary == []
  (tmp_path / "beam").mkdir()
  written, temporary = toy_pipeline(
      tmp_path / "beam", beam_testing.dask_args(cluster, beam_testing.BEAM_DASK_RUNNER))
  # Only the last sink ran; its finalisation saw no shard (they are emitted from
  # finish_bundle, which Beam's translation drops) and wrote an empty one; the temporary
  # files stay, and hold the main output's elements too (the outputs are not split).
  assert written == {"odd-00000-of-00001": []}
  assert temporary and all(sorted(open(f).read().split()) == sorted(
      expected["all"] + expected["odd-00000-of-00001"]) for f in temporary)


# ------------------------------------------------------------------ the benchmark


def test_the_worker_benchmark_prints_its_figures(tmp_path):
  """benchmarks/beam_workers.py at a tiny size: one JSON line with a time per setting and
  the speed-ups (the script itself checks every setting wrote the same outputs)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / "beam_workers.jsonl"
  proc = subprocess.run(
      [sys.executable, "benchmarks/beam_workers.py", "--documents=20", "--copies=1",
       "--pipelines=dumps", "--workers=1,2", f"--output={out}"],
      cwd=root, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (line,) = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  record = json.loads(line)
  assert json.loads(out.read_text()) == record
  assert set(record["seconds"]["dumps"]) == {"1", "1_multi_processing", "2"}
  assert all(s > 0 for s in record["seconds"]["dumps"].values())
  assert record["speedup_over_1_worker"]["dumps"]["1"] == 1.0
  assert record["sizes"]["dumps"]["pages"] == 20
