"""Segment-level recurrence memory for the NLG path.

The memory of a stack is [layers, batch, M, width]: for each layer, the hidden
states of the last M positions the layer has seen. Which states are kept is the
memory mode:

* `same_layer` (ERNIE-Doc's enhanced recurrence, the default): layer l remembers
  its own *output* on the previous segment, so information climbs one layer per
  segment less slowly and the effective context grows with depth times segments.
* `previous_layer` (vanilla Transformer-XL): layer l remembers its *input*, i.e.
  layer l-1's output.

Memory never receives gradient. `valid` marks which memory slots hold real
positions; a row that starts a new document is reset to all-invalid, which makes
the next segment behave exactly as a fresh document.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Memory = dict[str, Any]  # {"universal": [L,B,M,D], "nlg": [L,B,M,Dt], "valid": [B,M]}


def init_memory(config, batch_size: int, memory_len: int | None = None) -> Memory:
  """An all-invalid memory for the universal and NLG stacks."""
  m = config.memory_len if memory_len is None else memory_len
  dtype = config.compute_dtype
  return {
      "universal": jnp.zeros((config.num_layers, batch_size, m, config.d_model), dtype),
      "nlg": jnp.zeros((config.nlg_layers, batch_size, m, config.task_d_model), dtype),
      "valid": jnp.zeros((batch_size, m), jnp.bool_),
  }


def reset_rows(memory: Memory, reset: Array) -> Memory:
  """Forgets the memory of rows where `reset` [B] is true (a document starts)."""
  keep = jnp.logical_not(reset)
  out = {"valid": jnp.logical_and(memory["valid"], keep[:, None])}
  for name in ("universal", "nlg"):
    out[name] = jnp.where(keep[None, :, None, None], memory[name],
                          jnp.zeros_like(memory[name]))
  return out


def append(old: Array, new: Array, memory_len: int) -> Array:
  """Concatenates along the position axis (axis -2) and keeps the last M, frozen."""
  joined = jnp.concatenate([old, new.astype(old.dtype)], axis=-2)
  return jax.lax.stop_gradient(joined[..., joined.shape[-2] - memory_len:, :])


def append_valid(valid: Array, token_valid: Array) -> Array:
  """[B, M] and [B, Q] -> [B, M]: validity of the slots after appending a segment."""
  m = valid.shape[1]
  joined = jnp.concatenate([valid, token_valid.astype(jnp.bool_)], axis=1)
  return joined[:, joined.shape[1] - m:]
