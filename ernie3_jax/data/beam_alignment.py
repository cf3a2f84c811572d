"""UKTP's distant-supervision alignment as an Apache Beam pipeline.

`triple_alignment.align_triples` holds the whole corpus in one process; this computes the same
alignment on any Beam runner. Corpus files are read in parallel, every sentence is
matched once and keyed by each entity it mentions, and a CoGroupByKey on the head
entity brings together a head's triples, the sentences naming it and its article:

  files -> (entity, sentence)  --+
  files -> (entity, article)  ---+-- CoGroupByKey(head) -> pick a sentence per triple
  KG    -> (head, triple)     ---+

A sentence's position is (file index, record index, sentence index), so "the first
sentence in corpus order" means the same thing as in the in-process path, and the
output (sorted by triple index on reading) is identical to `align_triples`.

Output under `output_dir/<split>/`: `examples-*.tfrecord` (tf.train.Example per aligned
triple), `unaligned.tsv` (every triple that found no sentence) and `report.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Iterator

import apache_beam as beam

from ernie3_jax.runtime import tf_runtime  # noqa: F401  (first: hides GPUs from TensorFlow)
from ernie3_jax.data import corpus_readers
from ernie3_jax.data import data_config as dc
from ernie3_jax.data import triple_alignment
from ernie3_jax.data.knowledge_graph import Triple
from ernie3_jax.runtime.tf_runtime import tf
from ernie3_jax.runtime import storage

EXAMPLES = "examples"
REPORT = "report.json"
UNALIGNED = "unaligned.tsv"


class _ReadDocuments(beam.DoFn):
  """(file index, path) -> ((file index, record index), title, text) of one split."""

  def __init__(self, split: str, validation_every: int):
    self.split, self.validation_every = split, validation_every

  def process(self, element: tuple[int, str]) -> Iterator[tuple[tuple[int, int], str, str]]:
    file_index, path = element
    for i, doc in enumerate(corpus_readers.read_documents([path])):
      if self.split == "all" or dc.split_of(doc, self.validation_every) == self.split:
        beam.metrics.Metrics.counter("uktp_alignment", "documents").inc()
        yield (file_index, i), doc.title, doc.text


class _SentencesByEntity(beam.DoFn):
  """Emits (entity, sentence) per mentioned entity and, tagged, (entity, article)."""

  def __init__(self, kg_path: str, aliases_path: str | None):
    self.kg_path, self.aliases_path = kg_path, aliases_path

  def setup(self) -> None:
    self.matcher = dc.entity_matcher(self.kg_path, self.aliases_path)

  def process(self, element):
    doc, title, text = element
    entity = self.matcher.entity_of(title.strip())
    if entity is not None:
      yield beam.pvalue.TaggedOutput("articles", (entity, doc))
    for s, record in enumerate(triple_alignment.sentence_records(text, self.matcher)):
      for mentioned in record.first:
        yield mentioned, (doc + (s,), title, record)


def _align_head(element) -> Iterator[tuple[int, Triple, triple_alignment.AlignedExample | None, bool]]:
  """Chooses each triple's sentence exactly as `triple_alignment.align_triples` does."""
  _, groups = element
  sentences = sorted(groups["sentences"], key=lambda x: x[0])
  articles = list(groups["articles"])
  article = min(articles) if articles else None
  for index, triple, literal in groups["triples"]:
    found = None
    for in_article in (True, False):  # the head's article first, then corpus order
      for position, title, record in sentences:
        if (position[:2] == article) != in_article:
          continue
        spans = triple_alignment.locate(record, triple, literal)
        if spans is not None:
          found = triple_alignment.aligned_example(triple, record, title, spans, literal, in_article)
          break
      if found is not None:
        break
    yield index, triple, found, article is not None


class _ReportFn(beam.CombineFn):
  """Sums per-triple outcomes into an `AlignmentReport` (without the unaligned list)."""

  def create_accumulator(self) -> triple_alignment.AlignmentReport:
    return triple_alignment.AlignmentReport()

  def add_input(self, report, outcome):
    _, triple, example, has_article = outcome
    triple_alignment.count_triple(report, triple, example, has_article)
    report.unaligned.clear()  # written to unaligned.tsv instead: it can be large
    return report

  def merge_accumulators(self, reports):
    merged = triple_alignment.AlignmentReport()
    for r in reports:
      for field in ("total", "in_head_article", "elsewhere", "not_aligned",
                    "heads_without_article"):
        setattr(merged, field, getattr(merged, field) + getattr(r, field))
      for relation, n in r.not_aligned_by_relation.items():
        merged.not_aligned_by_relation[relation] = (
            merged.not_aligned_by_relation.get(relation, 0) + n)
    return merged

  def extract_output(self, report):
    report.not_aligned_by_relation = dict(sorted(report.not_aligned_by_relation.items()))
    return json.dumps(dataclasses.asdict(report) | {"unaligned": UNALIGNED}, indent=1)


def _ints(values: Iterable[int]) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _strings(*values: str) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))


