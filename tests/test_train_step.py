"""One training step on the tiny model: the recurrence memory it carries on, dropout that
changes from step to step, task weights in the total loss, and which parameters decay."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ernie3_jax.model import Ernie3, init_memory
from ernie3_jax.training import losses, optimizer
from ernie3_jax.training import train as train_lib
from ernie3_jax.training.train_step import TrainState, make_train_step
from tests import model_testing as mt
from tests import training_testing as tt
from tests.synthetic_input import SyntheticInput

NLU_ROWS, NLG_ROWS, LENGTH, SEGMENT = 8, 4, 16, 8
# One layer per stack (fast to compile); dropout 0.1, memory_len 8 (= SEGMENT).
CFG = mt.config(num_layers=1, nlu_layers=1, nlg_layers=1)
# Weights other than 1 (and 1 for the tasks left out), so a step that ignored them would
# log another total; every test here shares this one compiled step.
WEIGHTS = (("knowledge_masked_lm", 2.0), ("document_lm", 0.5), ("sentence_distance", 0.0))


@functools.lru_cache(maxsize=None)
def _setup():
  model = Ernie3(CFG)
  params = nn.unbox(mt.init_params(CFG)["params"])
  tx = optimizer.make_optimizer(optimizer.learning_rate_schedule(peak=1e-3, warmup_steps=1))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     memory=init_memory(CFG, NLG_ROWS), nonfinite_skipped=jnp.zeros((), jnp.int32))
  return model, tx, state


def _batches(count=0):
  data = SyntheticInput(nlu_batch_size=NLU_ROWS, nlg_batch_size=NLG_ROWS,
                        sequence_length=LENGTH, nlg_segment_length=SEGMENT, seed=0,
                        shard_index=0, num_shards=1, vocab_size=CFG.vocab_size)
  data.count = count
  nlu, nlg = data.next_batch(NLU_ROWS, LENGTH)
  nlg["reset"] = np.zeros_like(nlg["reset"])  # every row continues its memory
  return (jax.tree_util.tree_map(jnp.asarray, nlu), jax.tree_util.tree_map(jnp.asarray, nlg))


@functools.lru_cache(maxsize=None)
def _step():
  model, tx, _ = _setup()
  return jax.jit(make_train_step(model, tx, dict(WEIGHTS)))


@functools.lru_cache(maxsize=None)
def _nlg_forward():
  model, _, _ = _setup()
  return jax.jit(functools.partial(model.apply, method=Ernie3.nlg_pretrain),
                 static_argnums=(6,))


def _memory_after(params, nlg, memory):
  """The memory the model itself returns for `nlg` after `memory` (no dropout)."""
  _, new = _nlg_forward()({"params": params}, nlg["tokens"], nlg["segment_ids"],
                          nlg["task_id"], memory, nlg["reset"], True)
  return new


def _assert_trees_close(a, b, **tol):
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x, np.float32), np.asarray(y, np.float32), **tol), a, b)


# -- the NLG recurrence memory ------------------------------------------------------


def test_an_nlg_step_stores_the_memory_of_its_segment_and_the_next_step_reads_it():
  _, _, state = _setup()
  step = _step()
  nlu, nlg = _batches(0)
  after_one, _ = step(state, nlu, nlg, jnp.float32(0.0), jax.random.PRNGKey(0))
  want = _memory_after(state.params, nlg, state.memory)
  _assert_trees_close(after_one.memory, want, rtol=1e-5, atol=1e-6)
  # The segment filled the (all-invalid) memory: every slot now holds a real state.
  assert bool(np.all(after_one.memory["valid"])) and not bool(np.any(state.memory["valid"]))
  assert float(jnp.abs(after_one.memory["universal"]).max()) > 0.1
  # The second segment continues from the first one's memory, not from the initial one.
  _, nlg2 = _batches(1)
  after_two, _ = step(after_one, nlu, nlg2, jnp.float32(0.0), jax.random.PRNGKey(0))
  want = _memory_after(after_one.params, nlg2, after_one.memory)
  _assert_trees_close(after_two.memory, want, rtol=1e-5, atol=1e-6)
  stale = _memory_after(after_one.params, nlg2, state.memory)
  assert not np.allclose(after_two.memory["nlg"], stale["nlg"], atol=1e-3)


# -- dropout --------------------------------------------------------------------------


def test_dropout_masks_differ_between_steps_and_repeat_for_the_same_step():
  """The trainer passes the same key every step; the step number must change the masks
  (here: the same parameters and batch at step 0 and step 1 give other losses)."""
  _, _, state = _setup()
  step = _step()
  nlu, nlg = _batches(0)
  loss = lambda s, multiplier=1.0: float(step(s, nlu, nlg, jnp.float32(multiplier),
                                              jax.random.PRNGKey(7))[1]["loss"])
  at_1 = state.replace(step=jnp.ones((), jnp.int32))
  at_2 = state.replace(step=jnp.full((), 2, jnp.int32))
  losses_by_step = [loss(state), loss(at_1), loss(at_2)]
  assert len(set(losses_by_step)) == 3, losses_by_step
  assert loss(state) == losses_by_step[0]  # the same step, the same masks
  # Without dropout the step number changes nothing: the differences above are the masks.
  assert loss(state, 0.0) == pytest.approx(loss(at_1, 0.0), rel=1e-6)


# -- task weights ---------------------------------------------------------------------


def test_task_weights_scale_each_task_in_the_total_loss():
  """The step's loss is the weighted sum of the per-task losses it logs (unweighted)."""
  _, _, state = _setup()
  nlu, nlg = _batches(0)
  _, metrics = _step()(state, nlu, nlg, jnp.float32(0.0), jax.random.PRNGKey(0))
  names = [k[:-len("/loss")] for k in metrics if k.endswith("/loss")]
  assert len(names) == 5
  weights = dict(WEIGHTS)
  want = sum(weights.get(n, 1.0) * float(metrics[f"{n}/loss"]) for n in names)
  unweighted = sum(float(metrics[f"{n}/loss"]) for n in names)
  assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)
  assert abs(want - unweighted) > 0.1
  # The same sum as the loss function computes it.
  sums = {f"{n}/loss_sum": jnp.float32(2.0) for n in names}
  denominators = {n: jnp.float32(4.0) for n in names}
  assert float(losses.total_loss(sums, denominators, weights)) == pytest.approx(
      0.5 * (2.0 + 0.5 + 0.0 + 1.0 + 1.0))


