"""A small deterministic input for trainer-mechanics tests (not a data pipeline).

Rows are drawn from a numpy RNG keyed by the step counter, so the input's
position is one integer and resuming it is exact. Token i+1 is a fixed function
of token i on the NLG path, so next-token loss can fall quickly.
"""

from __future__ import annotations

import gin
import numpy as np

from ernie3_jax.model import task_ids


@gin.configurable
class SyntheticInput:
  """Every process computes the global batch and keeps its own rows, so any
  number of processes sees the same global batches (for multi-process tests)."""

  def __init__(self, *, nlu_batch_size, nlg_batch_size, sequence_length, nlg_segment_length,
               seed, shard_index, num_shards, vocab_size=96, split="train"):
    self.nlg_batch, self.seg_len = nlg_batch_size, nlg_segment_length
    # Held-out rows: the same generator under another seed.
    seed = seed if split == "train" else seed + 7919
    self.seed, self.shard, self.num_shards, self.vocab = (seed, shard_index, num_shards,
                                                          vocab_size)
    self.count = 0

  def _rng(self, what):
    return np.random.RandomState([self.seed, self.count, what])

  def _mine(self, batch: dict) -> dict:
    n = next(iter(batch.values())).shape[0] // self.num_shards
    return {k: v[self.shard * n:(self.shard + 1) * n] for k, v in batch.items()}

  def next_batch(self, batch_size, length):
    nlu, nlg = self._global_batch(batch_size * self.num_shards, length)
    self.count += 1
    return self._mine(nlu), self._mine(nlg)

  def _global_batch(self, batch_size, length):
    rng = self._rng(0)
    tokens = rng.randint(6, self.vocab, size=(batch_size, length)).astype(np.int32)
    tid = np.array([task_ids.NLU_TASKS[i % 4] for i in range(batch_size)], np.int32)
    masked = (rng.rand(batch_size, length) < 0.15) & np.isin(
        tid, [task_ids.KNOWLEDGE_MASKED_LM, task_ids.UKTP])[:, None]
    inputs = np.where(masked, 5, tokens)
    is_cls = np.isin(tid, [task_ids.SENTENCE_REORDERING, task_ids.SENTENCE_DISTANCE])
    nlu = {"tokens": inputs, "segment_ids": np.zeros_like(tokens), "task_id": tid,
           "mlm_targets": np.where(masked, tokens, 0).astype(np.int32),
           "mlm_weights": masked.astype(np.float32),
           "label": (tokens[:, 0] % 3).astype(np.int32), "label_weight": is_cls.astype(np.float32)}
    rng = self._rng(1)
    nlg_batch = self.nlg_batch * self.num_shards
    start = rng.randint(6, self.vocab, size=(nlg_batch, 1))
    seq = (start + np.arange(self.seg_len + 1)[None]) % (self.vocab - 6) + 6
    nlg = {"tokens": seq[:, :-1].astype(np.int32), "targets": seq[:, 1:].astype(np.int32),
           "loss_weights": np.ones((nlg_batch, self.seg_len), np.float32),
           "segment_ids": np.zeros((nlg_batch, self.seg_len), np.int32),
           "reset": (rng.rand(nlg_batch) < 0.3),
           "task_id": np.full((nlg_batch,), task_ids.DOCUMENT_LM, np.int32)}
    return nlu, nlg

  def state(self):
    return {"count": self.count}

  def restore(self, states):
    """Every process saved the same count (the position is global)."""
    self.count = int(states[0]["count"])
