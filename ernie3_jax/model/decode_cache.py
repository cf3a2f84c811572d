"""Incremental (key/value-cached) decoding through the NLG path.

Generation follows the training layout: text is cut into segments of
`segment_length` S counted from the start of each row's text; finished segments
live in the recurrence memory (M slots per layer) and the current, open segment
grows one token at a time. For every layer of the universal and NLG stacks the
cache holds

* one key and one value buffer over [memory ; open segment] (M + S slots): the
  memory's projected keys/values (recomputed only when a segment is committed)
  followed by those of the open segment's tokens, so attention reads them in
  place, with no concatenation per token (in the layouts the attention matmuls
  read: keys [B, H, Dh, M + S], values [B, H, M + S, Dh]), and
* the memory and the states it will remember of the open segment (the layer
  output under same-layer memory, its input under previous-layer memory).

Each layer's arrays are separate buffers (tuples over layers, not stacked
arrays): a token writes its own slots of each layer in place, where an update of
one layer's slice of a stacked array made XLA:CPU copy the whole stack.

A new token therefore costs one query per layer against M + S cached keys. When
the open segment holds S tokens it is committed: its remembered states are
appended to the memory exactly as `Ernie3.nlg_decode` appends a training
segment's, and the next token starts a new segment.

Rows keep their own positions: each row's open-segment length is `length[b]`,
so prompts of different lengths need no padding on the left and rows commit at
different steps. Every array keeps a fixed shape and its batch axis first, so
one compiled step serves the whole generation.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from ernie3_jax.model import layers, recurrence_memory
from ernie3_jax.model.config import Ernie3Config
from ernie3_jax.model.ernie3 import PAD_ID, Ernie3
from ernie3_jax.model.relative_attention import (CACHED_KEY_AXIS, CACHED_VALUE_AXIS,
                                                 cached_key_layout, cached_value_layout)
from ernie3_jax.model.relative_position import sinusoidal_encoding
from ernie3_jax.model.transformer_xl import (CachedTransformerXLBlock, decoding_layer_params,
                                             write_rows)

Array = jax.Array
DecodeParams = dict[str, Any]


@flax.struct.dataclass
class StackCache:
  """One stack's cache: per layer (tuples over layers), batch first."""

  memory: tuple[Array, ...]      # [B, M, D]  remembered states of committed segments
  keys: tuple[Array, ...]        # [B, H, Dh, M + S]  [memory ; open segment]
  values: tuple[Array, ...]      # [B, H, M + S, Dh]
  seg_states: tuple[Array, ...]  # [B, S, D]  what the memory will remember of the open segment


@flax.struct.dataclass
class DecodeCache:
  """The universal and NLG stack caches plus per-row positions and validity."""

  universal: StackCache
  nlg: StackCache
  mem_valid: Array  # [B, M]  memory slots holding real tokens
  seg_valid: Array  # [B, S]  open-segment slots holding real (non-pad) tokens
  length: Array     # [B]     tokens in each row's open segment (0 .. S)


