"""Model FLOPs (the MFU numerator) against XLA's own count of the compiled forward pass."""

import jax
import jax.numpy as jnp
import pytest

from ernie3_jax.model import Ernie3, Ernie3Config, init_memory
from ernie3_jax.training import flops

# Wide enough that matmuls dominate XLA's count (it also counts elementwise ops);
# unrolled, because XLA counts a while loop's body once.
CFG = Ernie3Config(vocab_size=512, d_model=128, num_heads=4, head_dim=32, d_ff=512,
                   task_d_model=128, task_num_heads=4, task_head_dim=32, task_d_ff=512,
                   num_layers=2, nlu_layers=1, nlg_layers=1, memory_len=16,
                   scan_layers=False)
BATCH, LENGTH = 4, 32


def _xla_flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


@pytest.fixture(scope="module")
def params():
  model = Ernie3(CFG)
  tokens = jnp.ones((1, 8), jnp.int32)
  return model.init(jax.random.PRNGKey(0), tokens, jnp.zeros_like(tokens),
                    jnp.zeros((1,), jnp.int32), init_memory(CFG, 1, 4))["params"]


def _inputs():
  tokens = jnp.ones((BATCH, LENGTH), jnp.int32)
  return tokens, jnp.zeros_like(tokens), jnp.zeros((BATCH,), jnp.int32)


@pytest.mark.parametrize("slots", [None, 7])
def test_nlu_forward_flops_match_xla(params, slots):
  model = Ernie3(CFG)
  positions = jnp.tile(jnp.arange(slots or LENGTH)[None], (BATCH, 1))

  def forward(p, tokens, segments, tasks):
    h = model.apply({"params": p}, tokens, segments, tasks, method=Ernie3.nlu_encode)
    h = jnp.take_along_axis(h, positions[..., None], axis=1)
    return model.apply({"params": p}, h, method=Ernie3.mlm_logits)

  ours = flops.forward_flops(CFG, BATCH, LENGTH, nlg=False, prediction_slots=slots)
  assert ours <= _xla_flops(forward, params, *_inputs()) <= 1.08 * ours


def test_nlg_forward_flops_with_memory_match_xla(params):
  model = Ernie3(CFG)
  memory = init_memory(CFG, BATCH)

  def forward(p, tokens, segments, tasks):
    return model.apply({"params": p}, tokens, segments, tasks, memory,
                       method=Ernie3.nlg_pretrain)[0]["lm_logits"]

  ours = flops.forward_flops(CFG, BATCH, LENGTH, nlg=True, memory_len=CFG.memory_len)
  # Causal attention computes every (query, key) score; the model count keeps the
  # visible ones only, so XLA's count may exceed it by the masked half.
  assert ours <= _xla_flops(forward, params, *_inputs()) <= 1.2 * ours


def test_train_flops_count_the_prediction_slots():
  every = flops.train_flops(CFG, BATCH, LENGTH, 0, 0)
  slotted = flops.train_flops(CFG, BATCH, LENGTH, 0, 0, mlm_prediction_fraction=0.2)
  head = 3 * 2 * BATCH * (LENGTH - 7) * (CFG.task_d_model * CFG.d_model
                                         + CFG.d_model * CFG.vocab_size)
  assert every - slotted == pytest.approx(head)
