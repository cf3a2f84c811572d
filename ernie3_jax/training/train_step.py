"""The train state and one multi-task training step (jit-compiled with shardings).

A step takes an NLU batch (rows of knowledge-masked LM, UKTP, sentence
reordering and sentence distance mixed by the mixture's rates) and an NLG batch
(parallel document streams), runs each through its path, and applies one AdamW
update. The NLG recurrence memory is part of the state: it carries from step to
step and is reset per row where a stream starts a new document.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import jmp
import optax

from ernie3_jax.model import Ernie3
from ernie3_jax.model.ernie3 import mlm_head_params
from ernie3_jax.training import losses

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  memory: Any  # NLG recurrence memory (see model/recurrence_memory.py), or None
  nonfinite_skipped: jax.Array  # updates skipped because the loss/grads were not finite
  # float16 compute only (see `initial_loss_scale`): {"scale", "good_steps", "overflows"}.
  loss_scale: Any = None


# Dynamic loss scaling (jmp's): the loss is multiplied by `scale` before the backward
# pass so small float16 gradients do not flush to zero; a step whose scaled gradients
# overflow is skipped and halves the scale, and every LOSS_SCALE_PERIOD finite steps
# double it. float32 and bfloat16 (float32's exponent range) need none.
INITIAL_LOSS_SCALE = 2.0**15
LOSS_SCALE_PERIOD = 2000


def initial_loss_scale(compute_dtype: jnp.dtype) -> dict[str, jax.Array] | None:
  """The loss-scale state a run in `compute_dtype` starts with (None: no scaling)."""
  if jnp.dtype(compute_dtype) != jnp.float16:
    return None
  return {"scale": jnp.asarray(INITIAL_LOSS_SCALE, jnp.float32),
          "good_steps": jnp.zeros((), jnp.int32), "overflows": jnp.zeros((), jnp.int32)}


def _split(tree, n: int, axis: int = 0):
  """Splits every array's `axis` into n micro-batches along a new leading axis."""
  def f(a):
    shape = a.shape
    a = a.reshape(shape[:axis] + (n, shape[axis] // n) + shape[axis + 1:])
    return jnp.moveaxis(a, axis, 0)
  return jax.tree_util.tree_map(f, tree)


def _merge(tree, axis: int = 0):
  def f(a):
    a = jnp.moveaxis(a, 0, axis)
    return a.reshape(a.shape[:axis] + (a.shape[axis] * a.shape[axis + 1],) + a.shape[axis + 2:])
  return jax.tree_util.tree_map(f, tree)


def _split_memory(memory, n):
  return {"universal": _split(memory["universal"], n, 1), "nlg": _split(memory["nlg"], n, 1),
          "valid": _split(memory["valid"], n, 0)}


def _merge_memory(memory):
  return {"universal": _merge(memory["universal"], 1), "nlg": _merge(memory["nlg"], 1),
          "valid": _merge(memory["valid"], 0)}


def make_train_step(model: Ernie3, tx: optax.GradientTransformation,
                    task_weights: dict[str, float], num_microbatches: int = 1,
                    skip_nonfinite: bool = True,
                    mlm_prediction_fraction: float | None = 0.2) -> Callable:
  """Returns step(state, nlu, nlg, dropout_multiplier, rng) -> (state, metrics).

  Either batch may be None (a run without NLU or NLG tasks). With
  `num_microbatches` > 1 both batches (and the memory rows) are split and their
  gradients summed before one update; losses are divided by the full batch's
  weight sums, so the update equals the one-batch update. Masked-token logits
  are computed at ceil(`mlm_prediction_fraction` x length) masked positions per
  row (None: at every position); see `losses.masked_lm_sums`.
  """

  def micro_loss(params, nlu, nlg, memory, denominators, dropout_multiplier, rng, scale):
    sums = {}
    r_nlu, r_pool, r_nlg = jax.random.split(rng, 3)
    variables = {"params": params}
    if nlu is not None:
      h = model.apply(variables, nlu["tokens"], nlu["segment_ids"], nlu["task_id"], False,
                      dropout_multiplier, method=Ernie3.nlu_encode, rngs={"dropout": r_nlu})
      out = model.apply(variables, h, False, dropout_multiplier, method=Ernie3.sentence_logits,
                        rngs={"dropout": r_pool})
      sums.update(losses.sentence_loss_sums(out, nlu))
      slots = losses.prediction_slots(h.shape[1], mlm_prediction_fraction)
      sums.update(losses.masked_lm_sums(
          lambda hp, x: model.apply({"params": hp}, x, method=Ernie3.mlm_logits),
          mlm_head_params(model.config, params), h, nlu, slots))
    if nlg is not None:
      out, memory = model.apply({"params": params}, nlg["tokens"], nlg["segment_ids"],
                                nlg["task_id"], memory, nlg["reset"], False,
                                dropout_multiplier, method=Ernie3.nlg_pretrain,
                                rngs={"dropout": r_nlg})
      sums.update(losses.nlg_loss_sums(out, nlg))
    total = losses.total_loss(sums, denominators, task_weights)
    return (total if scale is None else total * scale), (sums, memory)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def step(state: TrainState, nlu: Batch | None, nlg: Batch | None, dropout_multiplier,
           rng) -> tuple[TrainState, dict[str, jax.Array]]:
    rng = jax.random.fold_in(rng, state.step)
    denominators = losses.weight_sums(nlu, nlg)
    memory = state.memory if nlg is not None else None
    scale = None if state.loss_scale is None else state.loss_scale["scale"]
    args = (denominators, dropout_multiplier, rng, scale)
    if num_microbatches == 1:
      (loss, (sums, memory)), grads = grad_fn(state.params, nlu, nlg, memory, *args)
    else:
      loss, sums, memory, grads = _accumulated(grad_fn, num_microbatches, state.params, nlu,
                                               nlg, memory, *args)
    loss_scale = state.loss_scale
    if loss_scale is not None:
      loss, grads = loss / scale, _scaler(loss_scale).unscale(grads)
    grad_norm = optax.global_norm(grads)
    finite = jnp.logical_and(jnp.isfinite(loss), jnp.isfinite(grad_norm))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if loss_scale is not None:
      loss_scale = _next_loss_scale(loss_scale, loss, finite)
    if skip_nonfinite or loss_scale is not None:
      keep = lambda new, old: jax.tree_util.tree_map(
          lambda a, b: jnp.where(finite, a, b), new, old)
      params = keep(params, state.params)
      opt_state = keep(opt_state, state.opt_state)
      if memory is not None:
        memory = keep(memory, state.memory)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        memory=state.memory if nlg is None else memory,
        nonfinite_skipped=state.nonfinite_skipped + jnp.logical_not(finite).astype(jnp.int32),
        loss_scale=loss_scale)
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite}
    if loss_scale is not None:
      metrics["finite"] = jnp.isfinite(loss)
      metrics["loss_scale"] = loss_scale["scale"]
    if "mlm_full_head_batches" in sums:
      metrics["mlm_full_head_batches"] = sums["mlm_full_head_batches"]
    metrics.update(losses.task_metrics(sums, denominators))
    return new_state, metrics

  return step


