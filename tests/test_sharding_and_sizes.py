"""Logical axis names on every parameter, sharded forward pass, 10B parameter count."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ernie3_jax.config import gin_utils
from ernie3_jax.model import Ernie3, init_memory
from ernie3_jax.parallel import mesh as mesh_lib
from tests import model_testing as mt


def _boxed_leaves(tree):
  return jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def test_every_parameter_has_logical_axis_names():
  for scan in (True, False):
    cfg = mt.config(scan_layers=scan, tie_embeddings=False, num_labels=2)
    variables = jax.eval_shape(lambda: mt.init_params.__wrapped__(cfg))
    leaves = _boxed_leaves(variables["params"])
    assert leaves
    for leaf in leaves:
      assert isinstance(leaf, nn.Partitioned), f"unnamed parameter of shape {leaf.shape}"
      assert len(leaf.names) == leaf.value.ndim, (leaf.names, leaf.value.shape)
      assert all(isinstance(n, str) for n in leaf.names), leaf.names
    if scan:
      names = {l.names for l in leaves}
      assert ("layers", "embed", "heads", "kv") in names


@pytest.mark.parametrize("shape", [(2, 1, 4), (2, 2, 2)])
def test_sharded_forward_equals_single_device(shape):
  assert jax.device_count() >= 8, "conftest sets 8 simulated CPU devices"
  cfg = mt.config(scan_layers=True)
  variables = mt.init_params(cfg)
  tokens, segs, tasks = mt.random_batch(cfg, 4, 8)
  memory = init_memory(cfg, 4)

  def forward(v, tokens, segs, tasks, memory):
    return Ernie3(cfg).apply(v, tokens, segs, tasks, memory)

  want = jax.jit(forward)(variables, tokens, segs, tasks, memory)

  mesh = mesh_lib.make_mesh(*shape, devices=jax.devices()[:8])
  rules = mesh_lib.DEFAULT_LOGICAL_AXIS_RULES
  param_sharding = nn.logical_to_mesh_sharding(nn.get_partition_spec(variables), mesh, rules)
  batch_sharding = nn.logical_to_mesh_sharding(jax.sharding.PartitionSpec("batch"), mesh, rules)
  mem_sharding = {
      "universal": nn.logical_to_mesh_sharding(
          jax.sharding.PartitionSpec("layers", "batch"), mesh, rules),
      "nlg": nn.logical_to_mesh_sharding(
          jax.sharding.PartitionSpec("layers", "batch"), mesh, rules),
      "valid": batch_sharding,
  }
  sharded_vars = jax.device_put(variables, param_sharding)
  # At least one parameter really is split across devices.
  kernel = sharded_vars["params"]["universal"]["layers"]["ffn"]["wi"]["kernel"].value
  assert len({str(s.index) for s in kernel.addressable_shards}) > 1
  with mesh, nn.logical_axis_rules(rules):
    got = jax.jit(forward, in_shardings=(param_sharding, batch_sharding, batch_sharding,
                                         batch_sharding, mem_sharding))(
        sharded_vars, tokens, segs, tasks, memory)
  for key in want[0]:
    np.testing.assert_allclose(got[0][key], want[0][key], atol=2e-5, err_msg=key)
  for key in want[1]:
    np.testing.assert_allclose(got[1][key], want[1][key], atol=2e-5, err_msg=key)


def test_mesh_shape_resolution_and_errors():
  assert mesh_lib.resolve_mesh_shape(-1, 2, 1, 8) == (4, 2, 1)
  assert mesh_lib.resolve_mesh_shape(2, 1, -1, 8) == (2, 1, 4)
  with pytest.raises(ValueError, match="divisible"):
    mesh_lib.resolve_mesh_shape(-1, 3, 1, 8)
  with pytest.raises(ValueError, match="8 are available"):
    mesh_lib.resolve_mesh_shape(2, 2, 1, 8)
  with pytest.raises(ValueError, match="At most one"):
    mesh_lib.resolve_mesh_shape(-1, -1, 1, 8)


def _param_count(gin_file):
  cfg = gin_utils.model_config_from_gin([gin_file])
  tokens = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: Ernie3(cfg).init(
      jax.random.PRNGKey(0), tokens, tokens, jnp.zeros((1,), jnp.int32),
      init_memory(cfg, 1, 4)))
  return cfg, sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(
      nn.unbox(shapes["params"])))


def test_10b_config_has_about_ten_billion_parameters():
  cfg, count = _param_count("gin_configs/models/ernie3_10b.gin")
  print(f"ernie3_10b parameters: {count:,}")
  assert cfg.num_layers == 48 and cfg.d_model == 4096 and cfg.num_heads == 64
  assert cfg.nlu_layers == 12 and cfg.task_d_model == 768 and cfg.memory_len == 128
  assert abs(count - 10e9) / 10e9 < 0.05, count


@pytest.mark.parametrize("gin_file,low,high", [("gin_configs/models/tiny.gin", 1e6, 1e7),
                                              ("gin_configs/models/base.gin", 2.5e8, 3.5e8)])
def test_smaller_configs_parse(gin_file, low, high):
  _, count = _param_count(gin_file)
  print(f"{os.path.basename(gin_file)} parameters: {count:,}")
  assert low < count < high
