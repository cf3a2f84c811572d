"""Placing a model for inference on a device mesh: parameters and the decode cache.

Parameters take the shardings their logical axis names map to under the rules (the same
rules as training, or inference-specific ones from gin, e.g. heads, mlp and vocab over
`tensor`). The decode cache's arrays are named too (batch, heads, kv, kv_length, embed),
so `constrain_cache` pins them inside the jitted decoding loop. A mesh axis that does not
divide an array's dimension is left out of that array's sharding (it stays replicated
along that axis) rather than failing.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ernie3_jax.model import Ernie3, init_memory

# Logical names of the decode cache's arrays (model/decode_cache.py), batch first.
_STACK_CACHE_NAMES = {"memory": ("batch", "kv_length", None),
                      "keys": ("batch", "heads", "kv", "kv_length"),
                      "values": ("batch", "heads", "kv_length", "kv"),
                      "seg_states": ("batch", "length", None)}
_EMBED = {"universal": "embed", "nlg": "task_embed"}


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """`spec` without the mesh axes that do not divide their dimension."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    kept = []
    for name in names:
      if dim % (math.prod(mesh.shape[a] for a in kept) * mesh.shape[name]) == 0:
        kept.append(name)
    out.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
  return P(*out)


def named_sharding(names: tuple, shape: tuple[int, ...], mesh: Mesh, rules) -> NamedSharding:
  """The sharding of an array with logical axis `names` under `rules`, fitted to `shape`."""
  spec = nn.logical_to_mesh_axes(names, rules)
  return NamedSharding(mesh, _fit(spec, shape, mesh))


def _boxed_params(model: Ernie3) -> Any:
  """The model's parameters as abstract, logically named (boxed) leaves; no compute."""
  tokens = jnp.ones((1, 8), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens * 0,
                                           jnp.zeros((1,), jnp.int32),
                                           init_memory(model.config, 1, 4)))["params"]


def abstract_params(model: Ernie3) -> Any:
  """ShapeDtypeStructs of the model's (unboxed) parameters."""
  return nn.unbox(_boxed_params(model))


def param_shardings(model: Ernie3, mesh: Mesh, rules) -> Any:
  """NamedShardings of the model's parameters (a tree like the unboxed params)."""
  boxed = _boxed_params(model)
  specs = nn.get_partition_spec(boxed)
  abstract = nn.unbox(boxed)
  return jax.tree_util.tree_map(
      lambda spec, leaf: NamedSharding(mesh, _fit(nn.logical_to_mesh_axes(tuple(spec), rules),
                                                  leaf.shape, mesh)),
      specs, abstract, is_leaf=lambda x: isinstance(x, P))


def place_params(params: Any, model: Ernie3, mesh: Mesh, rules) -> Any:
  """`params` (host or device arrays, boxed or not) placed with their shardings."""
  return jax.device_put(nn.unbox(params), param_shardings(model, mesh, rules))


def cache_shardings(cache, mesh: Mesh, rules):
  """NamedShardings for a DecodeCache (any batch size) under `rules`."""
  from ernie3_jax.model.decode_cache import DecodeCache, StackCache  # pylint: disable=g-import-not-at-top

  def stack(c: StackCache, name: str) -> StackCache:
    fields = {}
    for field, names in _STACK_CACHE_NAMES.items():
      names = tuple(_EMBED[name] if n is None else n for n in names)
      fields[field] = tuple(named_sharding(names, a.shape, mesh, rules)
                            for a in getattr(c, field))
    return StackCache(**fields)

  return DecodeCache(
      stack(cache.universal, "universal"), stack(cache.nlg, "nlg"),
      named_sharding(("batch", "kv_length"), cache.mem_valid.shape, mesh, rules),
      named_sharding(("batch", "length"), cache.seg_valid.shape, mesh, rules),
      named_sharding(("batch",), cache.length.shape, mesh, rules))


def constrain_cache(cache, mesh: Mesh, rules):
  """The cache with its arrays pinned to their named shardings (inside a jit)."""
  return jax.lax.with_sharding_constraint(cache, cache_shardings(cache, mesh, rules))
