"""Per-task losses and accuracies of one multi-task batch.

NLU batches mix tasks row by row (each row has a `task_id`); every NLU row runs
through every head and a task's loss only counts its own rows: masked-token
cross-entropy where `mlm_weights` > 0 (knowledge-masked LM, UKTP), a pooled
classifier where `label_weight` > 0 (sentence reordering, sentence distance).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ernie3_jax.model import task_ids

Array = jax.Array
_MASKED_LM_TASKS = (task_ids.KNOWLEDGE_MASKED_LM, task_ids.UKTP)


def token_cross_entropy(logits: Array, targets: Array) -> tuple[Array, Array]:
  """[..., V] float logits, [...] int targets -> (nll, correct) both [...] float32."""
  logits = logits.astype(jnp.float32)
  # Rows of other tasks carry labels of other heads (e.g. a reordering class on the
  # distance head); clip them in range so their zero-weighted terms stay finite.
  targets = jnp.clip(targets, 0, logits.shape[-1] - 1)
  logz = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return logz - target_logit, correct


def _sums(name: str, nll: Array, correct: Array, weights: Array) -> dict[str, Array]:
  return {f"{name}/loss_sum": (nll * weights).sum(),
          f"{name}/correct_sum": (correct * weights).sum()}


def _nlu_task_weights(batch: dict[str, Array]) -> dict[str, Array]:
  tid = batch["task_id"]
  weights = {}
  for task in _MASKED_LM_TASKS:
    weights[task_ids.NAMES[task]] = batch["mlm_weights"] * (tid == task)[:, None]
  for task in (task_ids.SENTENCE_REORDERING, task_ids.SENTENCE_DISTANCE):
    weights[task_ids.NAMES[task]] = batch["label_weight"] * (tid == task)
  return weights


def weight_sums(nlu: dict[str, Array] | None, nlg: dict[str, Array] | None) -> dict[str, Array]:
  """Each task's total loss weight in the batch: the denominators of its mean loss.

  They are known before the forward pass, which lets gradient accumulation sum
  micro-batch losses that are already divided by the full-batch denominators.
  """
  sums = {}
  if nlu is not None:
    sums.update({k: v.sum() for k, v in _nlu_task_weights(nlu).items()})
  if nlg is not None:
    sums[task_ids.NAMES[task_ids.DOCUMENT_LM]] = nlg["loss_weights"].sum()
  return sums


def nlu_loss_sums(outputs: dict[str, Array], batch: dict[str, Array]) -> dict[str, Array]:
  """Weighted loss and correct-prediction sums per NLU task, from logits of every
  position (`Ernie3.nlu_pretrain`)."""
  weights = _nlu_task_weights(batch)
  sums = _masked_lm_sums(outputs["mlm_logits"], batch["mlm_targets"], weights)
  sums.update(sentence_loss_sums(outputs, batch))
  return sums


def _masked_lm_sums(logits: Array, targets: Array, weights: dict[str, Array]):
  nll, correct = token_cross_entropy(logits, targets)
  sums = {}
  for task in _MASKED_LM_TASKS:
    name = task_ids.NAMES[task]
    sums.update(_sums(name, nll, correct, weights[name]))
  return sums


def sentence_loss_sums(outputs: dict[str, Array], batch: dict[str, Array]) -> dict[str, Array]:
  """Sums of the pooled classifiers (sentence reordering and distance)."""
  weights = _nlu_task_weights(batch)
  sums = {}
  for task, key in ((task_ids.SENTENCE_REORDERING, "reorder_logits"),
                    (task_ids.SENTENCE_DISTANCE, "distance_logits")):
    name = task_ids.NAMES[task]
    nll, correct = token_cross_entropy(outputs[key], batch["label"])
    sums.update(_sums(name, nll, correct, weights[name]))
  return sums


def prediction_slots(length: int, fraction: float | None) -> int | None:
  """Masked-token positions per row whose logits are computed: ceil(fraction *
  length), or None (every position) when that would not be fewer than `length`."""
  if not fraction:
    return None
  slots = math.ceil(fraction * length - 1e-9)
  return slots if slots < length else None


def masked_lm_sums(logits_fn: Callable[[Any, Array], Array], head_params: Any,
                   hidden: Array, batch: dict[str, Array],
                   slots: int | None) -> dict[str, Array]:
  """Masked-LM (knowledge-masked LM, UKTP) sums with logits only where they count.

  `logits_fn(head_params, h)` maps NLU hidden states to vocabulary logits. That
  projection is the largest matmul of an NLU step, and only ~15% of positions are
  masked. With `slots`, each row's first `slots` masked positions are gathered and
  the logits computed there alone (BERT's max_predictions_per_seq). A batch in
  which some row masks more than `slots` positions takes every position instead,
  decided on the device, so no target is ever dropped; `mlm_full_head_batches`
  counts those batches. `slots=None` always takes every position.

  The choice is a `lax.cond` inside a custom VJP that recomputes the head in the
  backward pass: differentiating the cond directly would keep the residuals of
  both branches, an every-position [B, L, V] buffer of zeros on every step.
  """
  weights = _nlu_task_weights(batch)
  mlm_weights = {task_ids.NAMES[t]: weights[task_ids.NAMES[t]] for t in _MASKED_LM_TASKS}
  targets = batch["mlm_targets"]

  def every_position(hp, h):
    return _masked_lm_sums(logits_fn(hp, h), targets, mlm_weights)

  length = hidden.shape[1]
  if slots is None or slots >= length:
    sums = every_position(head_params, hidden)
    sums["mlm_full_head_batches"] = jnp.ones((), jnp.float32)
    return sums
  masked = batch["mlm_weights"] > 0
  # Masked positions first, each row in its own order; the rest (weight 0) fill up.
  order = jnp.where(masked, length - jnp.arange(length, dtype=jnp.int32), 0)
  _, positions = jax.lax.top_k(order.astype(jnp.float32), slots)
  take = lambda a: jnp.take_along_axis(a, positions, axis=1)
  fits = masked.sum(axis=1).max() <= slots

  def at_slots(hp, h):
    h = jnp.take_along_axis(h, positions[..., None], axis=1)
    return _masked_lm_sums(logits_fn(hp, h), take(targets),
                           {n: take(w) for n, w in mlm_weights.items()})

  @jax.custom_vjp
  def head(hp, h):
    return jax.lax.cond(fits, at_slots, every_position, hp, h)

  def head_fwd(hp, h):
    return head(hp, h), (hp, h)

  def head_bwd(inputs, cotangents):
    def pull(branch):
      return lambda hp, h: jax.vjp(branch, hp, h)[1](cotangents)
    return jax.lax.cond(fits, pull(at_slots), pull(every_position), *inputs)

  head.defvjp(head_fwd, head_bwd)
  sums = head(head_params, hidden)
  sums["mlm_full_head_batches"] = 1.0 - fits.astype(jnp.float32)
  return sums


def nlg_loss_sums(outputs: dict[str, Array], batch: dict[str, Array]) -> dict[str, Array]:
  nll, correct = token_cross_entropy(outputs["lm_logits"], batch["targets"])
  return _sums(task_ids.NAMES[task_ids.DOCUMENT_LM], nll, correct, batch["loss_weights"])


def total_loss(sums: dict[str, Array], denominators: dict[str, Array],
               task_weights: dict[str, float]) -> Array:
  """Σ_task weight * loss_sum / denominator (a task absent from the batch adds 0)."""
  total = jnp.zeros((), jnp.float32)
  for name, denom in denominators.items():
    total = total + task_weights.get(name, 1.0) * sums[f"{name}/loss_sum"] / jnp.maximum(
        denom, 1e-8)
  return total


def task_metrics(sums: dict[str, Array], denominators: dict[str, Array]) -> dict[str, Array]:
  metrics = {}
  for name, denom in denominators.items():
    d = jnp.maximum(denom, 1e-8)
    metrics[f"{name}/loss"] = sums[f"{name}/loss_sum"] / d
    metrics[f"{name}/accuracy"] = sums[f"{name}/correct_sum"] / d
    metrics[f"{name}/weight"] = denom
  return metrics
