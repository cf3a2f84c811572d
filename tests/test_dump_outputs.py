"""Output folders of `prepare_dumps` and `preprocess` that can be trusted: a re-run
replaces the whole folder or nothing (never old shards beside new ones), a non-empty
folder is refused unless --overwrite is given, a failed run leaves the old folder as it
was, empty outputs stop the run with the report's counts, and `DataConfig.kg=None` is a
named error. The folder swap is also checked on gs:// (GCS emulator)."""

import bz2
import json
import os
import subprocess
import sys

import pytest

from ernie3_jax.data import data_config as dc
from ernie3_jax.data import wikidata
from ernie3_jax.runtime import output_folder
from ernie3_jax.tools import prepare_dumps
from tests import gcs_emulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "dumps")
WIKIDATA = os.path.join(FIXTURES, "wikidata.json")
DIRECT = ["--runner=DirectRunner"]

# Ten-word sentences: ERNIE's cleaning (rule 3) keeps them.
LONG = "The river runs past the old mill and into the sea. "


def _corpus(tmp_path, n_docs: int, text: str = LONG * 3):
  """n_docs distinct documents (rule 4 would drop copies) followed by `text`."""
  path = tmp_path / "own.jsonl"
  with open(path, "w") as f:
    for i in range(n_docs):
      first = f"Document number {i} is here and it is long enough to keep. " if text else ""
      f.write(json.dumps({"title": f"Doc {i}", "text": first + (text or f"Doc {i} is short.")})
              + "\n")
  return str(path)


def _run(out, corpus=None, wikidata_dumps=(), **kwargs):
  prepare_dumps.run(str(out), [], list(wikidata_dumps), corpus, wikidata.Rules("en"),
                    pipeline_args=DIRECT, **kwargs)


def _siblings(out):
  """What is beside `out` in its parent (a staging or replaced folder left over)."""
  return sorted(n for n in os.listdir(os.path.dirname(out)) if n != os.path.basename(out))


def test_a_rerun_replaces_the_folder_whole_and_its_report_counts_the_files_beside_it(tmp_path):
  out = tmp_path / "parent" / "prepared"
  _run(out, _corpus(tmp_path, 6), [WIKIDATA], num_shards=2)
  assert sorted(os.listdir(out)) == [
      "aliases.tsv", "corpus-00000-of-00002.jsonl", "corpus-00001-of-00002.jsonl",
      "corpus_report.json", "kg.tsv", "wikidata_report.json"]
  # The second run: another corpus, one shard, no Wikidata dump.
  _run(out, _corpus(tmp_path, 3), num_shards=1, overwrite=True)
  assert sorted(os.listdir(out)) == ["corpus-00000-of-00001.jsonl", "corpus_report.json"]
  report = json.loads((out / "corpus_report.json").read_text())["counts"]
  lines = (out / "corpus-00000-of-00001.jsonl").read_text().splitlines()
  assert report["documents written"] == report["documents kept"] == len(lines) == 3
  assert _siblings(str(out)) == []  # no staging or replaced folder left behind


def test_a_non_empty_folder_is_refused_without_overwrite_and_left_untouched(tmp_path):
  out = tmp_path / "prepared"
  out.mkdir()
  (out / "corpus-00000-of-00002.jsonl").write_text('{"title": "old", "text": "old"}\n')
  with pytest.raises(output_folder.OutputFolderError,
                     match=r"--output_dir='.*prepared' is not empty \(corpus-00000-of-00002"
                           r"\.jsonl\).*--overwrite"):
    _run(out, _corpus(tmp_path, 2))
  assert os.listdir(out) == ["corpus-00000-of-00002.jsonl"]
  assert _siblings(str(out)) == ["own.jsonl"]


def test_overwrite_replaces_only_a_folder_of_this_tools_outputs(tmp_path):
  out = tmp_path / "home"
  out.mkdir()
  (out / "kg.tsv").write_text("a\tb\tc\n")
  (out / "notes.txt").write_text("mine\n")
  with pytest.raises(output_folder.OutputFolderError,
                     match=r"holds files this tool does not write \(notes\.txt\)"):
    _run(out, _corpus(tmp_path, 2), overwrite=True)
  assert sorted(os.listdir(out)) == ["kg.tsv", "notes.txt"]


def test_a_failed_run_leaves_the_previous_output_as_it_was(tmp_path):
  out = tmp_path / "parent" / "prepared"
  _run(out, _corpus(tmp_path, 4), num_shards=2)
  before = {n: (out / n).read_bytes() for n in os.listdir(out)}
  truncated = tmp_path / "latest-all.json.bz2"
  truncated.write_bytes(bz2.compress(open(WIKIDATA, "rb").read())[:-40])
  with pytest.raises(Exception, match="unreadable after line"):
    _run(out, _corpus(tmp_path, 1), [str(truncated)], num_shards=1, overwrite=True)
  assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
  assert _siblings(str(out)) == []  # the failed run's staging folder is gone


def _no_english_articles(tmp_path):
  """The fixture dump with every enwiki sitelink removed: no item is kept."""
  path = tmp_path / "dewiki-only.json"
  with open(WIKIDATA) as src, open(path, "w") as dst:
    dst.write(src.read().replace('"enwiki": {"site": "enwiki"', '"frwiki": {"site": "frwiki"'))
  return str(path)


