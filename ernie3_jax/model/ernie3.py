"""ERNIE 3.0: universal representation module + NLU and NLG task modules + heads.

Two paths share the embeddings and the universal module:

* NLU path (knowledge-masked LM, sentence reordering, sentence distance, UKTP,
  fine-tuning): bidirectional attention, no memory, NLU task module.
* NLG path (document LM, generation): causal attention with recurrence memory in
  both the universal module and the NLG task module.

Inputs use pad id 0: positions holding token 0 are padding.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ernie3_jax.model import recurrence_memory
from ernie3_jax.model.config import Ernie3Config
from ernie3_jax.model.embeddings import Embeddings
from ernie3_jax.model.heads import Classifier, Pooler, TokenPredictionHead
from ernie3_jax.model.task_modules import TaskModule
from ernie3_jax.model.transformer_xl import TransformerXLStack

Array = jax.Array
PAD_ID = 0


def mlm_head_params(config: Ernie3Config, params: dict[str, Any]) -> dict[str, Any]:
  """The parameters `Ernie3.mlm_logits` reads: the head and, if tied, the token table."""
  head = {"mlm_head": params["mlm_head"]}
  if config.tie_embeddings:
    head["embedder"] = {"token": params["embedder"]["token"]}
  return head


class Ernie3(nn.Module):
  config: Ernie3Config

  def setup(self):
    cfg = self.config
    self.embedder = Embeddings(cfg)
    self.universal = TransformerXLStack(cfg.universal_stack(), cfg)
    self.nlu = TaskModule(cfg.nlu_stack(), cfg, causal=False)
    self.nlg = TaskModule(cfg.nlg_stack(), cfg, causal=True)
    self.mlm_head = TokenPredictionHead(cfg)
    self.lm_head = TokenPredictionHead(cfg)
    self.pooler = Pooler(cfg)
    self.reorder_head = Classifier(cfg.num_reorder_classes, cfg)
    self.distance_head = Classifier(cfg.num_distance_classes, cfg)
    self.choice_scorer = Classifier(1, cfg)
    if cfg.num_labels > 0:
      self.classifier = Classifier(cfg.num_labels, cfg)

  # -- representations ------------------------------------------------------

  def nlu_encode(self, tokens: Array, segment_ids: Array, task_ids: Array,
                 deterministic: bool = True, dropout_multiplier=1.0) -> Array:
    """Bidirectional universal + NLU stacks: [B, L] -> [B, L, task_d_model]."""
    valid = tokens != PAD_ID
    x = self.embedder(tokens, segment_ids, task_ids, deterministic, dropout_multiplier)
    x, _ = self.universal(x, valid, False, None, None, deterministic, dropout_multiplier)
    h, _ = self.nlu(x, valid, None, None, deterministic, dropout_multiplier)
    return h

  def nlg_decode(self, tokens: Array, segment_ids: Array, task_ids: Array,
                 memory: dict[str, Any] | None = None, reset: Array | None = None,
                 deterministic: bool = True, dropout_multiplier=1.0):
    """Causal universal + NLG stacks over one segment, continuing from `memory`.

    `reset` [B] marks rows whose segment starts a new document; their memory is
    forgotten first. Returns (hidden [B, L, task_d_model], next memory or None).
    """
    valid = tokens != PAD_ID
    if memory is not None and reset is not None:
      memory = recurrence_memory.reset_rows(memory, reset)
    mem_valid = None if memory is None else memory["valid"]
    x = self.embedder(tokens, segment_ids, task_ids, deterministic, dropout_multiplier)
    x, umem = self.universal(x, valid, True, None if memory is None else memory["universal"],
                             mem_valid, deterministic, dropout_multiplier)
    h, nmem = self.nlg(x, valid, None if memory is None else memory["nlg"], mem_valid,
                       deterministic, dropout_multiplier)
    if memory is None:
      return h, None
    return h, {"universal": umem, "nlg": nmem,
               "valid": recurrence_memory.append_valid(mem_valid, valid)}

  # -- cached decoding (see model/decode_cache.py) ---------------------------

  def embed(self, tokens: Array, segment_ids: Array, task_ids: Array) -> Array:
    """Deterministic input embeddings [B, L, d_model] (the first step of every path)."""
    return self.embedder(tokens, segment_ids, task_ids, True)

  def lm_logits(self, h: Array, output_table: Array | None = None) -> Array:
    """Next-token logits [..., V] of NLG hidden states [..., task_d_model];
    `output_table` as in `TokenPredictionHead`."""
    return self.lm_head(h, self.embedder.attend, output_table)

  # -- pre-training heads ---------------------------------------------------

  def nlu_pretrain(self, tokens, segment_ids, task_ids, deterministic=True,
                   dropout_multiplier=1.0) -> dict[str, Array]:
    """Logits of every NLU objective for one batch (the loss picks by task)."""
    h = self.nlu_encode(tokens, segment_ids, task_ids, deterministic, dropout_multiplier)
    out = self.sentence_logits(h, deterministic, dropout_multiplier)
    out["mlm_logits"] = self.mlm_logits(h)
    return out

  def mlm_logits(self, h: Array) -> Array:
    """Masked-token logits [..., V] of NLU hidden states [..., task_d_model]."""
    return self.mlm_head(h, self.embedder.attend)

  def sentence_logits(self, h: Array, deterministic=True,
                      dropout_multiplier=1.0) -> dict[str, Array]:
    """Sentence reordering and distance logits of NLU hidden states [B, L, D]."""
    pooled = self.pooler(h, deterministic, dropout_multiplier)
    return {"reorder_logits": self.reorder_head(pooled),
            "distance_logits": self.distance_head(pooled)}

  def nlg_pretrain(self, tokens, segment_ids, task_ids, memory=None, reset=None,
                   deterministic=True, dropout_multiplier=1.0):
    """Next-token logits [B, L, V] and the next memory."""
    h, memory = self.nlg_decode(tokens, segment_ids, task_ids, memory, reset, deterministic,
                                dropout_multiplier)
    return {"lm_logits": self.lm_head(h, self.embedder.attend)}, memory

  # -- fine-tuning heads ----------------------------------------------------

  def classify(self, tokens, segment_ids, task_ids, deterministic=True,
               dropout_multiplier=1.0) -> Array:
    """[B, num_labels] logits (num_labels=1: a regression output)."""
    if self.config.num_labels <= 0:
      raise ValueError("Ernie3Config.num_labels must be > 0 to use the classifier head")
    h = self.nlu_encode(tokens, segment_ids, task_ids, deterministic, dropout_multiplier)
    return self.classifier(self.pooler(h, deterministic, dropout_multiplier))

  def score_choices(self, tokens, segment_ids, task_ids, deterministic=True,
                    dropout_multiplier=1.0) -> Array:
    """Multiple choice: tokens [B, C, L] (one row per candidate) -> scores [B, C]."""
    b, c, l = tokens.shape
    flat = lambda a: a.reshape(b * c, l)
    h = self.nlu_encode(flat(tokens), flat(segment_ids), jnp.repeat(task_ids, c),
                        deterministic, dropout_multiplier)
    scores = self.choice_scorer(self.pooler(h, deterministic, dropout_multiplier))
    return scores.reshape(b, c)

  def __call__(self, tokens, segment_ids, task_ids, memory=None, deterministic=True):
    """Runs every path and head once (used to initialise all parameters)."""
    out = self.nlu_pretrain(tokens, segment_ids, task_ids, deterministic)
    out["choice_scores"] = self.score_choices(tokens[:, None], segment_ids[:, None], task_ids,
                                              deterministic)
    if self.config.num_labels > 0:
      out["class_logits"] = self.classifier(self.pooler(
          self.nlu_encode(tokens, segment_ids, task_ids, deterministic), deterministic))
    nlg_out, memory = self.nlg_pretrain(tokens, segment_ids, task_ids, memory, None,
                                        deterministic)
    out.update(nlg_out)
    return out, memory
