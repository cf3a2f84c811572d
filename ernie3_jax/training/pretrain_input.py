"""The pre-training input: NLU rows sampled from a seqio mixture, NLG document streams.

Each step gets an NLU batch (rows of the mixture's NLU tasks, drawn by their
rates) and an NLG batch (the next segment of each document stream). Continual
multi-task learning (ERNIE 2.0) is a list of stages; a stage names its tasks and
rates and runs for a number of steps, and every later stage must keep the tasks of
the earlier ones. The position is (step, rows each data shard consumed in the
current stage, each shard's stream state): the NLU pipeline is deterministic, so
restoring rebuilds it and skips the consumed rows; the streams restore exactly.
Data shards are fixed at a run's first start, not tied to processes (see
`PretrainInput`), so the position is the same whatever the process count.
"""

from __future__ import annotations

import difflib
import os
from typing import Sequence

import gin

from ernie3_jax.runtime import tf_runtime  # noqa: F401  (first: hides GPUs from TensorFlow)
import numpy as np
import seqio

from ernie3_jax.data import data_config as dc
from ernie3_jax.data import document_streams
from ernie3_jax.runtime.tf_runtime import tf
from ernie3_jax.model import task_ids
from ernie3_jax.runtime import storage

_CHUNK = 64
NLU_KEYS = ("tokens", "segment_ids", "mlm_targets", "mlm_weights", "label", "label_weight",
            "task_id")


def _resolve(name: str):
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {close}?" if close else f"; registered: {known}"
    raise ValueError(f"task or mixture {name!r} is not registered{hint}") from None


def mixture_rates(name: str) -> dict[str, float]:
  """{task: rate} of a registered mixture, or {task: 1.0} for a task."""
  provider = _resolve(name)
  if isinstance(provider, seqio.Mixture):
    return {t.name: float(provider.get_rate(t)) for t in provider.tasks}
  return {provider.name: 1.0}


class _ShardRows:
  """One data shard's NLU rows, handed out in order from tf.data chunks."""

  def __init__(self, dataset: "tf.data.Dataset"):
    # Rows cross from tf.data in chunks (a per-element hand-off costs more than the
    # preprocessing); the position stays counted in rows handed out.
    self._chunks = dataset.batch(_CHUNK).prefetch(2).as_numpy_iterator()
    self._buffer, self._pos = None, 0

  def take(self, count: int) -> dict[str, np.ndarray]:
    parts = []
    while count:
      if self._buffer is None or self._pos == len(self._buffer["tokens"]):
        self._buffer, self._pos = next(self._chunks), 0
      n = min(count, len(self._buffer["tokens"]) - self._pos)
      parts.append({k: v[self._pos:self._pos + n] for k, v in self._buffer.items()})
      self._pos += n
      count -= n
    return {k: np.concatenate([p[k] for p in parts]) for k in NLU_KEYS}


