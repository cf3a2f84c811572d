"""Where pre-training data comes from and how it is prepared (gin-configurable).

The seqio tasks read this at dataset-build time, so gin overrides apply to tasks
registered at import. Defaults are the embedded fictional encyclopedia.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Iterator

import gin

from ernie3_jax.data import corpus_readers
from ernie3_jax.data.corpus_readers import EMBEDDED_DIR
from ernie3_jax.data.masking_levels import DEFAULT_LEVEL_WEIGHTS
import os

from ernie3_jax.runtime import storage


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
  corpus: str = corpus_readers.EMBEDDED_CORPUS  # comma-separated globs (.jsonl or text)
  # None: no knowledge graph; the tasks that need one (KG_TASKS) then stop with
  # NoKnowledgeGraphError, the others run.
  kg: str | None = os.path.join(EMBEDDED_DIR, "kg.tsv")
  aliases: str | None = os.path.join(EMBEDDED_DIR, "aliases.tsv")
  vocabulary: str = os.path.join(EMBEDDED_DIR, "spm.model")
  # Every 1/validation_every-th document (by a stable hash of its title and text)
  # is held out as the validation split.
  validation_every: int = 20
  mask_ratio: float = 0.15
  # Share of the masking budget for (basic token, phrase, entity) units.
  level_weights: tuple[float, float, float] = DEFAULT_LEVEL_WEIGHTS
  max_reorder_segments: int = 3
  uktp_relation_mask_prob: float = 0.5
  # Directory written by `python -m ernie3_jax.tools.preprocess` (Beam alignment);
  # None aligns the triples in-process when the UKTP task is first read.
  uktp_alignment: str | None = None
  preprocess_seed: int = 0


# The pre-training tasks that read DataConfig.kg (entity masking, UKTP's triples).
KG_TASKS = ("knowledge_masked_lm", "uktp")


class NoKnowledgeGraphError(ValueError):
  """DataConfig.kg is None but a task that needs the knowledge graph was asked for."""


@gin.configurable
def prepared_file(directory: str = gin.REQUIRED, name: str = gin.REQUIRED) -> str:
  """`directory/name`: lets gin point DataConfig at the files a tool wrote into one
  directory (`DataConfig.kg = @kg/prepared_file()` with `kg/prepared_file.name`)."""
  return os.path.join(directory, name)


def split_of(doc: corpus_readers.Document, validation_every: int) -> str:
  key = zlib.crc32((doc.title + "\x00" + doc.text[:200]).encode("utf-8"))
  return "validation" if validation_every and key % validation_every == 0 else "train"


def require_file(path: str | None, binding: str) -> None:
  """Fails, naming the gin binding that set `path`, unless it is a readable file."""
  if path is None:
    return
  storage.check(path, binding)
  if not storage.exists(path):
    raise FileNotFoundError(f"{binding}={path!r}: no such file")
  if not storage.isfile(path):
    raise FileNotFoundError(f"{binding}={path!r} is not a file")
  if not storage.is_uri(path) and not os.access(path, os.R_OK):
    raise PermissionError(f"{binding}={path!r} is not readable")


def documents(config: DataConfig, split: str) -> Iterator[corpus_readers.Document]:
  """The corpus documents of `split` ("train", "validation" or "all"), in file order."""
  if split not in ("train", "validation", "all"):
    raise ValueError(f"unknown split {split!r}; expected train, validation or all")
  try:
    paths = corpus_readers.expand_paths(config.corpus)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"DataConfig.corpus={config.corpus!r}: {e}") from None
  for path in paths:
    if not path.startswith(corpus_readers.TFDS_PREFIX):
      require_file(path, "DataConfig.corpus")
  for doc in corpus_readers.read_documents(paths):
    if split == "all" or split_of(doc, config.validation_every) == split:
      yield doc


@functools.lru_cache(maxsize=4)
def vocabulary(path: str):
  from ernie3_jax.data.vocabulary import Vocabulary  # pylint: disable=g-import-not-at-top
  require_file(path, "DataConfig.vocabulary")
  return Vocabulary(path)


@functools.lru_cache(maxsize=4)
def knowledge_graph(kg_path: str | None, aliases_path: str | None):
  from ernie3_jax.data import knowledge_graph as kg_lib  # pylint: disable=g-import-not-at-top
  if kg_path is None:
    raise NoKnowledgeGraphError(
        f"DataConfig.kg=None: the tasks {', '.join(KG_TASKS)} need a knowledge graph; set "
        "DataConfig.kg to a kg.tsv (prepare_dumps writes one) or leave those tasks out of "
        "the schedule (the other tasks run without a KG)")
  require_file(kg_path, "DataConfig.kg")
  require_file(aliases_path, "DataConfig.aliases")
  return kg_lib.load_knowledge_graph(kg_path, aliases_path)


@functools.lru_cache(maxsize=4)
def entity_matcher(kg_path: str, aliases_path: str | None):
  from ernie3_jax.data.entity_matcher import EntityMatcher  # pylint: disable=g-import-not-at-top
  return EntityMatcher.from_knowledge_graph(knowledge_graph(kg_path, aliases_path))


def reads_tfds(config: DataConfig) -> bool:
  """Whether the corpus comes (partly) from TFDS rather than from files."""
  return corpus_readers.TFDS_PREFIX in config.corpus


@functools.lru_cache(maxsize=4)
def document_count(config: DataConfig) -> int:
  """Documents in the corpus; reading them all checks every line of the files."""
  return sum(1 for _ in documents(config, "all"))


def current() -> DataConfig:
  """The DataConfig that gin describes now."""
  return DataConfig()


def min_sequence_length(task: str, config: DataConfig) -> int:
  """The shortest NLU row the pre-training task `task` can build (1 for others)."""
  # pylint: disable=g-import-not-at-top
  from ernie3_jax.data import knowledge_masking, sentence_distance, uktp
  minimums = {
      "knowledge_masked_lm": knowledge_masking.MIN_SEQUENCE_LENGTH,
      "sentence_reordering": config.max_reorder_segments + 2,  # [CLS] + a [SEP] per segment
      "sentence_distance": sentence_distance.MIN_SEQUENCE_LENGTH,
      "uktp": uktp.MIN_SEQUENCE_LENGTH,
  }
  return minimums.get(task, 1)


def check_files(config: DataConfig) -> None:
  """Fails, naming the DataConfig binding, unless every input file is there and readable."""
  try:
    paths = corpus_readers.expand_paths(config.corpus)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"DataConfig.corpus={config.corpus!r}: {e}") from None
  for path in paths:
    if not path.startswith(corpus_readers.TFDS_PREFIX):
      require_file(path, "DataConfig.corpus")
  require_file(config.vocabulary, "DataConfig.vocabulary")
  require_file(config.kg, "DataConfig.kg")
  require_file(config.aliases, "DataConfig.aliases")
