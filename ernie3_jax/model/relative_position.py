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
