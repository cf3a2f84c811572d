"""Relative positions for Transformer-XL attention.

Keys are laid out as [memory (mlen) ; current segment (qlen)], klen = mlen + qlen.
Query i sits at key index i + mlen, so its distance to key j is d = i + mlen - j.
Over all (i, j), d runs from klen - 1 (last query, first key) down to
-(qlen - 1) (first query, last key). We encode the XLNet range
klen, klen-1, ..., -qlen + 1 (klen + qlen values) so one layout serves both the
causal mask (d >= 0 only) and the bidirectional mask (every d).
"""

from __future__ import annotations

import functools

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


def query_block_size(qlen: int) -> int:
  """Queries per block of `position_scores`: a quarter of the segment where it
  divides evenly and leaves blocks of 16 or more, else the whole segment."""
  return qlen // 4 if qlen % 4 == 0 and qlen >= 64 else qlen


def _windows(qlen: int, width: int, block: int) -> list[tuple[int, int, int]]:
  """(first query, first encoded distance, distances) of each query block.

  Block n's queries need columns Q - i + j for i in [nQb, (n+1)Qb), j < klen: the
  klen + Qb columns from Q - (n+1)Qb on. Inside that window the block's columns
  are Qb - i' + j, `rel_shift`'s own layout with Q = Qb.
  """
  klen = width - qlen
  return [(n * block, qlen - (n + 1) * block, klen + block) for n in range(qlen // block)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def position_scores(query: jax.Array, position: jax.Array, block: int) -> jax.Array:
  """Relative-position scores, heads first: query [H, B, Q, Dh] . position [H, P, Dh]
  over the encoded distances (P = klen + Q), shifted onto keys -> [H, B, Q, klen] (f32).

  Queries go in blocks of `block` (a divisor of Q; `query_block_size` picks one),
  each scored against only the klen + block distances its rows use: the shift
  trick computes klen + Q columns per query and keeps klen, and moving those
  scores and their gradients, not the matmuls, is what the term costs. Four
  blocks took the forward and backward pass from 226 to 97 ms at length 512 in
  isolation, but only about 3% off a training step at 512 or 128, where the
  shifts fuse into the softmax and its gradient.

  The backward pass is written out (below) so that both of its matmuls read the
  score gradient as it lies. Left to autodiff, XLA:CPU computed them in
  transposed forms and copied that gradient, the largest tensor of the layer,
  into a transposed layout first (about a fifth of a training step at length 512).
  """
  return _position_scores_fwd(query, position, block)[0]


def _check_block(qlen: int, block: int) -> None:
  if block < 1 or qlen % block:
    raise ValueError(f"position_scores: block={block} must divide the {qlen} queries")


def _position_scores_fwd(query, position, block):
  qlen, width = query.shape[2], position.shape[1]
  _check_block(qlen, block)
  klen = width - qlen
  scores = []
  for q0, p0, w in _windows(qlen, width, block):
    block_scores = jnp.einsum("hbqd,hpd->hbqp", query[:, :, q0:q0 + block],
                              position[:, p0:p0 + w], preferred_element_type=jnp.float32)
    scores.append(rel_shift(block_scores, klen))
  return jnp.concatenate(scores, axis=2), (query, position)


def _position_scores_bwd(block, residuals, grad):
  query, position = residuals
  qlen, width = query.shape[2], position.shape[1]
  # In the compute dtype, as autodiff would: bf16 gradients stay bf16 (and
  # XLA:CPU has no bf16 x bf16 -> f32 kernel for these products).
  grad = grad.astype(query.dtype)  # cast first: less to move
  d_query = []
  d_position = jnp.zeros((position.shape[0], position.shape[2], width), jnp.float32)
  for q0, p0, w in _windows(qlen, width, block):
    block_grad = rel_unshift(grad[:, :, q0:q0 + block], w)
    block_query = query[:, :, q0:q0 + block]
    d_query.append(jnp.einsum("hbqp,hpd->hbqd", block_grad,
                              position[:, p0:p0 + w].astype(query.dtype)))
    # Contract (b, q) with the small query as the left operand, [H, Dh, w], rather
    # than transposing the [H, B, Qb, w] gradient; the windows overlap, so add.
    d_window = jnp.einsum("hbqd,hbqp->hdp", block_query, block_grad)
    d_position += jnp.pad(d_window.astype(jnp.float32),
                          ((0, 0), (0, 0), (p0, width - p0 - w)))
  return (jnp.concatenate(d_query, axis=2),
          jnp.swapaxes(d_position, 1, 2).astype(position.dtype))


position_scores.defvjp(_position_scores_fwd, _position_scores_bwd)
