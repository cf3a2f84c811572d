"""Document language modelling over B parallel, memory-carrying streams (ERNIE-Doc style).

Layout. Each of the `batch_size` rows is a stream that reads whole documents one after
another; a document is its token ids followed by EOS (id 1). At every step row b emits the
next window of segment_length + 1 tokens of its document, split into inputs = window[:-1]
and targets = window[1:]. Consecutive windows of a document overlap by one token, so the
last target of step t is the first input of step t + 1 and the recurrence memory of row b
sees the document exactly as one long sequence.

Documents never share a segment. When a document ends inside a window the rest of the
row is padding (token 0, loss weight 0), and the row starts its next document at the next
step with `reset` True, which tells the model to drop that row's memory. So `reset` is
True exactly when a row's segment starts a document (and for idle rows, below). The first
token of a document is an input but never a target (there is no BOS); every other token
and the closing EOS is a target exactly once per epoch. Documents with no tokens have
nothing to predict and are skipped.

Assignment. At each step rows are visited in order 0..B-1, and a row that needs a
document takes the next one of the corpus (of this shard). With a finite number of
epochs a row that finds the corpus exhausted idles (all padding, reset True); iteration
stops when every row idles.

Sharding. With `num_shards` processes, process `shard_index` reads only documents whose
corpus index i satisfies i % num_shards == shard_index; shards are disjoint and cover the
corpus. Each process runs its own B streams (its share of the global batch). For
multi-host training use `num_epochs=None`: shards differ in length, and a finite run
would give processes different numbers of steps.

Resuming. `state()` is a small JSON-serialisable dict (step, epoch, corpus cursor, each
row's document index and position). `restore(state)` / `DocumentStreams.from_state`
continue exactly; they re-read the corpus up to the cursor (tokenising only the documents
the rows hold), so resuming costs one pass over the corpus text, not over its ids.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ernie3_jax.data.corpus_readers import EMBEDDED_CORPUS, read_documents
from ernie3_jax.data.vocabulary import EOS_ID
from ernie3_jax.runtime.tf_runtime import tf

STATE_VERSION = 1
DOCUMENT_LM_TASK_ID = 1


class _Row:
  """A row's current document: its corpus index, ids (with EOS) and next input position."""
  __slots__ = ("index", "ids", "pos")

  def __init__(self, index: int, ids: np.ndarray, pos: int = 0):
    self.index, self.ids, self.pos = index, ids, pos


