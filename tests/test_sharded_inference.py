"""Decoding on a device mesh (8 simulated CPU devices): the same tokens as one device,
with parameters and the key/value cache really sharded."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from ernie3_jax import generation
from ernie3_jax.model import Ernie3
from ernie3_jax.model.decode_cache import CachedNLGDecoder
from ernie3_jax.parallel import inference
from ernie3_jax.parallel import mesh as mesh_lib
from ernie3_jax.training import task_ids
from tests import model_testing as mt

# Eight heads in both stacks, so tensor=8 splits them; scanned layers as in training.
CFG = mt.config(num_heads=8, head_dim=4, task_num_heads=8, task_head_dim=3, scan_layers=True)
SEGMENT = 4
# The longer prompt fills a segment first (committed to memory during prefill), and ten
# new tokens cross two more segment boundaries.
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
MESHES = [(1, 1, 8), (2, 1, 4), (1, 4, 2)]  # (data, fsdp, tensor)


@pytest.fixture(scope="module", name="model")
def fixture_model():
  return Ernie3(CFG), nn.unbox(mt.init_params(CFG)["params"])


def _generate(model, options, mesh=None):
  m, params = model
  return generation.generate(m, params, PROMPTS, 10, SEGMENT, options, seed=3,
                             mesh=None if mesh is None else mesh_lib.make_mesh(*mesh))


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_greedy_decoding_gives_the_tokens_of_one_device(model, mesh):
  want = _generate(model, generation.DecodeOptions("greedy", stop_ids=()))
  got = _generate(model, generation.DecodeOptions("greedy", stop_ids=()), mesh)
  assert got.tokens == want.tokens
  np.testing.assert_allclose(got.log_probs, want.log_probs, rtol=1e-5, atol=1e-5)


def test_sharded_sampling_and_beam_search_match_one_device(model):
  for options in (generation.DecodeOptions("sample", temperature=0.8, top_k=20, stop_ids=()),
                  generation.DecodeOptions("beam", num_beams=3, stop_ids=())):
    want = _generate(model, options)
    got = _generate(model, options, (2, 1, 4))
    assert got.tokens == want.tokens, options.strategy
    np.testing.assert_allclose(got.log_probs, want.log_probs, rtol=1e-5, atol=1e-5)


def test_parameters_and_cache_are_sharded_over_the_mesh(model):
  m, params = model
  mesh = mesh_lib.make_mesh(2, 1, 4)
  rules = mesh_lib.logical_axis_rules()
  placed = inference.place_params(params, m, mesh, rules)
  query = placed["universal"]["layers"]["attention"]["query"]["kernel"]
  assert query.sharding.spec[2] == "tensor"  # [layers, embed, heads, kv]: heads split
  assert len(query.addressable_shards) == 8 and query.addressable_shards[0].data.shape[2] == 2
  decoder = CachedNLGDecoder(m, SEGMENT, task_ids.DOCUMENT_LM)

  @jax.jit
  def empty_cache(params):
    return inference.constrain_cache(decoder.init_cache(decoder.prepare(params), 4), mesh,
                                     rules)

  cache = empty_cache(placed)
  keys = cache.universal.keys[0]  # [B, H, Dh, M + S]
  assert keys.sharding.spec[:2] == ("data", "tensor")
  assert keys.addressable_shards[0].data.shape == (2, 2, 4, CFG.memory_len + SEGMENT)
  assert cache.nlg.memory[0].sharding.spec[0] == "data"  # [B, M, D]: rows split


def test_a_mesh_axis_that_does_not_divide_a_dimension_is_left_out():
  rules = mesh_lib.logical_axis_rules()
  # 4 heads do not split 8 ways: that dimension stays whole (replicated over tensor).
  sharding = inference.named_sharding(("batch", "heads"), (3, 4), mesh_lib.make_mesh(1, 1, 8),
                                      rules)
  assert sharding.spec[1] is None
  # 3 rows do not split over data=2 (data leaves the batch dimension), 4 heads do over 4.
  sharding = inference.named_sharding(("batch", "heads"), (3, 4), mesh_lib.make_mesh(2, 1, 4),
                                      rules)
  assert "data" not in np.ravel(sharding.spec[0] or ()) and sharding.spec[1] == "tensor"
  placed = jax.device_put(np.arange(12.0).reshape(3, 4), sharding)
  assert placed.addressable_shards[0].data.shape == (3, 1)
  np.testing.assert_array_equal(np.asarray(placed), np.arange(12.0).reshape(3, 4))
