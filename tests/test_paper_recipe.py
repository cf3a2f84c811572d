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


# The paper's train step lowered (not compiled) on its 384-device mesh, simulated on CPU:
# its shardings, batch and 10B state fit together. In a subprocess, because the device
# count is fixed when JAX starts.
_LOWER_SCRIPT = r"""
import time
import jax, jax.numpy as jnp
import flax.linen as nn
from ernie3_jax.config import gin_utils
gin_utils.parse_gin(["gin_configs/experiments/ernie3_10b_paper.gin"], ["MODEL_DIR = '/tmp/unused'"])
import gin
from ernie3_jax.model import Ernie3, Ernie3Config
from ernie3_jax.parallel import mesh as mesh_lib
from ernie3_jax.training import optimizer, partitioning
from ernie3_jax.training.train_step import make_train_step
q = lambda name: gin.query_parameter(name)
steps = q("%NUM_STEPS")
nlu, nlg, length = q("%NLU_BATCH"), q("%NLG_BATCH"), q("%SEQUENCE_LENGTH")
_, schedule = optimizer.run_schedule("train", steps, steps)
tx = optimizer.make_optimizer(schedule)
model = Ernie3(Ernie3Config())
mesh = mesh_lib.make_mesh()
rules = mesh_lib.logical_axis_rules()
abstract, shardings = partitioning.state_shardings(model, tx, mesh, rules, nlg)
rows = partitioning.batch_sharding(mesh, rules)
replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
sds, i32, f32 = jax.ShapeDtypeStruct, jnp.int32, jnp.float32
nlu_batch = {"tokens": sds((nlu, length), i32), "segment_ids": sds((nlu, length), i32),
             "task_id": sds((nlu,), i32), "mlm_targets": sds((nlu, length), i32),
             "mlm_weights": sds((nlu, length), f32), "label": sds((nlu,), i32),
             "label_weight": sds((nlu,), f32)}
nlg_batch = {"tokens": sds((nlg, length), i32), "targets": sds((nlg, length), i32),
             "loss_weights": sds((nlg, length), f32), "segment_ids": sds((nlg, length), i32),
             "reset": sds((nlg,), jnp.bool_), "task_id": sds((nlg,), i32)}
step = make_train_step(model, tx, {}, q("train.num_microbatches"))
jitted = jax.jit(step, in_shardings=(shardings, rows, rows, replicated, replicated),
                 out_shardings=(shardings, replicated), donate_argnums=(0,))
start = time.perf_counter()
with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
  lowered = jitted.lower(abstract, nlu_batch, nlg_batch, sds((), f32),
                         jax.eval_shape(lambda: jax.random.PRNGKey(0)))
text = lowered.as_text()
print("MESH", dict(mesh.shape))
print("SHARDED_ARGS", text.count("sdy.sharding") + text.count("mhlo.sharding"))
print("LOWER_SECONDS", round(time.perf_counter() - start, 1))
"""


@pytest.mark.slow
def test_the_papers_step_lowers_on_its_384_device_mesh():
  import os
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=384")
  proc = subprocess.run([sys.executable, "-c", _LOWER_SCRIPT], cwd=repo, env=env,
                        capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line[:1].isupper())
  assert out["MESH"] == "{'data': 6, 'fsdp': 64, 'tensor': 1}"
  # The state's and the batches' arguments, and the activations, carry shardings.
  assert int(out["SHARDED_ARGS"]) > 100
