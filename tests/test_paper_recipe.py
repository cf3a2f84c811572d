"""The paper's 10B recipe as an experiment file: it parses, its schedule is the paper's,
its batch and token budget add up, and the model and optimizer state it builds are 10B."""

import math

import gin
import jax
import pytest

from ernie3_jax.config import gin_utils
from ernie3_jax.model import Ernie3, Ernie3Config
from ernie3_jax.parallel import inference
from ernie3_jax.training import optimizer

EXPERIMENT = "gin_configs/experiments/ernie3_10b_paper.gin"


@pytest.fixture(name="recipe")
def fixture_recipe():
  gin_utils.parse_gin([EXPERIMENT], ["MODEL_DIR = '/tmp/unused'"])
  yield
  gin.clear_config()


def _q(name):
  value = gin.query_parameter(name)
  return value.scoped_configurable_fn() if isinstance(
      value, gin.config.ConfigurableReference) else value


def test_the_schedule_warms_up_to_1e4_at_step_10000_and_decays_to_zero_at_the_end(recipe):
  steps = _q("train.num_steps")
  schedule = optimizer.learning_rate_schedule(total_steps=steps)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5000)) == pytest.approx(5e-5)
  assert float(schedule(10000)) == pytest.approx(1e-4)
  assert float(schedule((10000 + steps) // 2)) == pytest.approx(5e-5, rel=1e-3)
  assert float(schedule(steps)) == pytest.approx(0.0, abs=1e-12)


def test_batch_tokens_and_mesh_are_the_papers(recipe):
  nlu, nlg = _q("train.nlu_batch_size"), _q("train.nlg_batch_size")
  assert nlu + nlg == 6144 and _q("train.sequence_length") == 512
  tokens = _q("train.num_steps") * 6144 * 512
  assert 375e9 <= tokens < 375e9 + 6144 * 512  # the first step count reaching 375B tokens
  devices = _q("make_mesh.data") * _q("make_mesh.fsdp") * _q("make_mesh.tensor")
  assert devices == 384 and nlu % devices == 0 and nlg % devices == 0
  assert _q("ProgressiveSchedule.steps") == 10000
  cfg = Ernie3Config()
  assert (cfg.memory_len, cfg.remat_policy, cfg.dtype) == (128, "full", "bfloat16")


def test_the_model_and_its_adam_state_are_10b_parameters(recipe):
  cfg = Ernie3Config()
  params = inference.abstract_params(Ernie3(cfg))
  count = sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
  assert 9.5e9 < count < 10.5e9
  tx = optimizer.make_optimizer(optimizer.learning_rate_schedule(total_steps=119210))
  opt_state = jax.eval_shape(tx.init, params)
  moments = sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(opt_state)
                if len(p.shape) > 0)
  assert moments == 2 * count  # Adam's two moments per parameter
