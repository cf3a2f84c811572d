"""Transformer-XL relative multi-head attention with recurrence memory.

score(i, j) = (q_i + u) . k_j + (q_i + v) . W_R R_{i-j}        (Dai et al. 2019, §3.3)

The memory (hidden states of the previous segment) is prepended to the keys and
values by the caller; it carries no gradient. The same code serves the causal NLG
mask and the bidirectional NLU mask because distances are encoded over the full
XLNet range (see `relative_position`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ernie3_jax.model import layers
from ernie3_jax.model.relative_position import position_scores, query_block_size

Array = jax.Array
# Finite, so a fully masked row (a padding query) gives a uniform softmax, not NaN.
_MASK_VALUE = -1e9


def attention_mask(query_valid: Array, key_valid: Array, causal: bool) -> Array:
  """[B, Q] and [B, K] validity -> [B, 1, Q, K] boolean mask.

  Keys are [memory ; segment], so with mlen = K - Q query i may see key j causally
  iff j <= i + mlen. Bidirectional attention sees every valid key.
  """
  # Padding queries are not masked: their outputs are ignored by the losses.
  q, k = query_valid.shape[1], key_valid.shape[1]
  mask = key_valid[:, None, None, :]
  if causal:
    mlen = k - q
    i = jnp.arange(q)[:, None]
    j = jnp.arange(k)[None, :]
    mask = jnp.logical_and(mask, (j <= i + mlen)[None, None])
  return mask


class RelativeMultiHeadAttention(nn.Module):
  """Multi-head attention scored by content and relative position.

  Attributes:
    num_heads, head_dim: head layout; output width is the input width.
    embed_axis: logical name of the model width ("embed" or "task_embed").
  """

  num_heads: int
  head_dim: int
  embed_axis: str
  attention_dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  init_std: float = 0.02
  dropout_rng: str = "hash"

  def _dense(self, name: str, in_names=None, out_names=("heads", "kv"), features=None,
             use_bias=True):
    return layers.DenseGeneral(
        features or (self.num_heads, self.head_dim), in_names or (self.embed_axis,),
        out_names, use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init_std=self.init_std, name=name)

  @nn.compact
  def __call__(self, x: Array, context: Array, position: Array, mask: Array,
               deterministic: bool = True, dropout_multiplier: Array | float = 1.0) -> Array:
    """Attends from `x` [B, Q, D] to `context` [B, K, D] (memory ; x).

    `position` is either the sinusoidal encoding [P, D] of the distances
    klen .. -Q + 1 (this layer projects it with its own W_R) or an already
    projected [P, H, Dh] (a stack sharing one W_R).
    """
    d_model = x.shape[-1]
    if position.shape[0] != context.shape[1] + x.shape[1]:
      raise ValueError(f"position encodes {position.shape[0]} distances; keys + queries = "
                       f"{context.shape[1]} + {x.shape[1]}")
    q = self._dense("query")(x)
    k = self._dense("key")(context)
    v = self._dense("value")(context)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    k = nn.with_logical_constraint(k, ("batch", "kv_length", "heads", "kv"))
    v = nn.with_logical_constraint(v, ("batch", "kv_length", "heads", "kv"))
    if position.ndim == 2:
      r = self._dense("position", use_bias=False)(position)
    else:
      r = position.astype(self.dtype)
    bias_init = nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv"))
    u = self.param("content_bias", bias_init, (self.num_heads, self.head_dim),
                   self.param_dtype)
    vb = self.param("position_bias", bias_init, (self.num_heads, self.head_dim),
                    self.param_dtype)
    scale = self.head_dim ** -0.5
    # Scores, probabilities and their gradients (the layer's largest tensors) are
    # laid out heads first, [H, B, Q, K], the order the batched matmuls produce and
    # read; only the small per-token tensors are transposed into it and out of it.
    heads_first = lambda t: jnp.transpose(t, (2, 0, 1, 3))
    q = heads_first(q * jnp.asarray(scale, self.dtype))
    bias = lambda b: (b * scale).astype(self.dtype)[:, None, None, :]
    content = jnp.einsum("hbqd,hbkd->hbqk", q + bias(u), heads_first(k),
                         preferred_element_type=jnp.float32)
    logits = content + position_scores(q + bias(vb), jnp.swapaxes(r, 0, 1),
                                       query_block_size(x.shape[1]))
    logits = jnp.where(jnp.swapaxes(mask, 0, 1), logits, _MASK_VALUE)
    logits = nn.with_logical_constraint(logits, ("heads", "batch", "length", "kv_length"))
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    probs = layers.Dropout(self.attention_dropout_rate, self.dropout_rng,
                           name="attention_dropout")(
        probs, deterministic, dropout_multiplier)
    out = jnp.einsum("hbqk,hbkd->hbqd", probs, heads_first(v))
    out = nn.with_logical_constraint(jnp.transpose(out, (1, 2, 0, 3)),
                                     ("batch", "length", "heads", "kv"))
    return layers.DenseGeneral((d_model,), ("heads", "kv"), (self.embed_axis,),
                               dtype=self.dtype, param_dtype=self.param_dtype,
                               kernel_init_std=self.init_std, name="out")(out)


# Layouts of the decoding cache, as CachedRelativeAttention's two matmuls read them:
# keys [B, H, Dh, K] and values [B, H, K, Dh], with K (key positions) on these axes.
CACHED_KEY_AXIS = 3
CACHED_VALUE_AXIS = 2


def cached_key_layout(keys: Array) -> Array:
  """Projected keys [B, K, H, Dh] -> [B, H, Dh, K]."""
  return jnp.transpose(keys, (0, 2, 3, 1))


def cached_value_layout(values: Array) -> Array:
  """Projected values [B, K, H, Dh] -> [B, H, K, Dh]."""
  return jnp.transpose(values, (0, 2, 1, 3))


# Input dims of the projections `CachedRelativeAttention` reads with out-first kernels.
_DECODING_KERNEL_INPUTS = {"query": 1, "key": 1, "value": 1, "out": 2}


def decoding_kernels(attention_params: dict) -> dict:
  """A trained attention's params -> `CachedRelativeAttention`'s (out-first kernels)."""
  out = dict(attention_params)
  for name, num_in in _DECODING_KERNEL_INPUTS.items():
    out[name] = dict(out[name], kernel=layers.kernel_out_first(out[name]["kernel"], num_in))
  return out


class CachedRelativeAttention(nn.Module):
  """Incremental twin of `RelativeMultiHeadAttention` for decoding (same parameters).

  Parameter names match the training module; the per-token projections' kernels
  are out-first (`decoding_kernels` converts a trained attention's). The caller
  keeps projected keys/values ([memory ; open segment]) in a cache and passes,
  for every (query, key) pair, the index of its relative distance into `r` (the
  projected encodings of distances 0 .. P - 1);
  a new token then costs one query against the cached keys instead of a re-run.
  """

  num_heads: int
  head_dim: int
  d_model: int
  embed_axis: str
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    def dense(features, in_names, out_names, use_bias=True, out_first=True):
      return layers.DenseGeneral(features, in_names, out_names, use_bias=use_bias,
                                 dtype=self.dtype, param_dtype=self.param_dtype,
                                 out_first=out_first)
    heads = (self.num_heads, self.head_dim)
    # The per-token projections read out-first kernels (see `decoding_kernels`);
    # W_R runs once per generation, in the training layout.
    self.query = dense(heads, (self.embed_axis,), ("heads", "kv"))
    self.key = dense(heads, (self.embed_axis,), ("heads", "kv"))
    self.value = dense(heads, (self.embed_axis,), ("heads", "kv"))
    self.position = dense(heads, (self.embed_axis,), ("heads", "kv"), use_bias=False,
                          out_first=False)
    self.out = dense((self.d_model,), ("heads", "kv"), (self.embed_axis,))
    shape = (self.num_heads, self.head_dim)
    self.content_bias = self.param("content_bias", nn.initializers.zeros, shape,
                                   self.param_dtype)
    self.position_bias = self.param("position_bias", nn.initializers.zeros, shape,
                                    self.param_dtype)

  def keys_values(self, context: Array) -> tuple[Array, Array]:
    """[B, K, D] -> projected keys and values [B, K, H, Dh]."""
    return self.key(context), self.value(context)

  def project_positions(self, encoding: Array) -> Array:
    """This layer's W_R applied to sinusoidal encodings [P, D] -> [H, P, Dh] (heads
    first, the layout the per-token position matmul reads: laid out [P, H, Dh],
    XLA:CPU transposed the layer's whole table inside every decoding step)."""
    return jnp.transpose(self.position(encoding), (1, 0, 2))

  def __call__(self, x: Array, keys: Array, values: Array, r: Array, mask: Array,
               distance_index: Array) -> Array:
    """Attends from `x` [B, Q, D] to cached `keys` [B, H, Dh, K] and `values`
    [B, H, K, Dh] (the layouts of the two matmuls; see `decode_cache`).

    `r` [H, P, Dh] holds projected encodings of distances 0 .. P - 1
    (`project_positions`);
    `distance_index` [B, Q, K] picks each pair's distance (masked pairs may hold
    any index); `mask` is [B, 1, Q, K] as from `attention_mask`.
    """
    q, u, vb = self._query(x)
    content = jnp.einsum("bqhd,bhdk->bhqk", q + u, keys, preferred_element_type=jnp.float32)
    logits = content + self._position_term(q + vb, r, distance_index)
    logits = jnp.where(mask, logits, _MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    return self.out(jnp.einsum("bhqk,bhkd->bqhd", probs, values))

  def attend_one(self, x: Array, keys: Array, values: Array, new_key: Array,
                 new_value: Array, new_at: Array, r: Array, mask: Array,
                 distance_index: Array) -> Array:
    """`__call__` for one query per row whose own key and value are not yet in the cache.

    x [B, 1, D]; `keys` / `values` are the cache before this token (slot `new_at` [B]
    holds stale data); `new_key` / `new_value` [B, 1, H, Dh] are the token's own. The
    slot's score and value come from them instead, so the caller writes the cache after
    attending: XLA:CPU then updates it in place, where reading the just-written cache
    made it copy every layer's key and value buffers at batch 1 (each write fused into
    two consumers, one of which drops the unit batch axis).
    """
    q, u, vb = self._query(x)
    content = jnp.einsum("bqhd,bhdk->bhqk", q + u, keys, preferred_element_type=jnp.float32)
    own = jnp.einsum("bqhd,bqhd->bhq", q + u, new_key.astype(self.dtype),
                     preferred_element_type=jnp.float32)[..., None]
    is_new = (jnp.arange(keys.shape[-1])[None, :] == new_at[:, None])[:, None, None, :]
    logits = jnp.where(is_new, own, content) + self._position_term(q + vb, r, distance_index)
    logits = jnp.where(mask, logits, _MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    p_new = jnp.sum(jnp.where(is_new, probs, 0), axis=-1)  # [B, H, 1]
    mixed = jnp.einsum("bhqk,bhkd->bqhd", jnp.where(is_new, 0, probs), values)
    mixed = mixed + jnp.transpose(p_new, (0, 2, 1))[..., None] * new_value.astype(self.dtype)
    return self.out(mixed)

  def _query(self, x: Array) -> tuple[Array, Array, Array]:
    """The scaled query [B, Q, H, Dh] and the scaled content and position biases."""
    scale = self.head_dim ** -0.5
    q = self.query(x) * jnp.asarray(scale, self.dtype)
    return (q, (self.content_bias * scale).astype(self.dtype),
            (self.position_bias * scale).astype(self.dtype))

  def _position_term(self, q: Array, r: Array, distance_index: Array) -> Array:
    """Each (query, key) pair's relative-position score [B, H, Q, K] (float32)."""
    by_distance = jnp.einsum("bqhd,hpd->bhqp", q, r.astype(self.dtype),
                             preferred_element_type=jnp.float32)
    return jnp.take_along_axis(by_distance, distance_index[:, None], axis=-1)
