"""The five ERNIE 3.0 pre-training tasks and the `ernie3_pretrain` mixture.

Tasks read their sources and settings from `DataConfig` (gin) when a dataset is
built. NLU tasks emit fixed-length rows with the features in `NLU_FEATURES`;
`document_lm` emits the rows of parallel document streams in step order (see
`ernie3_jax/data/document_streams.py`), which the trainer reads as streams.
"""

from __future__ import annotations

import functools


from ernie3_jax.runtime import tf_runtime  # noqa: F401  (first: hides GPUs from TensorFlow)
import seqio

from ernie3_jax.data import data_config as dc
from ernie3_jax.data import document_streams, knowledge_masking, sentence_distance
from ernie3_jax.data import sentence_reordering, triple_alignment, uktp  # noqa: I001
from ernie3_jax.runtime.tf_runtime import tf
from ernie3_jax.model import task_ids

SPLITS = ("train", "validation")
NLU_TASK_NAMES = ("knowledge_masked_lm", "sentence_reordering", "sentence_distance", "uktp")
NLG_TASK_NAMES = ("document_lm",)
DEFAULT_RATES = {"knowledge_masked_lm": 4.0, "uktp": 2.0, "sentence_reordering": 1.0,
                 "sentence_distance": 1.0, "document_lm": 4.0}


def _feature(dtype, rank):
  return seqio.Feature(seqio.PassThroughVocabulary(size=0), add_eos=False, required=True,
                       dtype=dtype, rank=rank)


NLU_FEATURES = {
    "tokens": _feature(tf.int32, 1), "segment_ids": _feature(tf.int32, 1),
    "mlm_targets": _feature(tf.int32, 1), "mlm_weights": _feature(tf.float32, 1),
    "label": _feature(tf.int32, 0), "label_weight": _feature(tf.float32, 0),
    "task_id": _feature(tf.int32, 0),
}
NLG_ONLY = {"targets": _feature(tf.int32, 1), "loss_weights": _feature(tf.float32, 1),
            "reset": _feature(tf.bool, 0)}
# Every task emits the union, so the five can form one seqio mixture; features a
# task does not use are zeros (zero weights: they add nothing to any loss).
FEATURES = dict(NLU_FEATURES, **NLG_ONLY)


