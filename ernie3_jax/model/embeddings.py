"""Input embeddings: token + segment + task id (ERNIE 2.0).

There is no absolute position embedding: every stack encodes relative positions
inside attention, which is what lets the NLG path continue across segments.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ernie3_jax.model import layers
from ernie3_jax.model.config import Ernie3Config

Array = jax.Array


class Embeddings(nn.Module):
  config: Ernie3Config

  def setup(self):
    cfg = self.config
    init = lambda names: nn.with_logical_partitioning(
        layers.normal_init(cfg.initializer_range), names)
    self.token = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype,
                          param_dtype=cfg.weights_dtype,
                          embedding_init=init(("vocab", "embed")))
    self.segment = nn.Embed(cfg.num_segments, cfg.d_model, dtype=cfg.compute_dtype,
                            param_dtype=cfg.weights_dtype,
                            embedding_init=init(("segments", "embed")))
    self.task = nn.Embed(cfg.num_tasks, cfg.d_model, dtype=cfg.compute_dtype,
                         param_dtype=cfg.weights_dtype, embedding_init=init(("tasks", "embed")))
    self.norm = layers.LayerNorm("embed", cfg.layer_norm_epsilon, cfg.compute_dtype,
                                 cfg.weights_dtype)
    self.dropout = layers.Dropout(cfg.dropout_rate, cfg.dropout_rng)

  def __call__(self, tokens: Array, segment_ids: Array, task_ids: Array,
               deterministic: bool = True, dropout_multiplier: Array | float = 1.0) -> Array:
    """tokens, segment_ids [B, L]; task_ids [B] -> [B, L, d_model]."""
    x = self.token(tokens) + self.segment(segment_ids) + self.task(task_ids)[:, None, :]
    x = self.norm(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return self.dropout(x, deterministic, dropout_multiplier)

  def attend(self, query: Array) -> Array:
    """[..., d_model] -> [..., vocab] float32 logits against the token table (tied output).

    The operands stay in the compute dtype, the products accumulate and land in float32
    (flax's `Embed.attend` would return them rounded to bf16 under bf16 compute).
    """
    cfg = self.config
    table = self.token.embedding.astype(cfg.compute_dtype)
    return jax.lax.dot_general(query.astype(cfg.compute_dtype), table,
                               (((query.ndim - 1,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32)