class DocumentStreams:
  """B parallel document streams; iterate for per-step batches of numpy arrays.

  Args:
    documents: zero-argument callable returning a fresh iterable over the corpus, in the
      same order on every call (it is called once per epoch and on restore).
    batch_size: rows B (per process).
    segment_length: tokens S per row and step; at least 2.
    encode: maps a corpus item to its token ids (default: items already are id sequences).
      Called only for documents of this shard that a row takes, never for skipped ones.
    shard_index, num_shards: this process's disjoint share of the documents.
    num_epochs: passes over the corpus; None repeats it forever, in the same order.
    source: names the corpus in error messages.
    eos_id, task_id: the id closing each document; the task id emitted per row.
  """

  def __init__(self, documents: Callable[[], Iterable[Any]], batch_size: int,
               segment_length: int, *, encode: Callable[[Any], Sequence[int]] | None = None,
               shard_index: int = 0, num_shards: int = 1, num_epochs: int | None = 1,
               source: str = "documents", eos_id: int = EOS_ID,
               task_id: int = DOCUMENT_LM_TASK_ID):
    if segment_length < 2:
      raise ValueError(f"segment_length must be >= 2, got {segment_length}")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
      raise ValueError(f"need 0 <= shard_index < num_shards, got shard_index={shard_index}, "
                       f"num_shards={num_shards}")
    if num_epochs is not None and num_epochs < 1:
      raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
    self._documents = documents
    self._encode = encode if encode is not None else (lambda item: item)
    self.batch_size, self.segment_length = batch_size, segment_length
    self.shard_index, self.num_shards, self.num_epochs = shard_index, num_shards, num_epochs
    self.source, self.eos_id, self.task_id = source, eos_id, task_id
    # Fail now rather than at the first batch (inside tf.data the error would be opaque).
    if next(self._shard_documents(0), None) is None:
      shard = f" for shard {shard_index} of {num_shards}" if num_shards > 1 else ""
      raise ValueError(f"corpus {source!r} has no non-empty documents{shard}")
    self._rows: list[_Row | None] = [None] * batch_size
    self._step = 0
    self._open(epoch=0, cursor=0)

  # ------------------------------------------------------------------------ corpus feed

  def _shard_documents(self, start: int) -> Iterator[tuple[int, np.ndarray]]:
    """(corpus index, ids + EOS) of this shard's non-empty documents from index `start`."""
    for index, item in enumerate(self._documents()):
      if index < start or index % self.num_shards != self.shard_index:
        continue
      ids = np.asarray(self._encode(item), np.int32).reshape(-1)
      if ids.size:
        yield index, np.append(ids, np.int32(self.eos_id))

  def _open(self, epoch: int, cursor: int) -> None:
    self._epoch, self._cursor = epoch, cursor  # cursor: corpus index of the next document
    self._feed = self._shard_documents(cursor)
    self._exhausted = False
    self._found_in_pass = 0 if cursor == 0 else None  # counted only for whole passes

  def _take(self) -> _Row | None:
    """The next document of the shard, wrapping into a new epoch when allowed."""
    while not self._exhausted:
      found = next(self._feed, None)
      if found is not None:
        self._cursor = found[0] + 1
        if self._found_in_pass is not None:
          self._found_in_pass += 1
        return _Row(*found)
      if self._found_in_pass == 0:  # only a corpus that changed between passes gets here
        raise ValueError(f"corpus {self.source!r} yielded no non-empty documents for shard "
                         f"{self.shard_index} of {self.num_shards} in epoch {self._epoch}")
      if self.num_epochs is not None and self._epoch + 1 >= self.num_epochs:
        self._exhausted = True
      else:
        self._open(self._epoch + 1, 0)
    return None

  # ------------------------------------------------------------------------ stepping

  def __iter__(self) -> "DocumentStreams":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    B, S = self.batch_size, self.segment_length
    tokens = np.zeros((B, S), np.int32)
    targets = np.zeros((B, S), np.int32)
    weights = np.zeros((B, S), np.float32)
    reset = np.ones(B, bool)
    active = False
    for b in range(B):
      row = self._rows[b]
      if row is None:
        row = self._rows[b] = self._take()
        if row is None:
          continue  # corpus exhausted: the row idles
      active = True
      reset[b] = row.pos == 0
      window = row.ids[row.pos:row.pos + S + 1]
      n = len(window) - 1
      tokens[b, :n] = window[:-1]
      targets[b, :n] = window[1:]
      weights[b, :n] = 1.0
      if row.pos + S >= len(row.ids) - 1:
        self._rows[b] = None  # document done; the next one starts at the next step
      else:
        row.pos += S
    if not active:
      raise StopIteration
    self._step += 1
    return {"tokens": tokens, "targets": targets, "loss_weights": weights,
            "segment_ids": np.zeros((B, S), np.int32), "reset": reset,
            "task_id": np.full(B, self.task_id, np.int32)}

  @property
  def step(self) -> int:
    return self._step

  # ------------------------------------------------------------------------ resuming

  def state(self) -> dict[str, Any]:
    """JSON-serialisable position; `restore` continues exactly from here."""
    return {"version": STATE_VERSION, "step": self._step, "epoch": self._epoch,
            "cursor": self._cursor, "exhausted": self._exhausted,
            "rows": [None if r is None else [r.index, r.pos] for r in self._rows],
            "batch_size": self.batch_size, "segment_length": self.segment_length,
            "shard_index": self.shard_index, "num_shards": self.num_shards}

  def restore(self, state: Mapping[str, Any]) -> None:
    """Continues from `state` (from `state()`, possibly after a JSON round trip)."""
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"unsupported stream state version {state.get('version')!r}")
    for key in ("batch_size", "segment_length", "shard_index", "num_shards"):
      if state[key] != getattr(self, key):
        raise ValueError(f"stream state has {key}={state[key]}, these streams have "
                         f"{key}={getattr(self, key)}")
    wanted = {row[0] for row in state["rows"] if row is not None}
    bad = sorted(i for i in wanted if i % self.num_shards != self.shard_index)
    if bad:
      raise ValueError(f"stream state holds documents {bad} outside shard {self.shard_index}")
    held = {}
    if wanted:
      # Rows may hold documents from before the cursor or, after a wrap, from the previous
      # epoch; one pass from the start finds both.
      for index, ids in self._shard_documents(0):
        if index in wanted:
          held[index] = ids
          if len(held) == len(wanted):
            break
    missing = sorted(wanted - held.keys())
    if missing:
      raise ValueError(f"stream state refers to documents {missing} that corpus "
                       f"{self.source!r} does not have")
    self._rows = [None if row is None else _Row(row[0], held[row[0]], int(row[1]))
                  for row in state["rows"]]
    self._step = int(state["step"])
    self._open(int(state["epoch"]), int(state["cursor"]))
    self._exhausted = bool(state["exhausted"])

  @classmethod
  def from_state(cls, documents: Callable[[], Iterable[Any]], state: Mapping[str, Any],
                 **kwargs) -> "DocumentStreams":
    """New streams over `documents` positioned at `state`; kwargs as for the constructor."""
    for key in ("shard_index", "num_shards"):
      kwargs.setdefault(key, state[key])
    streams = cls(documents, state["batch_size"], state["segment_length"], **kwargs)
    streams.restore(state)
    return streams


