"""Reading user corpora: plain text (blank-line separated documents), jsonl,
TFRecord files of tf.train.Example ("text" and optional "title" bytes features),
and TFDS text datasets named as `tfds:NAME[:SPLIT]` (e.g. `tfds:wikipedia/20230601.en`).

Bad input fails with the file and line at fault; nothing is skipped silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, Iterator

from ernie3_jax.runtime import storage

EMBEDDED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded")
EMBEDDED_CORPUS = os.path.join(EMBEDDED_DIR, "corpus.jsonl")


@dataclasses.dataclass(frozen=True)
class Document:
  title: str
  text: str
  source: str  # "file:line" of the document's first line


class CorpusError(ValueError):
  """Malformed corpus input; the message names the file and line."""


TFDS_PREFIX = "tfds:"


def expand_paths(patterns: str | Iterable[str]) -> list[str]:
  """Comma-separated or listed globs -> sorted file list; an empty match is an error.

  `tfds:` names pass through unchanged.
  """
  if isinstance(patterns, str):
    patterns = [p for p in patterns.split(",") if p]
  files = []
  for pattern in patterns:
    if pattern.startswith(TFDS_PREFIX):
      files.append(pattern)
      continue
    matched = storage.glob(storage.check(pattern, "corpus path"))
    if not matched:
      raise FileNotFoundError(f"corpus path {pattern!r} matches no file")
    files.extend(matched)
  return files


def _lines(path: str) -> Iterator[tuple[int, str]]:
  with storage.open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      try:
        yield lineno, raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise CorpusError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte "
                          f"{e.start})") from None


def read_jsonl(path: str) -> Iterator[Document]:
  """One {"title": ..., "text": ...} object per line; blank lines are allowed."""
  for lineno, line in _lines(path):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise CorpusError(f"{path}:{lineno}: invalid JSON ({e.msg.removesuffix(' at')} at column {e.colno})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
      raise CorpusError(f'{path}:{lineno}: expected an object with a string "text" field')
    yield Document(str(obj.get("title", "")), obj["text"], f"{path}:{lineno}")


def read_text(path: str) -> Iterator[Document]:
  """Documents separated by one or more blank lines; paragraphs are single lines."""
  paragraphs, start = [], None
  for lineno, line in _lines(path):
    line = line.strip()
    if line:
      if start is None:
        start = lineno
      paragraphs.append(line)
    elif paragraphs:
      yield Document("", "\n\n".join(paragraphs), f"{path}:{start}")
      paragraphs, start = [], None
  if paragraphs:
    yield Document("", "\n\n".join(paragraphs), f"{path}:{start}")


def read_tfrecord(path: str) -> Iterator[Document]:
  """tf.train.Example records with a "text" (and optional "title") bytes feature."""
  from ernie3_jax.runtime.tf_runtime import tf  # pylint: disable=g-import-not-at-top
  for index, raw in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
    example = tf.train.Example.FromString(raw)
    features = example.features.feature
    if "text" not in features or not features["text"].bytes_list.value:
      raise CorpusError(f"{path}: record {index} has no bytes feature 'text'")
    try:
      text = features["text"].bytes_list.value[0].decode("utf-8")
      title = (features["title"].bytes_list.value[0].decode("utf-8")
               if "title" in features and features["title"].bytes_list.value else "")
    except UnicodeDecodeError as e:
      raise CorpusError(f"{path}: record {index} is not valid UTF-8 ({e.reason})") from None
    yield Document(title, text, f"{path}#{index}")


def read_tfds(spec: str, data_dir: str | None = None) -> Iterator[Document]:
  """`tfds:NAME[:SPLIT]` -> documents from the dataset's "text" (and "title") features.

  Reads only prepared data (`download=False`): build the dataset first with
  `tfds build` where there is network, or point `data_dir` at a prepared copy.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, _, split = spec[len(TFDS_PREFIX):].partition(":")
  ds = tfds.load(name, split=split or "train", data_dir=data_dir, download=False)
  for index, ex in enumerate(tfds.as_numpy(ds)):
    if "text" not in ex:
      raise CorpusError(f"{spec}: examples have no 'text' feature (features: {sorted(ex)})")
    title = ex.get("title", b"")
    yield Document(title.decode("utf-8") if isinstance(title, bytes) else str(title),
                   ex["text"].decode("utf-8"), f"{spec}#{index}")


def read_documents(patterns: str | Iterable[str]) -> Iterator[Document]:
  """Documents from .jsonl, .tfrecord, `tfds:` names and plain text (other files)."""
  for path in expand_paths(patterns):
    if path.startswith(TFDS_PREFIX):
      yield from read_tfds(path)
    elif path.endswith((".jsonl", ".json")):
      yield from read_jsonl(path)
    elif ".tfrecord" in os.path.basename(path):
      yield from read_tfrecord(path)
    else:
      yield from read_text(path)
