"""Task-specific representation modules (NLU and NLG) on top of the universal one.

The paper does not say how the 4096-wide universal output feeds 768-wide task
stacks. Each task module starts with its own linear projection to the task width
followed by a layer norm: a learned, per-task read-out of the shared
representation that also puts the task stack's input at unit scale. It is kept
even when the two widths are equal, so every config has the same structure.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from ernie3_jax.model import layers
from ernie3_jax.model.config import Ernie3Config, StackConfig
from ernie3_jax.model.transformer_xl import TransformerXLStack

Array = jax.Array


class TaskModule(nn.Module):
  """Projection (universal width -> task width) and a Transformer-XL stack."""

  stack: StackConfig
  config: Ernie3Config
  causal: bool

  @nn.compact
  def __call__(self, x: Array, token_valid: Array, memory: Array | None = None,
               memory_valid: Array | None = None, deterministic: bool = True,
               dropout_multiplier=1.0):
    cfg, st = self.config, self.stack
    h = layers.DenseGeneral((st.d_model,), ("embed",), (st.embed_axis,),
                            dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
                            kernel_init_std=cfg.initializer_range, name="projection")(x)
    h = layers.LayerNorm(st.embed_axis, cfg.layer_norm_epsilon, cfg.compute_dtype,
                         cfg.weights_dtype, name="projection_norm")(h)
    return TransformerXLStack(st, cfg, name="stack")(
        h, token_valid, self.causal, memory, memory_valid, deterministic, dropout_multiplier)