def select_rows(rows: Array, new: DecodeCache, old: DecodeCache) -> DecodeCache:
  """Row b of the result is row b of `new` where rows[b], else of `old`."""
  def pick(a, b):
    return jnp.where(rows.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
  return jax.tree_util.tree_map(pick, new, old)


def reorder_rows(cache: DecodeCache, index: Array) -> DecodeCache:
  """Row b of the result is row index[b] of `cache` (beam reordering, replication)."""
  return jax.tree_util.tree_map(lambda a: jnp.take(a, index, axis=0), cache)


def prefill_width(longest_prompt: int, segment_length: int) -> int:
  """Columns a prefill runs at once: the smallest divisor of the segment length that
  holds the longest prompt, or a whole segment.

  A prompt shorter than a segment then runs without padding it to the segment (a
  64-token prompt under 128-token segments ran 128 columns, half of them padding).
  Each width is its own compiled shape: at most one per divisor of the segment length.
  """
  if longest_prompt >= segment_length:
    return segment_length
  return min(w for w in range(max(longest_prompt, 1), segment_length + 1)
             if segment_length % w == 0)


def _layer_list(stack_params: dict, num_layers: int) -> list[dict]:
  """Each layer's params, from scanned (stacked) or unrolled params."""
  if "layers" in stack_params:
    return [jax.tree_util.tree_map(lambda a, i=i: a[i], stack_params["layers"])
            for i in range(num_layers)]
  return [stack_params[f"layers_{i}"] for i in range(num_layers)]


class CachedNLGDecoder:
  """Prefill, one-token steps and segment commits for `Ernie3`'s NLG path.

  All methods are pure functions of (decode params, cache, tokens), meant to
  run under `jax.jit`; `prepare` turns the model's params into decode params.
  """

  def __init__(self, model: Ernie3, segment_length: int, task_id: int):
    if segment_length < 1:
      raise ValueError(f"segment_length must be >= 1, got {segment_length}")
    self.model = model
    self.config: Ernie3Config = model.config
    self.segment_length = segment_length
    self.task_id = task_id
    self.memory_len = self.config.memory_len
    # Distances a causal query can have to a key of [memory ; open segment].
    self.num_distances = self.memory_len + segment_length
    self.stacks = {"universal": self.config.universal_stack(), "nlg": self.config.nlg_stack()}
    self.blocks = {name: CachedTransformerXLBlock(st, self.config)
                   for name, st in self.stacks.items()}

  # -- parameters -------------------------------------------------------------

  def _stack_params(self, params: dict, name: str) -> dict:
    return params["universal"] if name == "universal" else params["nlg"]["stack"]

  def _positions(self, stack_params: dict, layer_params: list[dict], name: str) -> list[Array]:
    """Each layer's projected encodings [H, P, Dh] of distances 0 .. P - 1."""
    cfg, st = self.config, self.stacks[name]
    distances = jnp.arange(self.num_distances, dtype=jnp.float32)
    encoding = sinusoidal_encoding(distances, st.d_model).astype(cfg.compute_dtype)
    if st.share_position_projection:
      shared = layers.DenseGeneral((st.num_heads, st.head_dim), (st.embed_axis,),
                                   ("heads", "kv"), use_bias=False, dtype=cfg.compute_dtype,
                                   param_dtype=cfg.weights_dtype)
      projected = shared.apply({"params": stack_params["shared_position"]}, encoding)
      return [jnp.transpose(projected, (1, 0, 2))] * st.num_layers
    block = self.blocks[name]
    return [block.apply({"params": p}, encoding, method=CachedTransformerXLBlock.project_positions)
            for p in layer_params]

  def prepare(self, params: dict) -> DecodeParams:
    """Model params -> decode params: each layer's params (kernels out-first) and
    position projections, and the output projection as a [V, D] table.

    Layers are separate arrays (not one stacked array sliced per layer) and the layer
    loop is unrolled: inside the token loop, XLA:CPU copied each slice of stacked
    weights before using it. Out-first kernels (`layers.matmul_out_first`) are read
    faster by the few-row matmuls of a decoding step.
    """
    params = nn.unbox(params)
    out: DecodeParams = {"model": params}
    if self.config.tie_embeddings:
      out["lm_output"] = params["embedder"]["token"]["embedding"]
    else:
      out["lm_output"] = layers.kernel_out_first(params["lm_head"]["output"]["kernel"], 1)
    for name, st in self.stacks.items():
      stack_params = self._stack_params(params, name)
      layer_params = [decoding_layer_params(p)
                      for p in _layer_list(stack_params, st.num_layers)]
      out[name] = {"layers": layer_params,
                   "positions": self._positions(stack_params, layer_params, name)}
    return out

  # -- cache --------------------------------------------------------------------

  def _memory_keys_values(self, dp: DecodeParams, name: str, memory: tuple[Array, ...]):
    """Each layer's memory keys and values [B, M, H, Dh]."""
    block = self.blocks[name]
    return [block.apply({"params": p}, m, method=CachedTransformerXLBlock.memory_keys_values)
            for p, m in zip(dp[name]["layers"], memory)]

  def init_cache(self, dp: DecodeParams, batch_size: int) -> DecodeCache:
    """An empty cache: all-invalid memory (as `init_memory`) and empty open segments.

    Its keys and values are zeros: every slot is invalid, so attention masks them all
    until a commit computes the memory's (projecting the empty memory cost 24 matmuls
    of [B x M, D] per generation: a quarter of a 64-token prefill at batch 8).
    """
    del dp  # the layout of the buffers does not depend on the parameters
    cfg, s, m = self.config, self.segment_length, self.memory_len
    memory = recurrence_memory.init_memory(cfg, batch_size)
    stacks = {}
    for name, st in self.stacks.items():
      layer_memory = tuple(memory[name])
      empty = jnp.zeros((batch_size, m + s, st.num_heads, st.head_dim), cfg.compute_dtype)
      stacks[name] = StackCache(
          memory=layer_memory,
          keys=tuple(cached_key_layout(empty) for _ in range(st.num_layers)),
          values=tuple(cached_value_layout(empty) for _ in range(st.num_layers)),
          seg_states=tuple(jnp.zeros((batch_size, s, st.d_model), cfg.compute_dtype)
                           for _ in range(st.num_layers)))
    return DecodeCache(stacks["universal"], stacks["nlg"], memory["valid"],
                       jnp.zeros((batch_size, s), jnp.bool_),
                       jnp.zeros((batch_size,), jnp.int32))

  # -- running tokens -----------------------------------------------------------

  def _run_stack(self, dp: DecodeParams, name: str, cache: StackCache, x: Array,
                 start: Array, mask: Array, distance_index: Array):
    cfg, block = self.config, self.blocks[name]

    keys, values, seg_states = [], [], []
    for i, (p, r) in enumerate(zip(dp[name]["layers"], dp[name]["positions"])):
      x, k, v, remembered = block.apply(
          {"params": p}, x, start, cache.keys[i], cache.values[i], cache.seg_states[i], r,
          mask, distance_index)
      keys.append(k)
      values.append(v)
      seg_states.append(remembered)
    if cfg.pre_layer_norm:
      st = self.stacks[name]
      final_norm = layers.LayerNorm(st.embed_axis, cfg.layer_norm_epsilon, cfg.compute_dtype,
                                    cfg.weights_dtype)
      x = final_norm.apply({"params": self._stack_params(dp["model"], name)["final_norm"]}, x)
    return x, cache.replace(keys=tuple(keys), values=tuple(values),
                            seg_states=tuple(seg_states))

  def extend(self, dp: DecodeParams, cache: DecodeCache, tokens: Array):
    """Appends tokens [B, Q] to each row's open segment (needs length + Q <= S).

    Returns (NLG hidden states [B, Q, task_d_model], updated cache).
    """
    cfg, m = self.config, self.memory_len
    b, q = tokens.shape
    start = cache.length
    seg_valid = write_rows(cache.seg_valid, tokens != PAD_ID, start)
    key_valid = jnp.concatenate([cache.mem_valid, seg_valid], axis=1)
    # Query i of row b sits at key index m + start[b] + i of [memory ; open segment].
    query_at = (m + start[:, None] + jnp.arange(q)[None, :])[:, :, None]
    key_at = jnp.arange(m + self.segment_length)[None, None, :]
    mask = jnp.logical_and(key_valid[:, None, :], key_at <= query_at)[:, None]
    distance_index = jnp.clip(query_at - key_at, 0, self.num_distances - 1)
    params = dp["model"]
    x = self.model.apply({"params": params}, tokens, jnp.zeros_like(tokens),
                         jnp.full((b,), self.task_id, jnp.int32), method=Ernie3.embed)
    x, universal = self._run_stack(dp, "universal", cache.universal, x, start, mask,
                                   distance_index)
    st = self.stacks["nlg"]
    projection = layers.DenseGeneral((st.d_model,), ("embed",), (st.embed_axis,),
                                     dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype)
    projection_norm = layers.LayerNorm(st.embed_axis, cfg.layer_norm_epsilon,
                                       cfg.compute_dtype, cfg.weights_dtype)
    h = projection.apply({"params": params["nlg"]["projection"]}, x)
    h = projection_norm.apply({"params": params["nlg"]["projection_norm"]}, h)
    h, nlg = self._run_stack(dp, "nlg", cache.nlg, h, start, mask, distance_index)
    return h, cache.replace(universal=universal, nlg=nlg, seg_valid=seg_valid,
                            length=start + q)

  def logits(self, dp: DecodeParams, h: Array) -> Array:
    """NLG hidden states [B, Q, Dt] -> next-token logits [B, Q, V] (float32)."""
    return self.model.apply({"params": dp["model"]}, h, dp["lm_output"],
                            method=Ernie3.lm_logits)

  def commit(self, dp: DecodeParams, cache: DecodeCache, rows: Array) -> DecodeCache:
    """Moves the open segment of rows where `rows` [B] into memory, as training does."""
    m = self.memory_len

    def move(cache: DecodeCache) -> DecodeCache:
      stacks = {}
      for name in self.stacks:
        c: StackCache = getattr(cache, name)
        memory = tuple(recurrence_memory.append(mem, states, m)
                       for mem, states in zip(c.memory, c.seg_states))
        kv = self._memory_keys_values(dp, name, memory)
        # The open-segment slots keep stale keys; seg_valid masks them until rewritten.
        put = lambda buf, new, axis: jax.lax.dynamic_update_slice_in_dim(
            buf, new.astype(buf.dtype), 0, axis=axis)
        stacks[name] = c.replace(
            memory=memory,
            keys=tuple(put(b, cached_key_layout(k), CACHED_KEY_AXIS)
                       for b, (k, _) in zip(c.keys, kv)),
            values=tuple(put(b, cached_value_layout(v), CACHED_VALUE_AXIS)
                         for b, (_, v) in zip(c.values, kv)))
      moved = cache.replace(
          universal=stacks["universal"], nlg=stacks["nlg"],
          mem_valid=recurrence_memory.append_valid(cache.mem_valid, cache.seg_valid),
          seg_valid=jnp.zeros_like(cache.seg_valid), length=jnp.zeros_like(cache.length))
      return select_rows(rows, moved, cache)

    return jax.lax.cond(jnp.any(rows), move, lambda c: c, cache)

  def full_rows(self, cache: DecodeCache) -> Array:
    """[B] rows whose open segment is full: they commit before their next token."""
    return cache.length >= self.segment_length

  def advance(self, dp: DecodeParams, cache: DecodeCache, token: Array):
    """Feeds one token [B] per row, none of whose open segments may be full (see
    `full_rows`); returns (next-token logits [B, V], cache)."""
    h, cache = self.extend(dp, cache, token[:, None])
    return self.logits(dp, h)[:, 0], cache

  def step(self, dp: DecodeParams, cache: DecodeCache, token: Array):
    """Feeds one token [B] per row; returns (next-token logits [B, V], cache).

    A row whose open segment is full commits it first, so the token starts a new
    segment (the same boundaries as training's segments). The commit sits under a
    `lax.cond` in every step; `generation._sample_loop` instead commits between runs of
    `advance`, outside its per-token body.
    """
    cache = self.commit(dp, cache, self.full_rows(cache))
    return self.advance(dp, cache, token)

  def prefill(self, dp: DecodeParams, cache: DecodeCache, prompts: Array,
              prompt_lengths: Array):
    """Runs prompts [B, C * S] (row b's tokens first, then padding) segment by segment,
    or [B, W] with W < S a divisor of S (`prefill_width`) as one part of a segment.

    Row b's segments are its tokens [kS, (k+1)S); every full segment before its
    last is committed, the last (1 .. S tokens) stays open. `cache` must be empty.
    Returns (logits [B, V] for the token after each prompt, cache).
    """
    b, total = prompts.shape
    s = self.segment_length
    width = prefill_width(total, s)
    if width != total and total % s:
      raise ValueError(f"prefill needs a multiple of segment_length={s} columns or a "
                       f"divisor of it, got {total}")
    chunks = prompts.reshape(b, total // width, width).transpose(1, 0, 2)
    open_chunk = (prompt_lengths - 1) // width
    open_length = prompt_lengths - open_chunk * width

    def chunk(carry, xs):
      cache, last = carry
      k, tokens = xs
      h, extended = self.extend(dp, cache, tokens)
      cache = select_rows(k <= open_chunk, extended, cache)
      cache = self.commit(dp, cache, k < open_chunk)
      h_last = jnp.take_along_axis(h, (open_length - 1)[:, None, None], axis=1)
      last = jnp.where((k == open_chunk)[:, None, None], h_last, last)
      return (cache, last), None

    last = jnp.zeros((b, 1, self.stacks["nlg"].d_model), self.config.compute_dtype)
    (cache, last), _ = jax.lax.scan(chunk, (cache, last),
                                    (jnp.arange(chunks.shape[0]), chunks))
    # The open chunk ran with its padding; only its prompt tokens count as written.
    return self.logits(dp, last)[:, 0], cache.replace(length=open_length.astype(jnp.int32))
