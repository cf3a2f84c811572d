"""Beam preprocessing (DirectRunner): the alignment equals the in-process one, the
seqio caches hold exactly the rows the tasks produce, training reads them, and two
worker processes, or a Dask cluster of two worker processes, write the same alignment
and caches as one."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from ernie3_jax.config import gin_utils
from ernie3_jax.runtime import tf_runtime  # noqa: F401
from ernie3_jax.data import beam_alignment, corpus_readers, triple_alignment
from ernie3_jax.data import data_config as dc
import seqio
import ernie3_jax.tasks  # noqa: F401  (registers the tasks and `cache_settings`)
from tests import beam_testing
from tests.beam_testing import WorkerProcesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_DOCS = 120
LENGTH = 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """The first documents of the embedded corpus, in two files (two read shards), and
  the embedded KG's triples about their subjects (to keep the pipeline small)."""
  directory = tmp_path_factory.mktemp("corpus")
  with open(corpus_readers.EMBEDDED_CORPUS) as f:
    lines = [next(f) for _ in range(NUM_DOCS)]
  for i, part in enumerate((lines[:NUM_DOCS // 2], lines[NUM_DOCS // 2:])):
    (directory / f"part{i}.jsonl").write_text("".join(part))
  titles = {json.loads(line)["title"] for line in lines}
  with open(os.path.join(corpus_readers.EMBEDDED_DIR, "kg.tsv")) as f:
    triples = [line for line in f if line.split("\t")[0] in titles]
  (directory / "kg.tsv").write_text("".join(triples))
  entities = {t.split("\t")[0] for t in triples} | {t.rstrip("\n").split("\t")[2] for t in triples}
  with open(os.path.join(corpus_readers.EMBEDDED_DIR, "aliases.tsv")) as f:
    aliases = [line for line in f if line.split("\t")[0] in entities]
  (directory / "aliases.tsv").write_text("".join(aliases))
  return directory


def _bindings(corpus, extra=()):
  return [f"DataConfig.corpus = '{corpus / '*.jsonl'}'", f"DataConfig.kg = '{corpus / 'kg.tsv'}'",
          f"DataConfig.aliases = '{corpus / 'aliases.tsv'}'",
          f"cache_settings.sequence_length = {LENGTH}", "cache_settings.source_shards = 2",
          *extra]


CACHED_TASKS = ("knowledge_masked_lm", "uktp")


def run_preprocess(corpus, out, beam_args):
  """Runs the real command line: alignment of both splits, two tasks cached."""
  args = [sys.executable, "-m", "ernie3_jax.tools.preprocess", f"--output_dir={out}",
          f"--cache_tasks={','.join(CACHED_TASKS)}", "--cache_splits=train"]
  args += [f"--gin.{b.replace(' = ', '=')}" for b in _bindings(corpus)]
  args += ["--", *beam_args]
  proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "cached 2 tasks" in proc.stdout
  return str(out), proc.stdout


@pytest.fixture(scope="module")
def preprocessed(corpus, tmp_path_factory):
  return run_preprocess(corpus, tmp_path_factory.mktemp("preprocessed"),
                        ["--runner=DirectRunner"])[0]


def _example(record: bytes) -> str:
  """A tf.train.Example as canonical JSON (its serialized bytes need not be canonical)."""
  features = tf.train.Example.FromString(record).features.feature
  return json.dumps({k: [str(v) for v in getattr(f, f.WhichOneof("kind")).value]
                     for k, f in sorted(features.items())})


def preprocess_outputs(directory: str) -> dict:
  """Everything the preprocessing wrote, independent of how its files were sharded."""
  outputs = {}
  for split in ("train", "validation"):
    examples, report = beam_alignment.read_alignment(
        os.path.join(directory, "uktp_alignment"), split)
    with open(os.path.join(directory, "uktp_alignment", split, "unaligned.tsv")) as f:
      outputs[f"alignment/{split}"] = (examples, report, sorted(f))
  for name in CACHED_TASKS:
    task_dir = os.path.join(directory, f"{name}_cached")
    names = sorted(os.listdir(task_dir))
    assert "COMPLETED" in names and not [n for n in names if "beam-temp" in n], names
    files = [os.path.join(task_dir, n) for n in names if ".tfrecord" in n]
    rows = sorted(_example(r.numpy()) for r in tf.data.TFRecordDataset(files))
    with open(os.path.join(task_dir, "stats.train.json")) as f:
      outputs[name] = (rows, json.load(f))
  return outputs


def test_beam_alignment_equals_in_process(corpus, preprocessed):
  gin_utils.parse_gin([], _bindings(corpus))
  cfg = dc.current()
  kg = dc.knowledge_graph(cfg.kg, cfg.aliases)
  matcher = dc.entity_matcher(cfg.kg, cfg.aliases)
  for split in ("train", "validation"):
    expected, report = triple_alignment.align_triples(list(dc.documents(cfg, split)), kg, matcher)
    examples, beam_report = beam_alignment.read_alignment(
        os.path.join(preprocessed, "uktp_alignment"), split)
    assert examples == expected
    for field in ("total", "in_head_article", "elsewhere", "not_aligned",
                  "heads_without_article", "not_aligned_by_relation"):
      assert beam_report[field] == getattr(report, field), field
    with open(os.path.join(preprocessed, "uktp_alignment", split, "unaligned.tsv")) as f:
      unaligned = [tuple(line.rstrip("\n").split("\t")) for line in f]
    assert sorted(unaligned) == sorted(tuple(t) for t in report.unaligned)
  assert report.in_head_article + report.elsewhere > 0


def _rows(dataset):
  return sorted(tuple(ex["tokens"].tolist()) + tuple(ex["mlm_targets"].tolist())
                for ex in dataset.as_numpy_iterator())


@pytest.mark.parametrize("name", ["knowledge_masked_lm", "uktp"])
def test_cache_holds_the_task_rows(corpus, preprocessed, name):
  alignment = os.path.join(preprocessed, "uktp_alignment")
  gin_utils.parse_gin([], _bindings(corpus, [f"DataConfig.uktp_alignment = '{alignment}'"]))
  task = seqio.get_mixture_or_task(name + "_cached")
  expected = []
  for index in range(2):  # the same two source shards the pipeline processed
    ds = task.source.get_dataset("train", shard_info=seqio.ShardInfo(index, 2))
    expected += _rows(task.preprocess_precache(ds))
  if preprocessed not in seqio.get_global_cache_dirs():
    seqio.add_global_cache_dirs([preprocessed])
  cached = task.get_dataset({"tokens": LENGTH}, split="train", use_cached=True, shuffle=False)
  assert _rows(cached) == sorted(expected) and len(expected) > 20
  with open(os.path.join(preprocessed, f"{name}_cached", "stats.train.json")) as f:
    assert json.load(f)["examples"] == len(expected)


def test_cached_rows_refuse_another_length(corpus, preprocessed):
  gin_utils.parse_gin([], _bindings(corpus))
  if preprocessed not in seqio.get_global_cache_dirs():
    seqio.add_global_cache_dirs([preprocessed])
  task = seqio.get_mixture_or_task("knowledge_masked_lm_cached")
  ds = task.get_dataset({"tokens": 2 * LENGTH}, split="train", use_cached=True, shuffle=False)
  with pytest.raises(Exception, match="cache_settings.sequence_length=128"):
    next(ds.as_numpy_iterator())


def test_train_from_the_cache(corpus, preprocessed, tmp_path, capsys):
  from ernie3_jax.training import train as train_lib  # pylint: disable=g-import-not-at-top
  alignment = os.path.join(preprocessed, "uktp_alignment")
  gin_utils.parse_gin(["gin_configs/experiments/demo.gin"], _bindings(corpus, [
      f"MODEL_DIR = '{tmp_path}'", "NLU_BATCH = 8", "NLG_BATCH = 0",
      f"SEQUENCE_LENGTH = {LENGTH}", "NLG_SEGMENT_LENGTH = 32", "train.num_steps = 3",
      "train.log_every = 1", "train.checkpoint_every = 0", "train.progress_bar = False",
      "ProgressiveSchedule.steps = 0", "make_mesh.num_devices = 1",
      "train.eval_every = 0",  # only the train split was cached
      "PretrainInput.stages = [(0, {'knowledge_masked_lm': 1.0, 'uktp': 1.0})]",
      f"PretrainInput.cache_dir = '{preprocessed}'", f"DataConfig.uktp_alignment = '{alignment}'"]))
  result = train_lib.train(str(tmp_path))
  out = capsys.readouterr().out
  assert "reading ['knowledge_masked_lm', 'uktp'] from the caches" in out
  assert len(result.history) == 3 and np.isfinite(result.history[-1]["loss"])
  assert result.history[-1]["uktp/loss"] > 0 and result.history[-1]["knowledge_masked_lm/loss"] > 0


def test_missing_cache_dir_is_named(tmp_path):
  from ernie3_jax.training import pretrain_input  # pylint: disable=g-import-not-at-top
  with pytest.raises(FileNotFoundError, match="PretrainInput.cache_dir="):
    pretrain_input.PretrainInput(nlu_batch_size=2, nlg_batch_size=0, sequence_length=64,
                                 nlg_segment_length=32, seed=0,
                                 cache_dir=str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="holds no completed cache"):
    pretrain_input.PretrainInput(nlu_batch_size=2, nlg_batch_size=0, sequence_length=64,
                                 nlg_segment_length=32, seed=0, cache_dir=str(tmp_path))


@pytest.mark.slow  # the whole preprocessing again, in 2 worker processes (1-2 minutes)
def test_two_worker_processes_write_the_same_alignment_and_caches(corpus, preprocessed,
                                                                  tmp_path):
  with WorkerProcesses() as workers:
    two, stdout = run_preprocess(corpus, tmp_path, ["--runner=DirectRunner",
                                                    "--direct_num_workers=2"])
  assert "direct_running_mode=multi_processing" in stdout
  assert len(workers.pids) >= 2, workers.pids  # the bundles ran in worker processes
  one = preprocess_outputs(preprocessed)
  assert preprocess_outputs(two) == one
  assert len(one["uktp"][0]) > 20 and one["uktp"][1]["examples"] == len(one["uktp"][0])


@pytest.fixture(scope="module", name="cluster")
def fixture_cluster():
  yield from beam_testing.dask_cluster()


@pytest.mark.slow  # the whole preprocessing again, on a 2-process Dask cluster (about 1 minute)
def test_a_dask_cluster_writes_the_same_alignment_and_caches(corpus, preprocessed, cluster,
                                                            tmp_path):
  on_dask, stdout = run_preprocess(corpus, tmp_path, beam_testing.dask_args(cluster))
  assert f"Beam runner {beam_testing.DASK_RUNNER}" in stdout
  assert preprocess_outputs(on_dask) == preprocess_outputs(preprocessed)
