"""Relative attention against a naive reference that scores every (i, j) pair."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ernie3_jax.model.relative_attention import RelativeMultiHeadAttention, attention_mask
from ernie3_jax.model.relative_position import (position_scores, query_block_size,
                                                relative_distances, rel_shift, rel_unshift,
                                                sinusoidal_encoding)

H, DH, D = 3, 4, 10


def naive_attention(p, x, context, mlen, causal, key_valid):
  """Scores q_i.k_j + u.k_j + q_i.W_R R_{d} + v.W_R R_{d} with d = i + mlen - j."""
  x, context = np.asarray(x, np.float64), np.asarray(context, np.float64)
  b, qlen, _ = x.shape
  klen = context.shape[1]
  lin = lambda a, name: np.einsum("bld,dhk->blhk", a, p[name]["kernel"]) + p[name]["bias"]
  q, k, v = lin(x, "query"), lin(context, "key"), lin(context, "value")
  u, vb = p["content_bias"], p["position_bias"]
  wr = p["position"]["kernel"]
  out = np.zeros((b, qlen, H, DH))
  # Encodings of every distance d = i + mlen - j, in float64.
  distances = np.arange(-(qlen - 1), klen)
  table = np.asarray(sinusoidal_encoding(jnp.asarray(distances, jnp.float32), D), np.float64)
  for bi in range(b):
    for h in range(H):
      for i in range(qlen):
        scores = np.full(klen, -np.inf)
        for j in range(klen):
          if not key_valid[bi, j] or (causal and j > i + mlen):
            continue
          rk = table[i + mlen - j + qlen - 1] @ wr[:, h, :]
          scores[j] = ((q[bi, i, h] + u[h]) @ k[bi, j, h] + (q[bi, i, h] + vb[h]) @ rk) / np.sqrt(DH)
        w = np.exp(scores - scores.max())
        w /= w.sum()
        out[bi, i, h] = w @ v[bi, :, h]
  return np.einsum("blhk,hkd->bld", out, p["out"]["kernel"]) + p["out"]["bias"]


def test_sinusoidal_encoding_follows_the_formula():
  """Row d, column k < D/2: sin(d / 10000**(2k/D)); column D/2 + k: the cos of the same."""
  dim = 16
  distances = [-5, -1, 0, 1, 2, 7, 31, 300]
  got = np.asarray(sinusoidal_encoding(jnp.asarray(distances, jnp.float32), dim))
  assert got.shape == (len(distances), dim)
  for row, d in enumerate(distances):
    for k in range(dim // 2):
      angle = d / 10000.0 ** (2 * k / dim)
      assert got[row, k] == pytest.approx(np.sin(angle), abs=1e-4), (d, k)
      assert got[row, dim // 2 + k] == pytest.approx(np.cos(angle), abs=1e-4), (d, k)
  assert relative_distances(3, 5).tolist() == [5, 4, 3, 2, 1, 0, -1, -2]


def _formula(distances, dim):
  angles = np.asarray(distances, np.float64)[:, None] / 10000.0 ** (
      np.arange(0, dim, 2) / dim)[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)


def test_the_model_attends_with_the_formulas_encodings():
  """The encodings the NLG path's attention layers receive (universal and NLG stacks, with
  memory) are the formula's, for klen down to -qlen + 1."""
  from ernie3_jax.model import Ernie3, init_memory
  from tests import model_testing as mt
  cfg = mt.config(num_layers=1, nlg_layers=1)
  variables = mt.init_params(cfg)
  tokens, segs, tasks = mt.random_batch(cfg, 2, 6)
  seen = []

  def spy(next_fun, args, kwargs, context):
    if isinstance(context.module, RelativeMultiHeadAttention) and context.method_name == "__call__":
      seen.append(np.asarray(args[2], np.float64))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(spy):
    Ernie3(cfg).apply(variables, tokens, segs, tasks, init_memory(cfg, 2),
                      method=Ernie3.nlg_decode)
  qlen, klen = 6, 6 + cfg.memory_len
  assert [p.shape for p in seen] == [(klen + qlen, cfg.d_model), (klen + qlen, cfg.task_d_model)]
  for p in seen:
    np.testing.assert_allclose(p, _formula(range(klen, -qlen, -1), p.shape[1]), atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("mlen", [0, 3])
@pytest.mark.parametrize("qlen", [5, 64])  # 64: position scores in 4 query blocks
def test_matches_naive_reference(causal, mlen, qlen):
  rng = np.random.RandomState(0)
  b = 2
  x = jnp.asarray(rng.randn(b, qlen, D), jnp.float32)
  memory = jnp.asarray(rng.randn(b, mlen, D), jnp.float32)
  context = jnp.concatenate([memory, x], axis=1)
  klen = qlen + mlen
  key_valid = np.ones((b, klen), bool)
  # An invalid key: a reset memory slot, or (without memory) a padded position.
  key_valid[1, 0 if mlen else klen - 1] = False
  mask = attention_mask(jnp.ones((b, qlen), bool), jnp.asarray(key_valid), causal)
  position = sinusoidal_encoding(relative_distances(qlen, klen), D)
  module = RelativeMultiHeadAttention(H, DH, "embed", init_std=0.5)
  params = module.init(jax.random.PRNGKey(1), x, context, position, mask)["params"]
  params = nn.unbox(params)
  # Non-zero u and v, so the bias terms are exercised.
  params = dict(params, content_bias=jnp.asarray(rng.randn(H, DH), jnp.float32),
                position_bias=jnp.asarray(rng.randn(H, DH), jnp.float32))
  got = module.apply({"params": params}, x, context, position, mask)
  np_params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  want = naive_attention(np_params, x, context, mlen, causal, key_valid)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-4)


