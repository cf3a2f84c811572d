"""Shardings of the train state and batches, derived from logical axis names.

The abstract state (shapes only, parameters boxed with their logical names) is
built with `jax.eval_shape`; its names map to mesh axes through the rules, and the
real state is then created directly in place by a jit with those out-shardings,
so no host ever holds a full copy of a large model.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import optax

from ernie3_jax.model import Ernie3, init_memory
from ernie3_jax.training.train_step import TrainState, initial_loss_scale

MEMORY_NAMES = {"universal": ("layers", "batch", "kv_length", "embed"),
                "nlg": ("layers", "batch", "kv_length", "task_embed"),
                "valid": ("batch", "kv_length")}


def _boxed_memory(memory):
  if memory is None:
    return None
  return {k: nn.Partitioned(v, names=MEMORY_NAMES[k]) for k, v in memory.items()}


def _init_fn(model: Ernie3, tx: optax.GradientTransformation, nlg_batch_size: int,
             rng: jax.Array, boxed: bool):
  cfg = model.config

  def init():
    tokens = jnp.ones((1, 8), jnp.int32)
    variables = model.init(rng, tokens, jnp.zeros_like(tokens), jnp.zeros((1,), jnp.int32),
                           init_memory(cfg, 1, 4))
    params = variables["params"]
    memory = init_memory(cfg, nlg_batch_size) if nlg_batch_size else None
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       memory=_boxed_memory(memory),
                       nonfinite_skipped=jnp.zeros((), jnp.int32),
                       loss_scale=initial_loss_scale(cfg.compute_dtype))
    return state if boxed else nn.unbox(state)

  return init


def state_shardings(model: Ernie3, tx: optax.GradientTransformation, mesh: Mesh, rules,
                    nlg_batch_size: int) -> tuple[Any, Any]:
  """(abstract unboxed state, its NamedShardings)."""
  boxed = jax.eval_shape(_init_fn(model, tx, nlg_batch_size, jax.random.PRNGKey(0), True))
  specs = nn.get_partition_spec(boxed)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  abstract = nn.unbox(boxed)
  # Optimizer state of parameters an optimizer leaves out (optax.masked /
  # multi_transform, e.g. a frozen module) is an empty MaskedNode; the shardings
  # get the same placeholder so both trees have one structure (orbax restores
  # map over them together).
  shardings = jax.tree_util.tree_map(
      lambda s, a: optax.MaskedNode() if isinstance(a, optax.MaskedNode) else s, shardings,
      abstract, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  return abstract, shardings


def create_train_state(model: Ernie3, tx: optax.GradientTransformation, mesh: Mesh, rules,
                       nlg_batch_size: int, seed: int):
  """A freshly initialised, sharded TrainState and its shardings."""
  abstract, shardings = state_shardings(model, tx, mesh, rules, nlg_batch_size)
  init = _init_fn(model, tx, nlg_batch_size, jax.random.PRNGKey(seed), False)
  with mesh, nn.logical_axis_rules(rules):
    state = jax.jit(init, out_shardings=shardings)()
  return state, shardings, abstract


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """Rows over the mesh axes that "batch" maps to (data x fsdp by default)."""
  return nn.logical_to_mesh_sharding(P("batch"), mesh, rules)


def check_process_rows(sharding: NamedSharding, global_rows: int) -> None:
  """Each process must hold one contiguous block of a batch's rows, in process order:
  the data pipeline hands process p rows [p B/P, (p+1) B/P) of every global batch."""
  count, index = jax.process_count(), jax.process_index()
  if count == 1:
    return
  if global_rows % count:
    raise ValueError(f"a batch of {global_rows} rows does not split over {count} processes")
  held = sorted({r for slices in sharding.addressable_devices_indices_map(
      (global_rows,)).values() for r in range(*slices[0].indices(global_rows))})
  block = global_rows // count
  if held != list(range(index * block, (index + 1) * block)):
    raise ValueError(
        f"process {index} holds batch rows {held[:4]}... of {global_rows} under the mesh "
        f"{dict(sharding.mesh.shape)}, not the block [{index * block}, {(index + 1) * block})"
        " its input reads; the batch axis must be split over processes in process order "
        "(put the mesh axes that span processes in 'batch', e.g. make_mesh.data)")


def to_global_batch(batch: dict | None, sharding: NamedSharding) -> dict | None:
  """Host-local numpy rows -> global jax.Arrays sharded over the batch axis.

  Each process passes only its own rows; the global batch is their concatenation.
  """
  if batch is None:
    return None
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def per_device_bytes(abstract, shardings, axis_sizes: dict[str, int]) -> int:
  """Bytes one device holds of `abstract` under `shardings`' specs on a mesh of
  `axis_sizes`. The mesh may be larger than the devices present: the specs, not
  the devices, decide the shard shapes (an uneven split rounds up, as XLA pads)."""
  leaves = jax.tree_util.tree_leaves(abstract)
  specs = jax.tree_util.tree_leaves(shardings, is_leaf=lambda s: hasattr(s, "spec"))
  if len(leaves) != len(specs):
    raise ValueError(f"{len(leaves)} arrays but {len(specs)} shardings")
  total = 0
  for leaf, sharding in zip(leaves, specs):
    shape = list(leaf.shape)
    for dim, axes in enumerate(tuple(sharding.spec)[:len(shape)]):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else axes
      shape[dim] = -(-shape[dim] // math.prod(axis_sizes[a] for a in axes))
    total += math.prod(shape) * leaf.dtype.itemsize
  return total
