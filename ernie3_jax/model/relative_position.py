"""Relative positions for Transformer-XL attention.

Keys are laid out as [memory (mlen) ; current segment (qlen)], klen = mlen + qlen.
Query i sits at key index i + mlen, so its distance to key j is d = i + mlen - j.
Over all (i, j), d runs from klen - 1 (last query, first key) down to
-(qlen - 1) (first query, last key). We encode the XLNet range
klen, klen-1, ..., -qlen + 1 (klen + qlen values) so one layout serves both the
causal mask (d >= 0 only) and the bidirectional mask (every d).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def relative_distances(qlen: int, klen: int) -> jax.Array:
  """The distances encoded for a (qlen, klen) attention: klen down to -qlen + 1."""
  return jnp.arange(klen, -qlen, -1, dtype=jnp.float32)


def sinusoidal_encoding(distances: jax.Array, dim: int) -> jax.Array:
  """[P] distances -> [P, dim] sinusoids (sin half then cos half)."""
  inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  angles = distances[:, None] * inv_freq[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def rel_shift(scores: jax.Array, klen: int) -> jax.Array:
  """[..., Q, P] scores over encoded distances -> [..., Q, klen] scores over keys.

  Column p of `scores` holds distance klen - p; key j of query i needs distance
  i + klen - Q - j, i.e. column Q - i + j. Reshaping [Q, P] to [P, Q], dropping the
  first row and reshaping back moves row i left by Q - i, which lines that column
  up with j without a gather.
  """
  *lead, q, p = scores.shape
  if p != klen + q:
    raise ValueError(f"rel_shift expects P = klen + Q = {klen + q}, got {p}")
  x = scores.reshape(*lead, p, q)
  x = x[..., 1:, :]
  x = x.reshape(*lead, q, p - 1)
  return x[..., :klen]


def rel_unshift(shifted: jax.Array, width: int) -> jax.Array:
  """The adjoint of `rel_shift`: [..., Q, klen] -> [..., Q, width], zeros elsewhere.

  Puts key j of query i back at column Q - i + j (width = klen + Q). Padding each
  row to `width` and then reading the flat rows with stride width + 1, after Q
  leading zeros, moves row i right by Q - i. Index arithmetic then divides only by
  `width` (a power of two at the usual lengths); undoing `rel_shift`'s reshapes one
  by one divides by width - 1, which on XLA:CPU ran about twice as slowly at length
  128 (and 7% slower at 512).
  """
  *lead, q, klen = shifted.shape
  if width != klen + q:
    raise ValueError(f"rel_unshift expects width = klen + Q = {klen + q}, got {width}")
  no_pad = [(0, 0)] * len(lead)
  x = jnp.pad(shifted, no_pad + [(0, 0), (0, width - klen)]).reshape(*lead, q * width)
  x = jnp.pad(x, no_pad + [(q, 0)])
  return x.reshape(*lead, q, width + 1)[..., :width]


@jax.custom_vjp
def position_scores(query: jax.Array, position: jax.Array) -> jax.Array:
  """Relative-position scores, heads first: query [H, B, Q, Dh] . position [H, P, Dh]
  over the encoded distances (P = klen + Q), shifted onto keys -> [H, B, Q, klen] (f32).

  The backward pass is written out (below) so that both of its matmuls read the
  [H, B, Q, P] score gradient as it lies. Left to autodiff, XLA:CPU computed them
  in transposed forms and copied that gradient, the largest tensor of the layer,
  into a transposed layout first (about a fifth of a training step at length 512).
  """
  return _position_scores_fwd(query, position)[0]


def _position_scores_fwd(query, position):
  klen = position.shape[1] - query.shape[2]
  scores = jnp.einsum("hbqd,hpd->hbqp", query, position, preferred_element_type=jnp.float32)
  return rel_shift(scores, klen), (query, position)


def _position_scores_bwd(residuals, grad):
  query, position = residuals
  # In the compute dtype, as autodiff would: bf16 gradients stay bf16 (and
  # XLA:CPU has no bf16 x bf16 -> f32 kernel for these products).
  grad = rel_unshift(grad.astype(query.dtype), position.shape[1])  # cast first: less to move
  d_query = jnp.einsum("hbqp,hpd->hbqd", grad, position.astype(query.dtype))
  # Contract (b, q) with the small query as the left operand: [H, Dh, P], then
  # transpose that small result, rather than transposing the [H, B, Q, P] gradient.
  d_position = jnp.einsum("hbqd,hbqp->hdp", query, grad)
  return d_query, jnp.swapaxes(d_position, 1, 2).astype(position.dtype)


position_scores.defvjp(_position_scores_fwd, _position_scores_bwd)