def serialize(index: int, e: triple_alignment.AlignedExample) -> bytes:
  """One aligned triple as a tf.train.Example (index = the triple's position in the KG)."""
  spans = [x for span in e.mention_spans for x in span]
  return tf.train.Example(features=tf.train.Features(feature={
      "index": _ints([index]), "triple": _strings(*e.triple), "sentence": _strings(e.sentence),
      "doc_title": _strings(e.doc_title), "head_span": _ints(e.head_span),
      "tail_span": _ints(e.tail_span), "mention_spans": _ints(spans),
      "flags": _ints([e.tail_is_entity, e.in_head_article]),
  })).SerializeToString()


def _deserialize(record: bytes) -> tuple[int, triple_alignment.AlignedExample]:
  f = tf.train.Example.FromString(record).features.feature
  text = [v.decode() for v in f["triple"].bytes_list.value]
  spans = list(f["mention_spans"].int64_list.value)
  tail_is_entity, in_article = (bool(v) for v in f["flags"].int64_list.value)
  return f["index"].int64_list.value[0], triple_alignment.AlignedExample(
      Triple(*text), f["sentence"].bytes_list.value[0].decode(),
      f["doc_title"].bytes_list.value[0].decode(), tuple(f["head_span"].int64_list.value),
      tuple(f["tail_span"].int64_list.value),
      tuple(zip(spans[0::2], spans[1::2])), tail_is_entity, in_article)


def align_triples_pipeline(pipeline: beam.Pipeline, config: dc.DataConfig, split: str,
                           output_dir: str, num_shards: int = 0) -> None:
  """Adds the alignment of `split` to `pipeline`; writes `output_dir/<split>/`."""
  kg = dc.knowledge_graph(config.kg, config.aliases)
  paths = corpus_readers.expand_paths(config.corpus)
  if not paths:
    raise ValueError(f"DataConfig.corpus={config.corpus!r} matches no file")
  out = os.path.join(output_dir, split)
  label = f"align_{split}"
  documents = (pipeline | f"{label}/files" >> beam.Create(list(enumerate(paths)))
               | f"{label}/reshuffle_files" >> beam.Reshuffle()
               | f"{label}/read" >> beam.ParDo(_ReadDocuments(split, config.validation_every)))
  matched = documents | f"{label}/match" >> beam.ParDo(
      _SentencesByEntity(config.kg, config.aliases)).with_outputs("articles", main="sentences")
  triples = pipeline | f"{label}/triples" >> beam.Create(
      [(t.head, (i, t, kg.is_literal(t))) for i, t in enumerate(kg.triples)])
  outcomes = ({"sentences": matched.sentences, "articles": matched.articles,
               "triples": triples}
              | f"{label}/group_by_head" >> beam.CoGroupByKey()
              | f"{label}/align" >> beam.FlatMap(_align_head))
  _ = (outcomes | f"{label}/aligned" >> beam.Filter(lambda o: o[2] is not None)
       | f"{label}/serialize" >> beam.Map(lambda o: serialize(o[0], o[2]))
       | f"{label}/write" >> beam.io.WriteToTFRecord(
           os.path.join(out, EXAMPLES), file_name_suffix=".tfrecord", num_shards=num_shards))
  _ = (outcomes | f"{label}/unaligned" >> beam.Filter(lambda o: o[2] is None)
       | f"{label}/unaligned_tsv" >> beam.Map(lambda o: "\t".join(o[1]))
       | f"{label}/write_unaligned" >> beam.io.WriteToText(
           os.path.join(out, UNALIGNED), shard_name_template="", num_shards=1))
  _ = (outcomes | f"{label}/report" >> beam.CombineGlobally(_ReportFn())
       | f"{label}/write_report" >> beam.io.WriteToText(
           os.path.join(out, REPORT), shard_name_template="", num_shards=1))


def read_alignment(directory: str, split: str) -> tuple[list[triple_alignment.AlignedExample], dict[str, Any]]:
  """The aligned examples of `split` in KG order, and the report the pipeline wrote."""
  split_dir = os.path.join(directory, split)
  report_path = os.path.join(split_dir, REPORT)
  if not storage.exists(report_path):
    raise FileNotFoundError(
        f"DataConfig.uktp_alignment={directory!r}: {report_path} does not exist; run "
        f"`python -m ernie3_jax.tools.preprocess --alignment_splits={split}` first")
  report = json.loads(storage.read_text(report_path))
  files = storage.glob(os.path.join(split_dir, EXAMPLES + "*.tfrecord"))
  indexed = [_deserialize(r.numpy()) for r in tf.data.TFRecordDataset(files)] if files else []
  indexed.sort(key=lambda x: x[0])
  aligned = report["in_head_article"] + report["elsewhere"]
  if len(indexed) != aligned:
    raise ValueError(f"{split_dir}: report.json counts {aligned} aligned triples but the "
                     f"example files hold {len(indexed)}; the output is incomplete")
  return [e for _, e in indexed], report
