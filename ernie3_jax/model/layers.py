"""Small building blocks shared by every stack: dense, layer norm, dropout, MLP.

Every parameter is created through `nn.with_logical_partitioning`, so it carries
logical axis names; the rules that map names to mesh axes live in gin, not here.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def normal_init(stddev: float):
  return nn.initializers.normal(stddev=stddev)


class DenseGeneral(nn.Module):
  """y = x @ W (+ b) contracting the last `len(in_axes)` dims of x.

  `in_names` / `out_names` are the logical names of the kernel's input and output
  dimensions; the kernel is named `in_names + out_names`.
  """

  out_features: Sequence[int]
  in_names: Sequence[str]
  out_names: Sequence[str]
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  kernel_init_std: float = 0.02

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n_in = len(self.in_names)
    in_shape = x.shape[-n_in:]
    kernel = self.param(
        "kernel",
        nn.with_logical_partitioning(normal_init(self.kernel_init_std),
                                     tuple(self.in_names) + tuple(self.out_names)),
        tuple(in_shape) + tuple(self.out_features), self.param_dtype)
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    contract_x = tuple(range(x.ndim - n_in, x.ndim))
    y = jax.lax.dot_general(x, kernel, ((contract_x, tuple(range(n_in))), ((), ())))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                             tuple(self.out_names)),
                        tuple(self.out_features), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class LayerNorm(nn.Module):
  """Layer norm computed in float32 whatever the compute dtype."""

  axis_name: str
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                             (self.axis_name,)),
                       (features,), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                           (self.axis_name,)),
                      (features,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(self.dtype)


class Dropout(nn.Module):
  """Dropout whose rate is `rate * multiplier`, with `multiplier` a traced scalar.

  Progressive learning raises dropout smoothly during training; taking the factor
  as an array (not a static attribute) keeps that from recompiling the step.
  """

  rate: float

  @nn.compact
  def __call__(self, x: Array, deterministic: bool, multiplier: Array | float = 1.0) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    rate = jnp.clip(jnp.asarray(multiplier, jnp.float32) * self.rate, 0.0, 0.999)
    keep = 1.0 - rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
    return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros_like(x))


class FeedForward(nn.Module):
  """Position-wise GeLU MLP."""

  d_ff: int
  embed_axis: str
  dropout_rate: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  init_std: float = 0.02

  @nn.compact
  def __call__(self, x: Array, deterministic: bool, dropout_multiplier) -> Array:
    d_model = x.shape[-1]
    h = DenseGeneral((self.d_ff,), (self.embed_axis,), ("mlp",), dtype=self.dtype,
                     param_dtype=self.param_dtype, kernel_init_std=self.init_std,
                     name="wi")(x)
    h = nn.gelu(h, approximate=True)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = Dropout(self.dropout_rate, name="dropout")(h, deterministic, dropout_multiplier)
    return DenseGeneral((d_model,), ("mlp",), (self.embed_axis,), dtype=self.dtype,
                        param_dtype=self.param_dtype, kernel_init_std=self.init_std,
                        name="wo")(h)
