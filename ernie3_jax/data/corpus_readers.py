"""Reading user corpora: plain text (blank-line separated documents) and jsonl.

Bad input fails with the file and line at fault; nothing is skipped silently.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Iterable, Iterator

EMBEDDED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded")
EMBEDDED_CORPUS = os.path.join(EMBEDDED_DIR, "corpus.jsonl")


@dataclasses.dataclass(frozen=True)
class Document:
  title: str
  text: str
  source: str  # "file:line" of the document's first line


class CorpusError(ValueError):
  """Malformed corpus input; the message names the file and line."""


def expand_paths(patterns: str | Iterable[str]) -> list[str]:
  """Comma-separated or listed globs -> sorted file list; an empty match is an error."""
  if isinstance(patterns, str):
    patterns = [p for p in patterns.split(",") if p]
  files = []
  for pattern in patterns:
    matched = sorted(glob.glob(pattern))
    if not matched:
      raise FileNotFoundError(f"corpus path {pattern!r} matches no file")
    files.extend(matched)
  return files


def _lines(path: str) -> Iterator[tuple[int, str]]:
  with open(path, "rb") as f:
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
      raise CorpusError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
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


def read_documents(patterns: str | Iterable[str]) -> Iterator[Document]:
  """Documents from .jsonl files and plain-text files (any other extension)."""
  for path in expand_paths(patterns):
    reader = read_jsonl if path.endswith((".jsonl", ".json")) else read_text
    yield from reader(path)