# ---------------------------------------------------------------------------- tf.data


def _signature(batch_size: int | None, length: int, with_state: bool):
  lead = [] if batch_size is None else [batch_size]
  spec = {
      "tokens": tf.TensorSpec(lead + [length], tf.int32),
      "targets": tf.TensorSpec(lead + [length], tf.int32),
      "loss_weights": tf.TensorSpec(lead + [length], tf.float32),
      "segment_ids": tf.TensorSpec(lead + [length], tf.int32),
      "reset": tf.TensorSpec(lead, tf.bool),
      "task_id": tf.TensorSpec(lead, tf.int32),
  }
  if with_state:
    spec["stream_state"] = tf.TensorSpec([], tf.string)
  return spec


def document_lm_dataset(patterns: str | Iterable[str] = EMBEDDED_CORPUS, *, vocab,
                        batch_size: int, segment_length: int, shard_index: int = 0,
                        num_shards: int = 1, num_epochs: int | None = None,
                        batched: bool = True, state: Mapping[str, Any] | None = None,
                        with_state: bool = False) -> tf.data.Dataset:
  """tf.data over `DocumentStreams` on the documents of `patterns` (see `read_documents`).

  batched=True: one element per step, features [B, S] (reset, task_id: [B]).
  batched=False: the rows of each step in order (b = 0..B-1, then the next step), features
  [S] and scalars; `.batch(batch_size)` regroups them into exactly the steps. Do not
  shard or shuffle the result: use shard_index/num_shards, which keep streams intact.

  Each iteration of the dataset starts from `state` (or the beginning). tf.data reads
  ahead, so the Python object's position is not the consumer's; with_state=True adds
  "stream_state", the JSON of `state()` after the step that element belongs to, to
  checkpoint with the model and pass back as `state` to resume exactly.
  """
  if not isinstance(patterns, str):
    patterns = list(patterns)
  source = patterns if isinstance(patterns, str) else ",".join(patterns)
  tokenizer = vocab.tokenizer

  def make() -> DocumentStreams:
    streams = DocumentStreams(lambda: read_documents(patterns), batch_size, segment_length,
                              encode=lambda doc: tokenizer.encode(doc.text),
                              shard_index=shard_index, num_shards=num_shards,
                              num_epochs=num_epochs, source=source)
    if state is not None:
      streams.restore(state)
    return streams

  make()  # raise configuration and empty-corpus errors here, in Python

  def steps():
    streams = make()
    for batch in streams:
      if with_state:
        batch["stream_state"] = np.bytes_(json.dumps(streams.state()))
      if batched:
        yield batch
      else:
        for b in range(batch_size):
          yield {k: (v if k == "stream_state" else v[b]) for k, v in batch.items()}

  return tf.data.Dataset.from_generator(
      steps, output_signature=_signature(batch_size if batched else None, segment_length,
                                         with_state))

