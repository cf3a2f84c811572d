"""Decoding on a device mesh (8 simulated CPU devices): the same tokens as one device,
with parameters and the key/value cache really sharded."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from ernie3_jax.inference import generation
from ernie3_jax.model import Ernie3
from ernie3_jax.model.decode_cache import CachedNLGDecoder
from ernie3_jax.parallel import inference
from ernie3_jax.parallel import mesh as mesh_lib
from ernie3_jax.model import task_ids
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
  values = cache.universal.values[0]  # [B, H, M + S, Dh]
  assert tuple(values.sharding.spec) + (None,) * (4 - len(values.sharding.spec)) == (
      "data", "tensor", None, None)
  assert values.addressable_shards[0].data.shape == (2, 2, CFG.memory_len + SEGMENT, 4)
  nlg_keys, nlg_values = cache.nlg.keys[0], cache.nlg.values[0]  # 8 heads of 3
  assert nlg_keys.addressable_shards[0].data.shape == (2, 2, 3, CFG.memory_len + SEGMENT)
  assert nlg_values.addressable_shards[0].data.shape == (2, 2, CFG.memory_len + SEGMENT, 3)
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


@pytest.mark.slow  # writes a checkpoint, restores it twice and compiles on three meshes
def test_a_checkpoint_serves_from_an_inference_mesh_as_from_one_device(tmp_path, capsys):
  from ernie3_jax.inference import generate as generate_cli
  from ernie3_jax.config import gin_utils
  from ernie3_jax.data import data_config
  from ernie3_jax.evaluation import knowledge_probe as kp
  from ernie3_jax.evaluation import zero_shot
  from ernie3_jax.training.evaluate import load_params
  from tests import training_testing
  # Trained on one device; num_steps=0 saves the initial state (a real, verified
  # checkpoint). The shipped vocabulary has 4,000 pieces, so the model must too.
  training_testing.run(tmp_path, 0, nlg_batch_size=8,
                       extra_bindings=["Ernie3Config.vocab_size=4000"])
  (tmp_path / "config.gin").write_text(gin_utils.effective_config() +
                                       "\ntrain.nlg_batch_size = 8\n")
  model, one, step, _, _ = load_params(str(tmp_path), mesh_lib.make_mesh(1, 1, 1, num_devices=1))
  model, sharded, _, mesh, rules = load_params(str(tmp_path), mesh_lib.make_mesh(2, 1, 4))
  assert step == 0 and set(sharded) == set(one)  # parameters only: no optimizer state
  kernel = next(leaf for path, leaf in jax.tree_util.tree_flatten_with_path(sharded)[0]
                if "query" in jax.tree_util.keystr(path) and path[0].key == "universal")
  assert "tensor" in tuple(kernel.sharding.spec) and len(kernel.addressable_shards) == 8
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(sharded),
                         jax.device_get(one))

  # Decoding, NLG scoring and NLU slot scoring: the same on the mesh as on one device.
  options = generation.DecodeOptions("greedy", stop_ids=())
  want = generation.generate(model, jax.device_get(one), PROMPTS, 6, SEGMENT, options)
  got = generation.generate(model, sharded, PROMPTS, 6, SEGMENT, options, mesh=mesh, rules=rules)
  assert got.tokens == want.tokens
  rows, masks = [[1, 5, 6, 7, 8], [1, 9, 10]], [[0, 0, 1, 1, 1], [0, 1, 1]]
  np.testing.assert_allclose(
      zero_shot.NlgScorer(model, sharded, 16, 4, mesh).score_rows(rows, masks)[0],
      zero_shot.NlgScorer(model, jax.device_get(one), 16, 4).score_rows(rows, masks)[0],
      rtol=1e-5, atol=1e-5)
  vocab = data_config.vocabulary(data_config.current().vocabulary)
  item = kp.SlotItem("tail", ("Cael Helelteth was born in {}.",), ("Port Lysdrow", "Isgar"), 0)
  np.testing.assert_allclose(
      kp.MaskedSlotScorer(model, sharded, vocab, 24, 4, mesh=mesh)([item])[0],
      kp.MaskedSlotScorer(model, jax.device_get(one), vocab, 24, 4)([item])[0],
      rtol=1e-5, atol=1e-5)

  # The command line takes the mesh as a gin binding.
  argv = ["generate", f"--checkpoint={tmp_path}", "--prompt=The river", "--max_new_tokens=4",
          "--segment_length=4", "--gin=make_mesh.data=1", "--gin=make_mesh.tensor=4",
          "--gin=make_mesh.fsdp=2"]
  assert generate_cli.main(argv) == 0
  assert "continuation:" in capsys.readouterr().out
  assert tuple(mesh_lib.make_mesh().shape.values()) == (1, 2, 4)
  # Parameters that differ from the checksums saved with them are refused, not served.
  import json
  from ernie3_jax.training.checkpointing import CheckpointCorruptError
  record_file = tmp_path / "checkpoints" / "0" / "integrity" / "metadata"
  record = json.loads(record_file.read_text())
  name = next(n for n in record["arrays"] if n.startswith("params"))
  record["arrays"][name][0] ^= 1
  record_file.write_text(json.dumps(record))
  with pytest.raises(CheckpointCorruptError, match="differ from the checksums"):
    load_params(str(tmp_path), mesh)
  record["arrays"][name][0] ^= 1  # restored
  record_file.write_text(json.dumps(record))

  # Served in bfloat16 from a float32 checkpoint: verified as saved, then cast.
  gin_utils.parse_gin([str(tmp_path / "config.gin")], ["Ernie3Config.param_dtype='bfloat16'"])
  model, half, _, _, _ = load_params(str(tmp_path), mesh)
  assert {str(x.dtype) for x in jax.tree_util.tree_leaves(half)} == {"bfloat16"}
  jax.tree_util.tree_map(
      lambda h, f: np.testing.assert_array_equal(np.asarray(h, np.float32),
                                                 np.asarray(f.astype(jax.numpy.bfloat16),
                                                            np.float32)), half, one)
