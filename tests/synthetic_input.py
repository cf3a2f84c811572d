"""A small deterministic input for trainer-mechanics tests (not a data pipeline).

Rows are drawn from a numpy RNG keyed by the step counter, so the input's
position is one integer and resuming it is exact. Token i+1 is a fixed function
of token i on the NLG path, so next-token loss can fall quickly.
"""

from __future__ import annotations

import numpy as np

from ernie3_jax.training import task_ids


class SyntheticInput:

  def __init__(self, *, nlu_batch_size, nlg_batch_size, sequence_length, nlg_segment_length,
               seed, shard_index, num_shards, vocab_size=96):
    self.nlg_batch, self.seg_len = nlg_batch_size, nlg_segment_length
    self.seed, self.shard, self.vocab = seed, shard_index, vocab_size
    self.count = 0

  def _rng(self, what):
    return np.random.RandomState([self.seed, self.shard, self.count, what])

  def next_batch(self, batch_size, length):
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
    start = rng.randint(6, self.vocab, size=(self.nlg_batch, 1))
    seq = (start + np.arange(self.seg_len + 1)[None]) % (self.vocab - 6) + 6
    nlg = {"tokens": seq[:, :-1].astype(np.int32), "targets": seq[:, 1:].astype(np.int32),
           "loss_weights": np.ones((self.nlg_batch, self.seg_len), np.float32),
           "segment_ids": np.zeros((self.nlg_batch, self.seg_len), np.int32),
           "reset": (rng.rand(self.nlg_batch) < 0.3),
           "task_id": np.full((self.nlg_batch,), task_ids.DOCUMENT_LM, np.int32)}
    self.count += 1
    return nlu, nlg

  def state(self):
    return {"count": self.count}

  def restore(self, state):
    self.count = int(state["count"])
