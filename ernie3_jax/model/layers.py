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


def kernel_out_first(kernel: Array, num_in: int) -> Array:
  """A kernel laid out [in..., out...] (`num_in` input dims) -> [out..., in...]."""
  return jnp.transpose(kernel, tuple(range(num_in, kernel.ndim)) + tuple(range(num_in)))


def matmul_out_first(x: Array, kernel: Array, num_in: int,
                     out_dtype: jnp.dtype | None = None) -> Array:
  """x [..., in...] times a kernel laid out [out..., in...] -> [..., out...].

  The kernel is the left operand, so the matmul is [out, in] x [in, rows]: with
  few rows (a decoding step), XLA:CPU (jaxlib 0.10) reads the weights at about
  1.5x the bandwidth of rows x [in, out] (measured at 8 rows by 768 x 3072 and
  768 x 40000); the transposed result is small. `out_dtype` (e.g. float32 for
  logits under bf16 compute) is the accumulation and result type.
  """
  n_out = kernel.ndim - num_in
  contract = (tuple(range(n_out, kernel.ndim)), tuple(range(x.ndim - num_in, x.ndim)))
  y = jax.lax.dot_general(kernel, x, (contract, ((), ())),
                          preferred_element_type=out_dtype)  # [out..., rows...]
  n_rows = x.ndim - num_in
  return jnp.transpose(y, tuple(range(n_out, n_out + n_rows)) + tuple(range(n_out)))


class DenseGeneral(nn.Module):
  """y = x @ W (+ b) contracting the last `len(in_axes)` dims of x.

  `in_names` / `out_names` are the logical names of the kernel's input and output
  dimensions; the kernel is named `in_names + out_names`, or `out_names +
  in_names` with `out_first` (the decoding layout, see `matmul_out_first`).
  """

  out_features: Sequence[int]
  in_names: Sequence[str]
  out_names: Sequence[str]
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  kernel_init_std: float = 0.02
  out_first: bool = False
  # Accumulation and result type when it must be wider than `dtype` (logits: float32).
  out_dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n_in = len(self.in_names)
    in_shape = tuple(x.shape[-n_in:])
    names = tuple(self.in_names) + tuple(self.out_names)
    shape = in_shape + tuple(self.out_features)
    if self.out_first:
      names = tuple(self.out_names) + tuple(self.in_names)
      shape = tuple(self.out_features) + in_shape
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(normal_init(self.kernel_init_std), names),
        shape, self.param_dtype)
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    if self.out_first:
      y = matmul_out_first(x, kernel, n_in, self.out_dtype)
    else:
      contract_x = tuple(range(x.ndim - n_in, x.ndim))
      y = jax.lax.dot_general(x, kernel, ((contract_x, tuple(range(n_in))), ((), ())),
                              preferred_element_type=self.out_dtype)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                             tuple(self.out_names)),
                        tuple(self.out_features), self.param_dtype)
      y = y + bias.astype(y.dtype)
    return y


@jax.custom_vjp
def add_bias(x: Array, bias: Array) -> Array:
  """x + bias over the last axis, whose bias gradient is a matmul with ones.

  XLA:CPU (jaxlib 0.10) lowers the plain gradient, a column sum over every row,
  to a reduction that took 118 ms for a [416, 40000] vocabulary-logit gradient,
  against 1.5 ms as the matmul; on accelerators both are cheap.
  """
  return x + bias


def _add_bias_fwd(x, bias):
  return x + bias, bias


def _add_bias_bwd(bias, g):
  rows = g.reshape(-1, g.shape[-1])
  dbias = jnp.ones((rows.shape[0],), rows.dtype) @ rows
  return g, dbias.astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


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


def _fmix32(h: Array) -> Array:
  """MurmurHash3's 32-bit finaliser: a bijection that mixes every input bit."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def hashed_keep_mask(key: Array, keep: Array, shape: Sequence[int]) -> Array:
  """Boolean mask, True with probability `keep` (to 2^-24), from a counter hash.

  Two 32-bit words drawn from `key` seed a hash of each element's (row, column)
  index, row being the flat index over the leading dimensions. The mask is one
  fused elementwise loop; `jax.random.bernoulli` runs threefry's rounds as many
  separate passes over the array (on this project's 2-core CPU, one
  [16, 128, 3072] mask took 2 ms against 55-85 ms). The index is built from
  per-dimension iotas, never a reshape, so the mask shards like `x` and its
  values do not depend on the mesh.
  """
  seeds = jax.random.bits(key, (2,), jnp.uint32)
  shape = tuple(shape)
  if not shape:
    return jax.random.bernoulli(key, keep, shape)
  row = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for dim in range(len(shape) - 2, -1, -1):
    row = row + jax.lax.broadcasted_iota(jnp.uint32, shape, dim) * jnp.uint32(stride)
    stride = (stride * shape[dim]) % (1 << 32)
  col = jax.lax.broadcasted_iota(jnp.uint32, shape, len(shape) - 1)
  h = _fmix32(row * jnp.uint32(0x9E3779B9) ^ seeds[0])
  h = _fmix32(h + col * jnp.uint32(0x7FEB352D) ^ seeds[1])
  threshold = jnp.clip(keep * (1 << 24), 0, 1 << 24).astype(jnp.int32)
  return (h >> 8).astype(jnp.int32) < threshold


class Dropout(nn.Module):
  """Dropout whose rate is `rate * multiplier`, with `multiplier` a traced scalar.

  Progressive learning raises dropout smoothly during training; taking the factor
  as an array (not a static attribute) keeps that from recompiling the step.
  `rng` picks the mask generator: "hash" (`hashed_keep_mask`, the default) or
  "threefry" (`jax.random.bernoulli`).
  """

  rate: float
  rng: str = "hash"

  @nn.compact
  def __call__(self, x: Array, deterministic: bool, multiplier: Array | float = 1.0) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    rate = jnp.clip(jnp.asarray(multiplier, jnp.float32) * self.rate, 0.0, 0.999)
    keep = 1.0 - rate
    if self.rng == "hash":
      mask = hashed_keep_mask(self.make_rng("dropout"), keep, x.shape)
    elif self.rng == "threefry":
      mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
    else:
      raise ValueError(f"Dropout.rng={self.rng!r}; expected 'hash' or 'threefry'")
    # The 1/keep scale in float32: in bf16, keep 0.9 rounds to 0.8984 and every kept
    # value would come out 0.17% too large.
    return jnp.where(mask, (x.astype(jnp.float32) / keep).astype(x.dtype), jnp.zeros_like(x))


class FeedForward(nn.Module):
  """Position-wise GeLU MLP."""

  d_ff: int
  embed_axis: str
  dropout_rate: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  init_std: float = 0.02
  dropout_rng: str = "hash"
  out_first: bool = False  # kernels in the decoding layout (`DenseGeneral.out_first`)

  @nn.compact
  def __call__(self, x: Array, deterministic: bool, dropout_multiplier) -> Array:
    d_model = x.shape[-1]
    h = DenseGeneral((self.d_ff,), (self.embed_axis,), ("mlp",), dtype=self.dtype,
                     param_dtype=self.param_dtype, kernel_init_std=self.init_std,
                     out_first=self.out_first, name="wi")(x)
    h = nn.gelu(h, approximate=True)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = Dropout(self.dropout_rate, self.dropout_rng, name="dropout")(h, deterministic, dropout_multiplier)
    return DenseGeneral((d_model,), ("mlp",), (self.embed_axis,), dtype=self.dtype,
                        param_dtype=self.param_dtype, kernel_init_std=self.init_std,
                        out_first=self.out_first, name="wo")(h)