def _accumulated(grad_fn: Callable, n: int, params: Any, nlu: Batch | None, nlg: Batch | None,
                 memory: Any, denominators: Any, dropout_multiplier: Any, rng: jax.Array,
                 scale: jax.Array | None) -> tuple[jax.Array, Any, Any, Any]:
  """(loss, sums, memory, grads) of `n` micro-batches, summed (a scan: one compiled body)."""
  xs = (None if nlu is None else _split(nlu, n), None if nlg is None else _split(nlg, n),
        None if memory is None else _split_memory(memory, n), jnp.arange(n))

  def body(carry, x):
    grads_acc, loss_acc, sums_acc = carry
    nlu_i, nlg_i, mem_i, i = x
    (l, (s, m)), g = grad_fn(params, nlu_i, nlg_i, mem_i, denominators,
                             dropout_multiplier, jax.random.fold_in(rng, i), scale)
    add = lambda a, b: jax.tree_util.tree_map(jnp.add, a, b)
    return (add(grads_acc, g), loss_acc + l, add(sums_acc, s)), m

  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  sum_shapes = jax.eval_shape(
      lambda: grad_fn(params, *(jax.tree_util.tree_map(lambda a: a[0], xs[:3])),
                      denominators, dropout_multiplier, rng, scale)[0][1][0])
  zero_sums = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), sum_shapes)
  (grads, loss, sums), mems = jax.lax.scan(body, (zeros, jnp.zeros(()), zero_sums), xs)
  return loss, sums, None if memory is None else _merge_memory(mems), grads


def _scaler(loss_scale: dict[str, jax.Array]) -> jmp.DynamicLossScale:
  return jmp.DynamicLossScale(loss_scale["scale"], loss_scale["good_steps"],
                              period=LOSS_SCALE_PERIOD)


def _next_loss_scale(loss_scale: dict[str, jax.Array], loss: jax.Array,
                     finite: jax.Array) -> dict[str, jax.Array]:
  """The loss-scale state after a step whose update is applied iff `finite`."""
  # An overflow of the scaled gradients is expected now and then: the step is skipped
  # (whatever train.on_nonfinite says) and the scale lowered. Only a non-finite loss
  # counts as a failure for on_nonfinite='stop'.
  overflow = jnp.logical_and(jnp.isfinite(loss), jnp.logical_not(finite))
  scaler = _scaler(loss_scale).adjust(finite)
  return {"scale": scaler.loss_scale, "good_steps": scaler.counter,
          "overflows": loss_scale["overflows"] + overflow.astype(jnp.int32)}