def _fill_missing(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Adds zero-valued features so every task has all of `FEATURES`."""

  def fill(ex):
    ex = dict(ex)
    length = tf.shape(ex["tokens"])[0]
    for name, feat in FEATURES.items():
      if name not in ex:
        shape = [length] if feat.rank == 1 else []
        ex[name] = tf.zeros(shape, feat.dtype)
    return ex

  return dataset.map(fill, num_parallel_calls=tf.data.AUTOTUNE)


def _documents_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
  del shuffle_files, seed  # order is fixed; seqio shuffles examples after preprocessing
  cfg = dc.current()
  docs = list(dc.documents(cfg, split))
  if not docs:
    raise ValueError(f"DataConfig.corpus={cfg.corpus!r} has no documents in split {split!r}")
  return tf.data.Dataset.from_tensor_slices({"title": [d.title for d in docs],
                                             "text": [d.text for d in docs]})


def _aligned_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
  del shuffle_files, seed
  cfg = dc.current()
  examples, report = _alignment(cfg, split)
  print(f"UKTP alignment ({split}): {report}", flush=True)
  if not examples:
    raise ValueError(f"no knowledge-graph triple of DataConfig.kg={cfg.kg!r} aligned to a "
                     f"sentence of split {split!r}")
  return triple_alignment.examples_to_dataset(examples)


@functools.lru_cache(maxsize=4)
def _alignment(cfg: dc.DataConfig, split: str):
  if cfg.uktp_alignment:  # precomputed by the Beam pipeline (same examples, same order)
    from ernie3_jax.data import beam_alignment  # pylint: disable=g-import-not-at-top
    examples, report = beam_alignment.read_alignment(cfg.uktp_alignment, split)
    summary = triple_alignment.AlignmentReport(**{k: report[k] for k in (
        "total", "in_head_article", "elsewhere", "not_aligned", "heads_without_article")})
    return examples, summary
  kg = dc.knowledge_graph(cfg.kg, cfg.aliases)
  matcher = dc.entity_matcher(cfg.kg, cfg.aliases)
  return triple_alignment.align_triples(list(dc.documents(cfg, split)), kg, matcher)


def _seed(seed):
  return dc.current().preprocess_seed if seed is None else seed


def _kmlm(dataset, sequence_length, seed=None):
  cfg = dc.current()
  return knowledge_masking.knowledge_masked_lm(
      dataset, _seed(seed), vocab=dc.vocabulary(cfg.vocabulary),
      matcher=dc.entity_matcher(cfg.kg, cfg.aliases), sequence_length=sequence_length,
      level_weights=cfg.level_weights, mask_ratio=cfg.mask_ratio,
      task_id=task_ids.KNOWLEDGE_MASKED_LM)


def _reorder(dataset, sequence_length, seed=None):
  cfg = dc.current()
  return sentence_reordering.sentence_reordering(
      dataset, _seed(seed), vocab=dc.vocabulary(cfg.vocabulary), sequence_length=sequence_length,
      max_segments=cfg.max_reorder_segments, task_id=task_ids.SENTENCE_REORDERING)


def _distance(dataset, sequence_length, seed=None):
  cfg = dc.current()
  return sentence_distance.sentence_distance(
      dataset, _seed(seed), vocab=dc.vocabulary(cfg.vocabulary), sequence_length=sequence_length,
      task_id=task_ids.SENTENCE_DISTANCE)


def _uktp(dataset, sequence_length, seed=None):
  cfg = dc.current()
  return uktp.uktp(dataset, _seed(seed), vocab=dc.vocabulary(cfg.vocabulary),
                   sequence_length=sequence_length,
                   relation_mask_prob=cfg.uktp_relation_mask_prob, task_id=task_ids.UKTP,
                   level_weights=cfg.level_weights, mask_ratio=cfg.mask_ratio)


# The NLU tasks' preprocessors by task name (also used by `pretraining_cached`).
NLU_PREPROCESSORS = {"knowledge_masked_lm": _kmlm, "sentence_reordering": _reorder,
                     "sentence_distance": _distance, "uktp": _uktp}
fill_missing = _fill_missing
aligned_rows = _aligned_fn
aligned_rows_and_report = _alignment  # (examples, report) of a DataConfig's split, cached
preprocess_seed = _seed


def _streams_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
  """Document streams of 8 rows x 128 tokens, as rows in step order (for inspection/caching)."""
  del shuffle_files, seed
  cfg = dc.current()
  vocab = dc.vocabulary(cfg.vocabulary)
  docs = list(dc.documents(cfg, split))
  streams = document_streams.DocumentStreams(
      lambda: docs, 8, 128, encode=lambda d: vocab.tokenizer.encode(d.text), num_epochs=1,
      source=cfg.corpus)

  def rows():
    for batch in streams:
      for b in range(streams.batch_size):
        yield {k: v[b] for k, v in batch.items()}

  names = ("tokens", "targets", "loss_weights", "segment_ids", "reset", "task_id")
  sig = {k: tf.TensorSpec([128] if FEATURES[k].rank == 1 else [], FEATURES[k].dtype)
         for k in names}
  return tf.data.Dataset.from_generator(rows, output_signature=sig)


def register() -> None:
  documents = seqio.FunctionDataSource(_documents_fn, splits=SPLITS)
  for name, fn in (("knowledge_masked_lm", _kmlm), ("sentence_reordering", _reorder),
                   ("sentence_distance", _distance)):
    seqio.TaskRegistry.add(name, source=documents, preprocessors=[fn, _fill_missing],
                           output_features=FEATURES)
  seqio.TaskRegistry.add("uktp", source=seqio.FunctionDataSource(_aligned_fn, splits=SPLITS),
                         preprocessors=[_uktp, _fill_missing], output_features=FEATURES)
  seqio.TaskRegistry.add("document_lm",
                         source=seqio.FunctionDataSource(_streams_fn, splits=SPLITS),
                         preprocessors=[_fill_missing], output_features=FEATURES)
  seqio.MixtureRegistry.add("ernie3_pretrain_nlu",
                            [(n, DEFAULT_RATES[n]) for n in NLU_TASK_NAMES])
  seqio.MixtureRegistry.add("ernie3_pretrain", [(n, DEFAULT_RATES[n]) for n in
                                                NLU_TASK_NAMES + NLG_TASK_NAMES])


if "ernie3_pretrain" not in seqio.MixtureRegistry.names():
  register()