@gin.configurable
class PretrainInput:
  """Per-step (nlu, nlg) numpy batches for one process.

  The data is split into `num_data_shards` fixed shards, independent of the number of
  processes: shard v reads its own part of every task and corpus, and every global
  batch is the concatenation of an equal block of rows from each shard, in shard order.
  Process p of P reads shards [p V/P, (p+1) V/P), whose blocks are its rows of the
  global batch. So the global batches, and the saved position (one row count per
  stage, plus each shard's stream state), do not depend on P: a run resumes on any
  process count that divides V, at the exact same data position.

  Args:
    mixture: registered seqio mixture whose NLU tasks are sampled by rate and whose
      `document_lm` task (if present) turns on the NLG streams.
    stages: optional [(num_steps, {task: rate}), ...] replacing the mixture's rates;
      the last stage runs until training ends.
    cache_dir: directory of seqio caches written by `python -m
      ernie3_jax.tools.preprocess`; tasks cached there (as `<task>_cached`) are read
      from it, the others are preprocessed here (both are reported).
    num_data_shards: V; None takes the process count of the run's first start (a
      resumed run keeps its checkpoint's V). Set it to a multiple of every process
      count the run may resume on (e.g. 2 to move between 1 and 2 processes).
  """

  def __init__(self, *, nlu_batch_size: int, nlg_batch_size: int, sequence_length: int,
               nlg_segment_length: int, seed: int, shard_index: int = 0, num_shards: int = 1,
               split: str = "train", mixture: str = "ernie3_pretrain",
               stages: Sequence[tuple[int, dict[str, float]]] | None = None,
               cache_dir: str | None = None, num_data_shards: int | None = None):
    rates = mixture_rates(mixture)
    self.stages = [(int(n), dict(r)) for n, r in stages] if stages else [(0, rates)]
    seen: set[str] = set()
    for i, (_, stage_rates) in enumerate(self.stages):
      for name in stage_rates:
        _resolve(name)
      missing = seen - set(stage_rates)
      if missing:
        raise ValueError(f"PretrainInput.stages[{i}] drops tasks of earlier stages "
                         f"{sorted(missing)}; continual multi-task learning keeps them")
      seen |= set(stage_rates)
    self.nlu_batch_size, self.sequence_length = nlu_batch_size, sequence_length
    self.nlg_batch_size, self.nlg_segment_length = nlg_batch_size, nlg_segment_length
    self.seed, self.process_index, self.num_processes, self.split = (seed, shard_index,
                                                                     num_shards, split)
    self.cached = self._find_caches(cache_dir, seen - {"document_lm"}) if cache_dir else {}
    self.use_streams = "document_lm" in seen and nlg_batch_size > 0
    self._docs = None
    if self.use_streams:
      cfg = dc.current()
      self._vocab, self._corpus = dc.vocabulary(cfg.vocabulary), cfg.corpus
      self._docs = list(dc.documents(cfg, split))
    self.step = 0
    self._stage = -1
    self._consumed = 0  # rows each shard has handed out in the current stage
    self._rows: list[_ShardRows] | None = None
    self._use_data_shards(num_data_shards or num_shards)

  # -- shards -----------------------------------------------------------------

  def _use_data_shards(self, num_data_shards: int) -> None:
    """Takes this process's share of `num_data_shards` shards; fresh stream positions."""
    v, p = num_data_shards, self.num_processes
    if v < 1 or v % p:
      raise ValueError(f"PretrainInput.num_data_shards={v} must be a positive multiple of "
                       f"the process count {p}: each process reads whole shards")
    self.num_data_shards = v
    self.shards = list(range(self.process_index * v // p, (self.process_index + 1) * v // p))
    self.streams = {}
    if self.use_streams:
      if self.nlg_batch_size % len(self.shards):
        raise ValueError(
            f"the NLG batch of this process ({self.nlg_batch_size} rows: train.nlg_batch_size"
            f" / {p} processes) must split evenly over its {len(self.shards)} data shards "
            f"(PretrainInput.num_data_shards={v})")
      docs = self._docs
      rows = self.nlg_batch_size // len(self.shards)
      self.streams = {shard: document_streams.DocumentStreams(
          lambda: docs, rows, self.nlg_segment_length,
          encode=lambda d: self._vocab.tokenizer.encode(d.text), shard_index=shard,
          num_shards=v, num_epochs=None, source=self._corpus) for shard in self.shards}

  @property
  def row_multiple(self) -> int:
    """Global batch sizes must be multiples of this (one equal block per data shard)."""
    return self.num_data_shards

  @staticmethod
  def _find_caches(cache_dir: str, names: set[str]) -> dict[str, str]:
    """{task: its cached task} for the tasks cached under `cache_dir`."""
    if not storage.isdir(cache_dir):
      raise FileNotFoundError(f"PretrainInput.cache_dir={cache_dir!r} is not a directory")
    if cache_dir not in seqio.get_global_cache_dirs():
      seqio.add_global_cache_dirs([cache_dir])
    cached = {}
    for name in sorted(names):
      candidate = name + "_cached"
      if (candidate in seqio.TaskRegistry.names()
          and storage.exists(os.path.join(cache_dir, candidate, "COMPLETED"))):
        cached[name] = candidate
    if not cached:
      raise FileNotFoundError(
          f"PretrainInput.cache_dir={cache_dir!r} holds no completed cache of {sorted(names)}; "
          "run `python -m ernie3_jax.tools.preprocess` first")
    uncached = sorted(names - set(cached))
    print(f"reading {sorted(cached)} from the caches in {cache_dir}"
          + (f"; preprocessing {uncached} during training" if uncached else ""), flush=True)
    return cached

  # -- NLU rows ---------------------------------------------------------------

  def _stage_at(self, step: int) -> int:
    boundary = 0
    for i, (num_steps, _) in enumerate(self.stages):
      boundary += num_steps
      if i == len(self.stages) - 1 or step < boundary:
        return i
    return len(self.stages) - 1

  def _shard_dataset(self, stage: int, shard: int, rates: dict[str, float]):
    """One shard's rows of the stage's NLU tasks, mixed by rate."""
    info = seqio.ShardInfo(shard, self.num_data_shards)
    datasets = []
    for i, name in enumerate(sorted(rates)):
      ds = _resolve(self.cached.get(name, name)).get_dataset(
          {"tokens": self.sequence_length}, split=self.split, shuffle=True,
          seed=self.seed + 1000 * stage + i, shard_info=info, num_epochs=None,
          trim_output_features=False, use_cached=name in self.cached)
      datasets.append(ds.map(lambda ex: {k: ex[k] for k in NLU_KEYS}))
    weights = [rates[name] for name in sorted(rates)]
    return tf.data.Dataset.sample_from_datasets(datasets, weights=weights,
                                                seed=self.seed + 7 + stage)

  def _open_stage(self, stage: int, skip: int) -> None:
    rates = {k: v for k, v in self.stages[stage][1].items() if k not in ("document_lm",)}
    self._stage, self._consumed = stage, skip
    self._rows = [_ShardRows(self._shard_dataset(stage, shard, rates).skip(skip))
                  for shard in self.shards] if rates else None

  def _next_nlu(self, batch_size: int, length: int) -> dict[str, np.ndarray] | None:
    stage = self._stage_at(self.step)
    if stage != self._stage:
      self._open_stage(stage, 0)
    if self._rows is None:
      return None
    if batch_size % len(self._rows):
      raise ValueError(f"an NLU batch of {batch_size} rows per process does not split "
                       f"evenly over this process's {len(self._rows)} data shards "
                       f"(PretrainInput.num_data_shards={self.num_data_shards})")
    per_shard = batch_size // len(self._rows)
    parts = [rows.take(per_shard) for rows in self._rows]
    self._consumed += per_shard
    batch = {k: np.concatenate([p[k] for p in parts]) for k in NLU_KEYS}
    for k in ("tokens", "segment_ids", "mlm_targets", "mlm_weights"):
      batch[k] = batch[k][:, :length]  # progressive learning: shorter sequences
    return batch

  # -- the step ---------------------------------------------------------------

  def next_batch(self, nlu_batch_size: int, length: int):
    """This process's rows of the next step: `nlu_batch_size` NLU rows, and its NLG
    streams' next segments."""
    nlu = self._next_nlu(nlu_batch_size, length)
    nlg = None
    if self.streams:
      parts = [next(self.streams[shard]) for shard in self.shards]
      nlg = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
      nlg["task_id"] = np.full_like(nlg["task_id"], task_ids.DOCUMENT_LM)
    self.step += 1
    return nlu, nlg

  def close(self) -> None:
    """Releases the tf.data iterators (live generator-backed iterators can hang or
    abort the interpreter at exit)."""
    self._rows = None
    import gc  # pylint: disable=g-import-not-at-top
    gc.collect()

  def state(self) -> dict:
    """This process's position: the shared counters and its own shards' streams."""
    return {"version": STATE_VERSION, "step": self.step, "stage": self._stage,
            "consumed_per_shard": self._consumed, "num_data_shards": self.num_data_shards,
            "streams": {str(s): self.streams[s].state() for s in self.shards
                        if s in self.streams}}

  def restore(self, states: Sequence[dict]) -> None:
    """Continues from the positions of every process of the saved run (any count)."""
    states = [_upgrade(s) for s in states]
    first = states[0]
    for index, other in enumerate(states[1:], 1):
      for key in ("step", "stage", "consumed_per_shard", "num_data_shards"):
        if other[key] != first[key]:
          raise ValueError(f"the saved data positions disagree: process 0 has {key}="
                           f"{first[key]}, process {index} has {other[key]}")
    self._use_data_shards(int(first["num_data_shards"]))
    self.step = int(first["step"])
    stage = int(first["stage"])
    if stage >= 0:
      self._open_stage(stage, int(first["consumed_per_shard"]))
    saved = {int(k): v for s in states for k, v in s["streams"].items()}
    for shard, streams in self.streams.items():
      if shard not in saved:
        raise ValueError(f"the checkpoint holds no document-stream position for data shard "
                         f"{shard} (it has {sorted(saved)}); was it written with "
                         "document_lm in the mixture?")
      streams.restore(saved[shard])


STATE_VERSION = 2


def _upgrade(state: dict) -> dict:
  """A data position in the current layout; older ones held one process's streams."""
  if state.get("version") == STATE_VERSION:
    return state
  streams = state.get("streams")
  shards = 1 if streams is None else int(streams["num_shards"])
  if shards != 1:
    raise ValueError(
        "this checkpoint was written by an earlier version that saved only process 0's "
        f"data position of a {shards}-process run; the other processes' positions are "
        "lost, so it cannot resume exactly. Start it afresh, or take its parameters with "
        "train.init_from")
  return {"version": STATE_VERSION, "step": state["step"], "stage": state["stage"],
          "consumed_per_shard": state["consumed"], "num_data_shards": 1,
          "streams": {} if streams is None else {"0": streams}}