def test_rel_shift_places_each_distance():
  qlen, klen = 4, 7
  dists = relative_distances(qlen, klen)
  scores = jnp.broadcast_to(dists, (qlen, dists.shape[0]))
  shifted = np.asarray(rel_shift(scores, klen))
  mlen = klen - qlen
  want = np.arange(qlen)[:, None] + mlen - np.arange(klen)[None, :]
  np.testing.assert_array_equal(shifted, want)


def test_rel_shift_rejects_wrong_width():
  with pytest.raises(ValueError, match="klen"):
    rel_shift(jnp.zeros((3, 5)), 4)


@pytest.mark.parametrize("qlen,klen", [(4, 4), (4, 7), (1, 5)])
def test_rel_unshift_is_the_adjoint_of_rel_shift(qlen, klen):
  rng = np.random.RandomState(0)
  scores = jnp.asarray(rng.randn(2, 3, qlen, klen + qlen), jnp.float32)
  grad = jnp.asarray(rng.randn(2, 3, qlen, klen), jnp.float32)
  _, vjp = jax.vjp(lambda s: rel_shift(s, klen), scores)
  np.testing.assert_array_equal(np.asarray(rel_unshift(grad, klen + qlen)),
                                np.asarray(vjp(grad)[0]))
  with pytest.raises(ValueError, match="width"):
    rel_unshift(grad, klen + qlen + 1)


@pytest.mark.parametrize("mlen", [0, 3])
@pytest.mark.parametrize("block", [1, 2, 3, 6])
def test_position_scores_match_autodiff_of_the_shifted_product(mlen, block):
  """Every query blocking gives the plain shifted product and, through the
  hand-written backward pass, autodiff's gradients."""
  rng = np.random.RandomState(1)
  h, b, q, dh = 3, 2, 6, 4
  klen = mlen + q
  query = jnp.asarray(rng.randn(h, b, q, dh), jnp.float32)
  position = jnp.asarray(rng.randn(h, klen + q, dh), jnp.float32)
  grad = jnp.asarray(rng.randn(h, b, q, klen), jnp.float32)
  reference = lambda a, r: rel_shift(jnp.einsum("hbqd,hpd->hbqp", a, r), klen)
  want, want_vjp = jax.vjp(reference, query, position)
  got, got_vjp = jax.vjp(lambda a, r: position_scores(a, r, block), query, position)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  for g, w in zip(got_vjp(grad), want_vjp(grad)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


def test_position_scores_rejects_a_block_that_does_not_divide_the_queries():
  query, position = jnp.zeros((1, 1, 6, 2)), jnp.zeros((1, 12, 2))
  with pytest.raises(ValueError, match="block=4 must divide the 6 queries"):
    position_scores(query, position, 4)


def test_query_block_size_divides_long_segments_into_quarters():
  assert query_block_size(512) == 128
  assert query_block_size(64) == 16
  assert query_block_size(6) == 6  # short: one block
  assert query_block_size(66) == 66  # not divisible by 4: one block


def test_attention_rejects_position_encoding_of_the_wrong_length():
  x = jnp.zeros((1, 4, D))
  mask = attention_mask(jnp.ones((1, 4), bool), jnp.ones((1, 4), bool), causal=False)
  position = sinusoidal_encoding(relative_distances(4, 5), D)  # for 5 keys, not 4
  with pytest.raises(ValueError, match="9 distances"):
    RelativeMultiHeadAttention(H, DH, "embed").init(jax.random.PRNGKey(0), x, x, position, mask)


def test_position_scores_backward_runs_in_bfloat16():
  """bf16 gradients stay bf16 and track the f32 ones."""
  rng = np.random.RandomState(2)
  query = jnp.asarray(rng.randn(2, 2, 6, 8), jnp.float32)
  position = jnp.asarray(rng.randn(2, 12, 8), jnp.float32)
  loss = lambda a, r: jnp.sum(position_scores(a, r, 3) ** 2)
  want = jax.jit(jax.grad(loss, (0, 1)))(query, position)
  got = jax.jit(jax.grad(loss, (0, 1)))(query.astype(jnp.bfloat16),
                                        position.astype(jnp.bfloat16))
  for g, w in zip(got, want):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w), rtol=0.05,
                               atol=0.05 * float(np.abs(w).max()))
