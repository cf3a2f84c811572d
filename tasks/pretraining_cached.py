"""Cacheable variants of the four NLU pre-training tasks: `<task>_cached`.

`python -m ernie3_jax.tools.preprocess` runs these tasks' preprocessing on Apache
Beam and writes seqio caches; `PretrainInput.cache_dir` then reads the rows from
there instead of preprocessing during training. Because seqio caches what comes
before `CacheDatasetPlaceholder` once, rows are cut at one fixed length,
`cache_settings.sequence_length`, and their masks are fixed (static masking, as in
the original BERT data); training at another length is refused, not truncated.

The source has `cache_settings.source_shards` logical shards (document i belongs to
shard i mod n), which Beam preprocesses in parallel.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import gin

from ernie3_jax.runtime import tf_runtime  # noqa: F401  (first: hides GPUs from TensorFlow)
import seqio

from ernie3_jax.data import data_config as dc
from ernie3_jax.runtime.tf_runtime import tf
from ernie3_jax.tasks import pretraining

SUFFIX = "_cached"


@gin.configurable
def cache_settings(sequence_length: int = 128, source_shards: int = 16) -> tuple[int, int]:
  """(row length, number of source shards) of the cached tasks."""
  if sequence_length < 8:
    raise ValueError(f"cache_settings.sequence_length={sequence_length} is below 8")
  if source_shards < 1:
    raise ValueError(f"cache_settings.source_shards={source_shards} must be at least 1")
  return sequence_length, source_shards


class ShardedSource(seqio.DataSource):
  """`rows(split)` cut into `cache_settings.source_shards` shards by row index."""

  def __init__(self, rows: Callable[[str], tf.data.Dataset], splits: Sequence[str]):
    self._rows = rows
    super().__init__(splits=splits)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    n = cache_settings()[1]
    return [f"{split}-{i:05d}-of-{n:05d}" for i in range(n)]

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: int | None = 1) -> tf.data.Dataset:
    del shuffle, seed, sequence_length, use_cached, num_epochs  # order is fixed
    ds = self._rows(split)
    return ds.shard(shard_info.num_shards, shard_info.index) if shard_info else ds


def _document_rows(split: str) -> tf.data.Dataset:
  """Streams the documents (a Beam worker never holds the whole corpus)."""
  cfg = dc.current()

  def docs() -> Iterator[dict[str, str]]:
    for doc in dc.documents(cfg, split):
      yield {"title": doc.title, "text": doc.text}

  spec = tf.TensorSpec([], tf.string)
  return tf.data.Dataset.from_generator(docs, output_signature={"title": spec, "text": spec})


def _aligned_rows(split: str) -> tf.data.Dataset:
  return pretraining.aligned_rows(split, shuffle_files=False)


def _at_cache_length(preprocess: Callable) -> Callable:
  """`preprocess` at the cache length; seqio forbids `sequence_length` before the cache."""

  def at_length(dataset: tf.data.Dataset, seed: int | None = None) -> tf.data.Dataset:
    return preprocess(dataset, {"tokens": cache_settings()[0]}, seed)

  at_length.__name__ = f"{preprocess.__name__}_at_cache_length"
  return at_length


def check_cached_length(dataset: tf.data.Dataset,
                        sequence_length: dict[str, int] | None) -> tf.data.Dataset:
  """Refuses to serve cached rows at a length other than the one they were cut at."""
  if not sequence_length or "tokens" not in sequence_length:
    return dataset
  wanted = int(sequence_length["tokens"])

  def check(ex):
    length = tf.shape(ex["tokens"])[0]
    message = (f"cached rows do not have the requested sequence length {wanted}; "
               "re-run `python -m ernie3_jax.tools.preprocess` with "
               f"--gin.cache_settings.sequence_length={wanted}, or train uncached")
    with tf.control_dependencies([tf.debugging.assert_equal(length, wanted, message=message)]):
      return {k: tf.identity(v) for k, v in ex.items()}

  return dataset.map(check, num_parallel_calls=tf.data.AUTOTUNE)


def register() -> None:
  documents = ShardedSource(_document_rows, pretraining.SPLITS)
  aligned = ShardedSource(_aligned_rows, pretraining.SPLITS)
  for name, preprocess in pretraining.NLU_PREPROCESSORS.items():
    seqio.TaskRegistry.add(
        name + SUFFIX, source=aligned if name == "uktp" else documents,
        preprocessors=[_at_cache_length(preprocess), pretraining.fill_missing,
                       seqio.CacheDatasetPlaceholder(), check_cached_length],
        output_features=pretraining.FEATURES)


if "knowledge_masked_lm" + SUFFIX not in seqio.TaskRegistry.names():
  register()
