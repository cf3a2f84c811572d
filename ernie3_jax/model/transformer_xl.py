"""Transformer-XL blocks and stacks (scanned or unrolled, with optional remat)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from ernie3_jax.model import layers
from ernie3_jax.model import recurrence_memory
from ernie3_jax.model.config import Ernie3Config, StackConfig
from ernie3_jax.model.relative_attention import (CACHED_KEY_AXIS, CACHED_VALUE_AXIS,
                                                 CachedRelativeAttention,
                                                 RelativeMultiHeadAttention, attention_mask,
                                                 cached_key_layout, cached_value_layout,
                                                 decoding_kernels)
from ernie3_jax.model.relative_position import relative_distances, sinusoidal_encoding

Array = jax.Array


def remat_policy(name: str):
  """Maps `Ernie3Config.remat_policy` to a jax.checkpoint policy (None: save nothing)."""
  policies = {
      "full": None,
      "dots": jax.checkpoint_policies.checkpoint_dots,
      "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
      "save_attention": jax.checkpoint_policies.save_only_these_names("attention_out"),
  }
  return policies[name]


class TransformerXLBlock(nn.Module):
  """Relative attention over [memory ; segment], then a GeLU feed-forward.

  Returns the block output and the layer's next memory (or None without memory).
  """

  stack: StackConfig
  config: Ernie3Config

  @nn.compact
  def __call__(self, x: Array, memory: Array | None, position: Array, mask: Array,
               deterministic: bool, dropout_multiplier: Array):
    cfg, st = self.config, self.stack
    dtype, pdtype = cfg.compute_dtype, cfg.weights_dtype
    norm = lambda name: layers.LayerNorm(st.embed_axis, cfg.layer_norm_epsilon, dtype,
                                         pdtype, name=name)
    drop = lambda name: layers.Dropout(cfg.dropout_rate, cfg.dropout_rng, name=name)
    attention = RelativeMultiHeadAttention(
        st.num_heads, st.head_dim, st.embed_axis, cfg.attention_dropout_rate, dtype, pdtype,
        cfg.initializer_range, cfg.dropout_rng, name="attention")
    ffn = layers.FeedForward(st.d_ff, st.embed_axis, cfg.dropout_rate, dtype, pdtype,
                             cfg.initializer_range, cfg.dropout_rng, name="ffn")
    block_input = x
    if cfg.pre_layer_norm:
      ln = norm("attention_norm")
      h = ln(x)
      context = h if memory is None else jnp.concatenate([ln(memory), h], axis=1)
      a = attention(h, context, position, mask, deterministic, dropout_multiplier)
      a = checkpoint_name(a, "attention_out")
      x = x + drop("attention_output_dropout")(a, deterministic, dropout_multiplier)
      f = ffn(norm("ffn_norm")(x), deterministic, dropout_multiplier)
      x = x + drop("ffn_output_dropout")(f, deterministic, dropout_multiplier)
    else:
      context = x if memory is None else jnp.concatenate([memory.astype(x.dtype), x], axis=1)
      a = attention(x, context, position, mask, deterministic, dropout_multiplier)
      a = checkpoint_name(a, "attention_out")
      x = norm("attention_norm")(
          x + drop("attention_output_dropout")(a, deterministic, dropout_multiplier))
      f = ffn(x, deterministic, dropout_multiplier)
      x = norm("ffn_norm")(x + drop("ffn_output_dropout")(f, deterministic, dropout_multiplier))
    x = nn.with_logical_constraint(x, ("batch", "length", st.embed_axis))
    new_memory = None
    if memory is not None:
      remembered = x if cfg.memory_mode == "same_layer" else block_input
      new_memory = recurrence_memory.append(memory, remembered, memory.shape[1])
    return x, new_memory


class TransformerXLStack(nn.Module):
  """N Transformer-XL blocks with a causal or bidirectional mask.

  Under `config.scan_layers` the blocks run under `nn.scan` (parameters stacked on
  a leading "layers" axis, one compile for any depth); otherwise they are unrolled
  as `layers_0 ... layers_{N-1}`. `unstack_scanned_params` converts between the two.
  """

  stack: StackConfig
  config: Ernie3Config

  @nn.compact
  def __call__(self, x: Array, token_valid: Array, causal: bool,
               memory: Array | None = None, memory_valid: Array | None = None,
               deterministic: bool = True, dropout_multiplier: Array | float = 1.0):
    """x [B, Q, D]; memory [L, B, M, D] with memory_valid [B, M], or None.

    The universal stack is called with `causal` set by the task's path; its
    parameters are the same either way.

    Returns (outputs [B, Q, D], next memory [L, B, M, D] or None).
    """
    cfg, st = self.config, self.stack
    dtype = cfg.compute_dtype
    qlen = x.shape[1]
    mlen = 0 if memory is None else memory.shape[2]
    key_valid = token_valid if memory is None else jnp.concatenate(
        [memory_valid, token_valid], axis=1)
    if memory is not None:
      # Memory is data from earlier segments: never differentiate into it.
      memory = jax.lax.stop_gradient(memory)
    mask = attention_mask(token_valid, key_valid, causal)
    position = sinusoidal_encoding(relative_distances(qlen, qlen + mlen), st.d_model)
    position = position.astype(dtype)
    if st.share_position_projection:
      position = layers.DenseGeneral(
          (st.num_heads, st.head_dim), (st.embed_axis,), ("heads", "kv"), use_bias=False,
          dtype=dtype, param_dtype=cfg.weights_dtype, kernel_init_std=cfg.initializer_range,
          name="shared_position")(position)
    multiplier = jnp.asarray(dropout_multiplier, jnp.float32)

    block = TransformerXLBlock
    if cfg.remat_policy != "none":
      # Argument 5 (counting self) is `deterministic`, a Python bool.
      block = nn.remat(block, policy=remat_policy(cfg.remat_policy),
                       prevent_cse=not cfg.scan_layers, static_argnums=(5,))
    if cfg.scan_layers:
      scanned = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
          length=st.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      x, new_memory = scanned(st, cfg, name="layers")(x, memory, position, mask,
                                                       deterministic, multiplier)
    else:
      new_layers = []
      for i in range(st.num_layers):
        layer_memory = None if memory is None else memory[i]
        x, m = block(st, cfg, name=f"layers_{i}")(x, layer_memory, position, mask,
                                                  deterministic, multiplier)
        new_layers.append(m)
      new_memory = None if memory is None else jnp.stack(new_layers)
    if cfg.pre_layer_norm:
      x = layers.LayerNorm(st.embed_axis, cfg.layer_norm_epsilon, dtype, cfg.weights_dtype,
                           name="final_norm")(x)
    return x, new_memory


def unstack_scanned_params(stack_params: dict, num_layers: int) -> dict:
  """Scanned stack params {"layers": stacked} -> unrolled {"layers_i": ...}."""
  out = {k: v for k, v in stack_params.items() if k != "layers"}
  for i in range(num_layers):
    out[f"layers_{i}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], stack_params["layers"])
  return out


def write_rows(buffer: Array, update: Array, start: Array, axis: int = 1) -> Array:
  """Writes `update` into `buffer` (both batch first) at per-row offsets `start` [B]
  along `axis`: by default [B, Q, ...] into [B, S, ...]."""
  if update.shape[axis] == 1:
    # One token (every decoding step): one dynamic-update-slice per row, which XLA:CPU
    # writes in place into the loop-carried buffer, touching only the row's slot. A
    # select over the whole buffer (the earlier form) read and rewrote all of it every
    # token: 5 ms of a batch-8 step for the 36 buffers of 12 layers, against 0.4 ms
    # (0.22 against 0.07 ms at batch 1; `benchmarks/decode_profile.py`).
    update = update.astype(buffer.dtype)
    for row in range(buffer.shape[0]):
      index = [jnp.int32(0)] * buffer.ndim
      index[0], index[axis] = jnp.int32(row), start[row].astype(jnp.int32)
      buffer = jax.lax.dynamic_update_slice(
          buffer, jax.lax.slice_in_dim(update, row, row + 1), index)
    return buffer
  put = lambda buf, upd, s: jax.lax.dynamic_update_slice_in_dim(buf, upd.astype(buf.dtype), s,
                                                                axis=axis - 1)
  return jax.vmap(put)(buffer, update, start)


def decoding_layer_params(layer_params: dict) -> dict:
  """A trained `TransformerXLBlock`'s params -> `CachedTransformerXLBlock`'s: the same
  arrays, with the per-token dense kernels out-first (`layers.matmul_out_first`)."""
  out = dict(layer_params, attention=decoding_kernels(layer_params["attention"]))
  out["ffn"] = {name: dict(p, kernel=layers.kernel_out_first(p["kernel"], 1))
                for name, p in layer_params["ffn"].items()}
  return out


class CachedTransformerXLBlock(nn.Module):
  """Incremental twin of `TransformerXLBlock` for decoding (same parameter names;
  `decoding_layer_params` lays a trained block's kernels out for it).

  The open segment's keys, values and remembered states (the block output for
  same-layer memory, its input for previous-layer memory) live in a cache, so
  new tokens attend to [memory ; open segment] without re-running earlier ones.
  Deterministic: decoding never drops out.
  """

  stack: StackConfig
  config: Ernie3Config

  def setup(self):
    cfg, st = self.config, self.stack
    dtype, pdtype = cfg.compute_dtype, cfg.weights_dtype
    norm = lambda: layers.LayerNorm(st.embed_axis, cfg.layer_norm_epsilon, dtype, pdtype)
    self.attention = CachedRelativeAttention(st.num_heads, st.head_dim, st.d_model,
                                             st.embed_axis, dtype, pdtype)
    self.attention_norm = norm()
    self.ffn_norm = norm()
    self.ffn = layers.FeedForward(st.d_ff, st.embed_axis, 0.0, dtype, pdtype, out_first=True)

  def project_positions(self, encoding: Array) -> Array:
    """Sinusoidal encodings [P, D] -> this layer's projected [P, H, Dh]."""
    return self.attention.project_positions(encoding)

  def memory_keys_values(self, memory: Array) -> tuple[Array, Array]:
    """Keys and values [B, M, H, Dh] of this layer's memory [B, M, D]."""
    cfg = self.config
    context = self.attention_norm(memory) if cfg.pre_layer_norm else memory.astype(
        cfg.compute_dtype)
    return self.attention.keys_values(context)

  def __call__(self, x: Array, start: Array, keys: Array, values: Array, seg_states: Array,
               r: Array, mask: Array, distance_index: Array):
    """Runs x [B, Q, D] (open-segment positions start .. start + Q - 1 of each row).

    `keys` [B, H, Dh, M + S] and `values` [B, H, M + S, Dh] hold [memory ; open
    segment] in the layouts the attention matmuls read. The new keys, values and
    remembered states (seg_states [B, S, D]) are written into the segment's slots
    before attending, so each query sees itself. Returns (output, keys, values,
    seg_states).
    """
    cfg = self.config
    memory_len = keys.shape[-1] - seg_states.shape[1]
    block_input = x
    h = self.attention_norm(x) if cfg.pre_layer_norm else x
    k, v = self.attention.keys_values(h)
    at = memory_len + start
    if x.shape[1] == 1:
      # A decoding step attends to the cache as it was plus its own key and value, then
      # writes them (`CachedRelativeAttention.attend_one`).
      a = self.attention.attend_one(h, keys, values, k, v, at, r, mask, distance_index)
      # Make the writes depend on the attention output (zero times one of its elements;
      # XLA keeps x * 0 for floats), so they run after attention has read the old
      # cache and XLA:CPU can update it in place instead of copying it first.
      after = (a[:, :, :1] * 0).astype(k.dtype)[..., None]
      k, v = k + after, v + after
    keys = write_rows(keys, cached_key_layout(k), at, axis=CACHED_KEY_AXIS)
    values = write_rows(values, cached_value_layout(v), at, axis=CACHED_VALUE_AXIS)
    if x.shape[1] != 1:
      a = self.attention(h, keys, values, r, mask, distance_index)
    if cfg.pre_layer_norm:
      x = x + a
      x = x + self.ffn(self.ffn_norm(x), True, 1.0)
    else:
      x = self.attention_norm(x + a)
      x = self.ffn_norm(x + self.ffn(x, True, 1.0))
    remembered = x if cfg.memory_mode == "same_layer" else block_input
    return x, keys, values, write_rows(seg_states, remembered, start)
