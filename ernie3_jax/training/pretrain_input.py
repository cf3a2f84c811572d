"""The pre-training input: NLU rows sampled from a seqio mixture, NLG document streams.

Each step gets an NLU batch (rows of the mixture's NLU tasks, drawn by their
rates) and an NLG batch (the next segment of each document stream). Continual
multi-task learning (ERNIE 2.0) is a list of stages; a stage names its tasks and
rates and runs for a number of steps, and every later stage must keep the tasks of
the earlier ones. The position is (step, rows consumed in the current stage,
stream state): the NLU pipeline is deterministic, so restoring rebuilds it and
skips the consumed rows; the streams restore exactly.
"""

from __future__ import annotations

import difflib
import os
from typing import Sequence

import gin

from ernie3_jax import tf_runtime  # noqa: F401  (first: hides GPUs from TensorFlow)
import numpy as np
import seqio

from ernie3_jax.data import data_config as dc
from ernie3_jax.data import document_streams
from ernie3_jax.tf_runtime import tf
from ernie3_jax.training import task_ids

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


@gin.configurable
class PretrainInput:
  """Per-step (nlu, nlg) numpy batches for one process.

  Args:
    mixture: registered seqio mixture whose NLU tasks are sampled by rate and whose
      `document_lm` task (if present) turns on the NLG streams.
    stages: optional [(num_steps, {task: rate}), ...] replacing the mixture's rates;
      the last stage runs until training ends.
    cache_dir: directory of seqio caches written by `python -m
      ernie3_jax.tools.preprocess`; tasks cached there (as `<task>_cached`) are read
      from it, the others are preprocessed here (both are reported).
  """

  def __init__(self, *, nlu_batch_size: int, nlg_batch_size: int, sequence_length: int,
               nlg_segment_length: int, seed: int, shard_index: int = 0, num_shards: int = 1,
               split: str = "train", mixture: str = "ernie3_pretrain",
               stages: Sequence[tuple[int, dict[str, float]]] | None = None,
               cache_dir: str | None = None):
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
    self.seed, self.shard_index, self.num_shards, self.split = (seed, shard_index, num_shards,
                                                                split)
    self.cached = self._find_caches(cache_dir, seen - {"document_lm"}) if cache_dir else {}
    self.use_streams = "document_lm" in seen
    self.streams = None
    if self.use_streams and nlg_batch_size:
      cfg = dc.current()
      vocab = dc.vocabulary(cfg.vocabulary)
      docs = list(dc.documents(cfg, split))
      self.streams = document_streams.DocumentStreams(
          lambda: docs, nlg_batch_size, nlg_segment_length,
          encode=lambda d: vocab.tokenizer.encode(d.text), shard_index=shard_index,
          num_shards=num_shards, num_epochs=None, source=cfg.corpus)
      self._stream_iter = iter(self.streams)
    self.step = 0
    self._stage = -1
    self._consumed = 0
    self._rows = None

  @staticmethod
  def _find_caches(cache_dir: str, names: set[str]) -> dict[str, str]:
    """{task: its cached task} for the tasks cached under `cache_dir`."""
    if not os.path.isdir(cache_dir):
      raise FileNotFoundError(f"PretrainInput.cache_dir={cache_dir!r} is not a directory")
    if cache_dir not in seqio.get_global_cache_dirs():
      seqio.add_global_cache_dirs([cache_dir])
    cached = {}
    for name in sorted(names):
      candidate = name + "_cached"
      if (candidate in seqio.TaskRegistry.names()
          and os.path.exists(os.path.join(cache_dir, candidate, "COMPLETED"))):
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

  def _open_stage(self, stage: int, skip: int) -> None:
    rates = {k: v for k, v in self.stages[stage][1].items() if k not in ("document_lm",)}
    self._stage, self._consumed = stage, skip
    if not rates:
      self._rows = None
      return
    shard = seqio.ShardInfo(self.shard_index, self.num_shards)
    datasets = []
    for i, name in enumerate(sorted(rates)):
      ds = _resolve(self.cached.get(name, name)).get_dataset(
          {"tokens": self.sequence_length}, split=self.split, shuffle=True,
          seed=self.seed + 1000 * stage + i, shard_info=shard, num_epochs=None,
          trim_output_features=False, use_cached=name in self.cached)
      datasets.append(ds.map(lambda ex: {k: ex[k] for k in NLU_KEYS}))
    weights = [rates[name] for name in sorted(rates)]
    mixed = tf.data.Dataset.sample_from_datasets(datasets, weights=weights,
                                                 seed=self.seed + 7 + stage)
    # Rows cross from tf.data in chunks (a per-element hand-off costs more than the
    # preprocessing); the position stays counted in rows handed out.
    self._rows = mixed.skip(skip).batch(_CHUNK).prefetch(2).as_numpy_iterator()
    self._buffer, self._buffer_pos = None, 0

  def _next_nlu(self, batch_size: int, length: int) -> dict[str, np.ndarray] | None:
    stage = self._stage_at(self.step)
    if stage != self._stage:
      self._open_stage(stage, 0)
    if self._rows is None:
      return None
    parts, needed = [], batch_size
    while needed:
      if self._buffer is None or self._buffer_pos == len(self._buffer["tokens"]):
        self._buffer, self._buffer_pos = next(self._rows), 0
      take = min(needed, len(self._buffer["tokens"]) - self._buffer_pos)
      parts.append({k: v[self._buffer_pos:self._buffer_pos + take]
                    for k, v in self._buffer.items()})
      self._buffer_pos += take
      needed -= take
    self._consumed += batch_size
    batch = {k: np.concatenate([p[k] for p in parts]) for k in NLU_KEYS}
    for k in ("tokens", "segment_ids", "mlm_targets", "mlm_weights"):
      batch[k] = batch[k][:, :length]  # progressive learning: shorter sequences
    return batch

  # -- the step ---------------------------------------------------------------

  def next_batch(self, nlu_batch_size: int, length: int):
    nlu = self._next_nlu(nlu_batch_size, length)
    nlg = None
    if self.streams is not None:
      nlg = next(self._stream_iter)
      nlg["task_id"] = np.full_like(nlg["task_id"], task_ids.DOCUMENT_LM)
    self.step += 1
    return nlu, nlg

  def close(self) -> None:
    """Releases the tf.data iterators (live generator-backed iterators can hang or
    abort the interpreter at exit)."""
    self._rows, self._buffer = None, None
    import gc  # pylint: disable=g-import-not-at-top
    gc.collect()

  def state(self) -> dict:
    return {"step": self.step, "stage": self._stage, "consumed": self._consumed,
            "streams": None if self.streams is None else self.streams.state()}

  def restore(self, state: dict) -> None:
    self.step = int(state["step"])
    stage = int(state["stage"])
    if stage >= 0:
      self._open_stage(stage, int(state["consumed"]))
    if self.streams is not None and state.get("streams") is not None:
      self.streams.restore(state["streams"])
      self._stream_iter = iter(self.streams)