def test_an_empty_kg_stops_the_run_with_the_reports_counts(tmp_path):
  out = tmp_path / "parent" / "prepared"
  with pytest.raises(prepare_dumps.EmptyOutputError) as error:
    _run(out, None, [_no_english_articles(tmp_path)])
  message = str(error.value)
  assert "0 triples written (--min_triples=1)" in message
  assert "0 alias lines written (--min_aliases=1)" in message
  assert '"items dropped: no article in enwiki": 6' in message  # the counts, shown
  assert not out.exists()  # nothing published
  (staged,) = _siblings(str(out))  # kept for inspection, and named in the message
  assert staged.startswith(".prepared.partial-") and staged in message
  assert os.path.exists(os.path.join(out.parent, staged, "wikidata_report.json"))


def test_too_few_triples_or_no_documents_after_cleaning_stop_the_run(tmp_path):
  with pytest.raises(prepare_dumps.EmptyOutputError, match=r"3 triples written \(--min_triples=4\)"):
    _run(tmp_path / "a", None, [WIKIDATA], minimums=prepare_dumps.Minimums(triples=4))
  short = _corpus(tmp_path, 3, text="")  # every sentence under ten words: rule 3 drops all
  with pytest.raises(prepare_dumps.EmptyOutputError,
                     match=r"0 documents written \(--min_documents=1\)[\s\S]*documents read\": 3"):
    _run(tmp_path / "b", short)


def test_the_command_exits_non_zero_naming_the_empty_output(tmp_path):
  out = tmp_path / "prepared"
  proc = subprocess.run(
      [sys.executable, "-m", "ernie3_jax.tools.prepare_dumps", f"--output_dir={out}",
       f"--wikidata_dump={_no_english_articles(tmp_path)}", "--", *DIRECT],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "prepare_dumps: the output is too small to train on: 0 triples written" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not out.exists()


def test_kg_none_is_a_named_error_for_the_tasks_that_need_a_kg():
  config = dc.DataConfig(kg=None, aliases=None)
  dc.check_files(config)  # no KG is a valid configuration for tasks that read none
  for load in (dc.knowledge_graph, dc.entity_matcher):
    with pytest.raises(dc.NoKnowledgeGraphError,
                       match=r"DataConfig.kg=None: the tasks knowledge_masked_lm, uktp need"):
      load(config.kg, config.aliases)


def _preprocess(tmp_path, out, num_shards):
  """The real command line (its flags clash with prepare_dumps' in one process)."""
  args = [sys.executable, "-m", "ernie3_jax.tools.preprocess", f"--output_dir={out}",
          "--alignment_splits=train", "--cache_tasks=", f"--num_shards={num_shards}",
          f"--gin.DataConfig.corpus='{tmp_path / 'corpus.jsonl'}'",
          f"--gin.DataConfig.kg='{tmp_path / 'kg.tsv'}'", "--gin.DataConfig.aliases=None",
          "--gin.DataConfig.validation_every=0", "--", *DIRECT]
  proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_preprocess_rerun_replaces_the_alignment_shards(tmp_path):
  from ernie3_jax.data import beam_alignment, corpus_readers
  with open(corpus_readers.EMBEDDED_CORPUS) as f:
    lines = [next(f) for _ in range(30)]
  (tmp_path / "corpus.jsonl").write_text("".join(lines))
  titles = {json.loads(line)["title"] for line in lines}
  with open(os.path.join(corpus_readers.EMBEDDED_DIR, "kg.tsv")) as f:
    (tmp_path / "kg.tsv").write_text("".join(l for l in f if l.split("\t")[0] in titles))
  out = tmp_path / "pre"
  _preprocess(tmp_path, out, num_shards=3)
  first, _ = beam_alignment.read_alignment(str(out / "uktp_alignment"), "train")
  _preprocess(tmp_path, out, num_shards=1)
  names = sorted(os.listdir(out / "uktp_alignment" / "train"))
  assert [n for n in names if n.startswith("examples")] == ["examples-00000-of-00001.tfrecord"]
  again, _ = beam_alignment.read_alignment(str(out / "uktp_alignment"), "train")
  assert again == first and len(first) > 0
  assert sorted(os.listdir(out)) == ["config.gin", "uktp_alignment"]  # no staging left


def test_the_folder_swap_works_on_gcs():
  gcs_emulator.require()
  from ernie3_jax.runtime import storage
  with gcs_emulator.GcsEmulator() as emulator, emulator.applied():
    target = f"gs://{emulator.bucket}/runs/prepared"
    for name in ("corpus-00000-of-00002.jsonl", "corpus-00001-of-00002.jsonl", "kg.tsv"):
      storage.write_atomic(f"{target}/{name}", "old\n")
    with pytest.raises(output_folder.OutputFolderError, match="is not empty"):
      output_folder.check_target(target, overwrite=False, own_file=prepare_dumps.own_file)
    output_folder.check_target(target, overwrite=True, own_file=prepare_dumps.own_file)
    staging = output_folder.new_staging(target)
    assert staging.startswith(f"gs://{emulator.bucket}/runs/.prepared.partial-")
    storage.write_atomic(f"{staging}/corpus-00000-of-00001.jsonl", "new\n")
    storage.write_atomic(f"{staging}/corpus_report.json", "{}")
    output_folder.publish(staging, target)
    assert emulator.objects("runs/") == ["runs/prepared/corpus-00000-of-00001.jsonl",
                                         "runs/prepared/corpus_report.json"]
    assert storage.read_text(f"{target}/corpus-00000-of-00001.jsonl") == "new\n"
