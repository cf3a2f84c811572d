"""Building blocks with their own numerics: hashed dropout masks, the bias-add gradient."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from ernie3_jax.model import layers


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.03])
def test_hashed_mask_keeps_at_the_rate_without_correlation(keep):
  mask = np.asarray(layers.hashed_keep_mask(jax.random.PRNGKey(3), jnp.float32(keep),
                                            (8, 12, 64, 96)))
  n = mask.size
  assert abs(mask.mean() - keep) < 5 * np.sqrt(keep * (1 - keep) / n)
  # Neighbours along every axis are independent (correlation ~ 0 within noise).
  for axis in range(mask.ndim):
    a = np.moveaxis(mask, axis, 0).astype(np.float64)
    corr = np.corrcoef(a[1:].ravel(), a[:-1].ravel())[0, 1]
    assert abs(corr) < 5 / np.sqrt(a[1:].size), (axis, corr)
  # Per-row keep rates spread like independent Bernoulli rows (no striping).
  rows = mask.reshape(-1, 96).mean(axis=1)
  assert rows.std() == pytest.approx(np.sqrt(keep * (1 - keep) / 96), rel=0.15)


def test_hashed_mask_depends_on_the_key_only():
  shape = (4, 6, 50)
  a = layers.hashed_keep_mask(jax.random.PRNGKey(0), jnp.float32(0.5), shape)
  b = layers.hashed_keep_mask(jax.random.PRNGKey(0), jnp.float32(0.5), shape)
  c = layers.hashed_keep_mask(jax.random.PRNGKey(1), jnp.float32(0.5), shape)
  np.testing.assert_array_equal(a, b)
  assert 0.4 < float(jnp.mean(a != c)) < 0.6
  assert bool(layers.hashed_keep_mask(jax.random.PRNGKey(0), jnp.float32(1.0), shape).all())
  assert not bool(layers.hashed_keep_mask(jax.random.PRNGKey(0), jnp.float32(0.0), shape).any())


def test_hashed_mask_is_the_same_under_any_sharding():
  shape = (8, 4, 32)
  key = jax.random.PRNGKey(5)
  single = np.asarray(layers.hashed_keep_mask(key, jnp.float32(0.7), shape))
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("data", "tensor"))
  out = NamedSharding(mesh, P("data", "tensor", None))
  sharded = jax.jit(lambda k: layers.hashed_keep_mask(k, jnp.float32(0.7), shape),
                    out_shardings=out)(key)
  assert sharded.sharding == out
  np.testing.assert_array_equal(np.asarray(sharded), single)


def test_dropout_rng_choices_scale_what_they_keep():
  x = jnp.ones((64, 256))
  for rng in ("hash", "threefry"):
    y = layers.Dropout(0.25, rng).apply({}, x, False, 1.0,
                                        rngs={"dropout": jax.random.PRNGKey(0)})
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.75, rtol=1e-6)
  with pytest.raises(ValueError, match="Dropout.rng='philox'"):
    layers.Dropout(0.25, "philox").apply({}, x, False, rngs={"dropout": jax.random.PRNGKey(0)})


def test_add_bias_gradient_equals_the_plain_sum():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 7))
  b = jax.random.normal(jax.random.PRNGKey(1), (7,))
  w = jax.random.normal(jax.random.PRNGKey(2), (3, 5, 7))
  ours = jax.grad(lambda x, b: jnp.sum(jnp.sin(layers.add_bias(x, b)) * w), (0, 1))(x, b)
  plain = jax.grad(lambda x, b: jnp.sum(jnp.sin(x + b) * w), (0, 1))(x, b)
  for a, e in zip(ours, plain):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("in_shape,out_features", [((12,), (5,)), ((3, 4), (6,)),
                                                   ((8,), (2, 3))])
def test_out_first_dense_equals_the_training_layout(in_shape, out_features):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7) + in_shape)
  in_names = tuple(f"in{i}" for i in range(len(in_shape)))
  out_names = tuple(f"out{i}" for i in range(len(out_features)))
  dense = layers.DenseGeneral(out_features, in_names, out_names)
  params = dense.init(jax.random.PRNGKey(1), x)["params"]
  params = jax.tree_util.tree_map(lambda a: a + 0.1, nn.unbox(params))  # non-zero bias
  flipped = dict(params, kernel=layers.kernel_out_first(params["kernel"], len(in_shape)))
  out_first = layers.DenseGeneral(out_features, in_names, out_names, out_first=True)
  assert nn.unbox(out_first.init(jax.random.PRNGKey(1), x)["params"])["kernel"].shape == \
      flipped["kernel"].shape
  np.testing.assert_allclose(out_first.apply({"params": flipped}, x),
                             dense.apply({"params": params}, x), rtol=1e-5, atol=1e-5)



# ------------------------------------------------------------ float32 logits under bf16


def _bf16(rng, shape, scale=1.0):
  return jnp.asarray(rng.standard_normal(shape) * scale, jnp.bfloat16)


def _f32_product(a, b):
  """The exact product of bf16 operands, accumulated in float64, as float32."""
  return (np.asarray(a, np.float64) @ np.asarray(b, np.float64)).astype(np.float32)


def _assert_float32_logits(got, a, b):
  want = _f32_product(a, b)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  # The check can fail: results rounded to bf16 (the old behaviour) miss it by far more.
  rounded = np.asarray(jnp.asarray(want, jnp.bfloat16), np.float32)
  assert (np.abs(rounded - want) > 1e-5 + 1e-5 * np.abs(want)).mean() > 0.5


def test_tied_untied_and_out_first_logits_are_float32_products_of_bf16_operands():
  from ernie3_jax.model.config import Ernie3Config
  from ernie3_jax.model.embeddings import Embeddings
  from ernie3_jax.model.heads import TokenPredictionHead
  rng = np.random.default_rng(0)
  cfg = Ernie3Config(vocab_size=300, d_model=64, num_heads=4, head_dim=16, task_d_model=48,
                     dtype="bfloat16")
  query = _bf16(rng, (2, 5, 64), 4.0)
  emb = Embeddings(cfg)
  params = emb.init(jax.random.PRNGKey(0), jnp.zeros((1, 3), jnp.int32),
                    jnp.zeros((1, 3), jnp.int32), jnp.zeros((1,), jnp.int32))
  table = nn.unbox(params)["params"]["token"]["embedding"].astype(jnp.bfloat16)
  _assert_float32_logits(emb.apply(params, query, method=Embeddings.attend), query, table.T)
  # The untied output projection and the decoder's out-first read, inside the head.
  h = _bf16(rng, (2, 5, 48))
  for untied_cfg, table_arg in ((dataclasses.replace(cfg, tie_embeddings=False), None),
                                (cfg, _bf16(rng, (300, 64), 0.05))):
    head = TokenPredictionHead(untied_cfg)
    variables = head.init(jax.random.PRNGKey(1), h, lambda t: None, table_arg)
    logits, state = head.apply(variables, h, lambda t: None, table_arg,
                               capture_intermediates=True)
    t = state["intermediates"]["transform_norm"]["__call__"][0]
    kernel = (nn.unbox(variables)["params"]["output"]["kernel"].astype(jnp.bfloat16)
              if table_arg is None else table_arg.T)
    _assert_float32_logits(logits, t, kernel)  # the output bias is zero at init


def test_bf16_dropout_scales_kept_values_in_float32():
  x = jnp.ones((64, 64), jnp.bfloat16)
  drop = layers.Dropout(0.1)
  out = drop.apply({}, x, False, rngs={"dropout": jax.random.PRNGKey(0)})
  kept = np.asarray(out, np.float32)[np.asarray(out) != 0]
  assert kept.size > 3000
  want = float(jnp.asarray(np.float32(1.0) / np.float32(0.9), jnp.bfloat16))
  assert np.all(kept == want)  # 1/0.9 rounded once; bf16 keep (0.8984) would give 1.1133
  assert want == pytest.approx(1.109375)
