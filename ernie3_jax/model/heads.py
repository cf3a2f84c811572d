"""Output heads: token prediction, pooled classifiers, multiple-choice scorer."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ernie3_jax.model import layers
from ernie3_jax.model.config import Ernie3Config

Array = jax.Array


class TokenPredictionHead(nn.Module):
  """Task width -> vocabulary logits.

  A dense + GeLU + layer norm maps the task stack's output back to the universal
  width so the output projection can be the token embedding (tied) or its own
  kernel (untied). Used for knowledge-masked LM / UKTP (NLU) and document LM (NLG).
  """

  config: Ernie3Config

  @nn.compact
  def __call__(self, h: Array, attend: Callable[[Array], Array],
               output_table: Array | None = None) -> Array:
    """`output_table` [V, d_model], if given, replaces the output projection: a
    decoder passes the tied table itself (or the untied kernel transposed once),
    read out-first (`layers.matmul_out_first`)."""
    cfg = self.config
    t = layers.DenseGeneral((cfg.d_model,), ("task_embed",), ("embed",),
                            dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
                            kernel_init_std=cfg.initializer_range, name="transform")(h)
    t = nn.gelu(t, approximate=True)
    t = layers.LayerNorm("embed", cfg.layer_norm_epsilon, cfg.compute_dtype,
                         cfg.weights_dtype, name="transform_norm")(t)
    # Logits accumulate and land in float32 on every path, whatever the compute dtype.
    if output_table is not None:
      logits = layers.matmul_out_first(t, output_table.astype(t.dtype), 1, jnp.float32)
    elif cfg.tie_embeddings:
      logits = attend(t)
    else:
      logits = layers.DenseGeneral((cfg.vocab_size,), ("embed",), ("vocab",), use_bias=False,
                                   dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
                                   kernel_init_std=cfg.initializer_range, name="output",
                                   out_dtype=jnp.float32)(t)
    bias = self.param("output_bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                                  ("vocab",)),
                      (cfg.vocab_size,), cfg.weights_dtype)
    logits = layers.add_bias(logits.astype(jnp.float32), bias.astype(jnp.float32))
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class Pooler(nn.Module):
  """First-token ([CLS]) representation through dense + tanh (BERT style)."""

  config: Ernie3Config

  @nn.compact
  def __call__(self, h: Array, deterministic: bool = True, dropout_multiplier=1.0) -> Array:
    cfg = self.config
    pooled = layers.DenseGeneral((cfg.task_d_model,), ("task_embed",), ("task_embed_out",),
                                 dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
                                 kernel_init_std=cfg.initializer_range, name="dense")(h[:, 0])
    pooled = jnp.tanh(pooled)
    return layers.Dropout(cfg.dropout_rate, cfg.dropout_rng, name="dropout")(
        pooled, deterministic, dropout_multiplier)


class Classifier(nn.Module):
  """Pooled features -> `num_classes` logits (1 for regression or choice scores)."""

  num_classes: int
  config: Ernie3Config

  @nn.compact
  def __call__(self, pooled: Array) -> Array:
    cfg = self.config
    logits = layers.DenseGeneral((self.num_classes,), ("task_embed_out",), ("classes",),
                                 dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
                                 kernel_init_std=cfg.initializer_range, name="dense")(pooled)
    return logits.astype(jnp.float32)