class _Built(Exception):
  pass


def test_the_trainer_passes_its_task_weights_to_the_step(tmp_path, monkeypatch):
  """train(task_weights=...) reaches make_train_step (stopped there: nothing compiles)."""
  seen = []

  def spy(model, tx, task_weights, *args, **kwargs):
    seen.append(task_weights)
    raise _Built

  monkeypatch.setattr(train_lib, "make_train_step", spy)
  with pytest.raises(_Built):
    tt.run(tmp_path / "run", 1, checkpoint_every=0, task_weights=dict(WEIGHTS))
  assert seen == [dict(WEIGHTS)]


# -- weight decay ---------------------------------------------------------------------


def _decayed(params):
  """Which parameters one AdamW step with zero gradients changes: only decay moves them."""
  tx = optimizer.make_optimizer(lambda count: jnp.float32(1.0), weight_decay=0.5,
                                clip_norm=None)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  return {jax.tree_util.keystr(p): bool(np.any(np.asarray(u) != 0))
          for p, u in jax.tree_util.tree_flatten_with_path(updates)[0]}


def _ones_like_params(cfg):
  """All-ones parameters of the shapes `cfg` makes (traced, nothing computed)."""
  model = Ernie3(cfg)
  tokens, segments, tasks = mt.random_batch(cfg, 1, 8)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, segments, tasks,
                                             init_memory(cfg, 1)))
  return jax.tree_util.tree_map(lambda s: jnp.ones(s.shape, s.dtype),
                                nn.unbox(shapes["params"]))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_weight_decay_skips_biases_and_layer_norm_parameters(scan_layers):
  """Kernels and embeddings decay; biases (the attention's [heads, head_dim] q/k/v biases
  and its content and position biases too) and LayerNorm scales do not, whatever their
  rank (a scanned stack adds a layer axis to each)."""
  params = _ones_like_params(mt.config(scan_layers=scan_layers))
  decayed = _decayed(params)
  last = lambda name: name.rsplit("['", 1)[-1].rstrip("']")
  kinds = {}
  for name, moved in decayed.items():
    kinds.setdefault(last(name), set()).add(moved)
  assert kinds == {"kernel": {True}, "embedding": {True}, "bias": {False}, "scale": {False},
                   "output_bias": {False}, "content_bias": {False}, "position_bias": {False}}
  # The ranks that made a rule by rank go wrong are among them.
  ranks = {(last(p), np.ndim(x)) for p, x in
           ((jax.tree_util.keystr(k), v)
            for k, v in jax.tree_util.tree_flatten_with_path(params)[0])}
  assert ("bias", 2) in ranks
  if scan_layers:
    assert ("scale", 2) in ranks
