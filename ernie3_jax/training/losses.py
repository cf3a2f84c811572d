"""Per-task losses and accuracies of one multi-task batch.

NLU batches mix tasks row by row (each row has a `task_id`); every NLU row runs
through every head and a task's loss only counts its own rows: masked-token
cross-entropy where `mlm_weights` > 0 (knowledge-masked LM, UKTP), a pooled
classifier where `label_weight` > 0 (sentence reordering, sentence distance).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ernie3_jax.training import task_ids

Array = jax.Array


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
  for task in (task_ids.KNOWLEDGE_MASKED_LM, task_ids.UKTP):
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
  """Weighted loss and correct-prediction sums per NLU task."""
  weights = _nlu_task_weights(batch)
  sums = {}
  nll, correct = token_cross_entropy(outputs["mlm_logits"], batch["mlm_targets"])
  for task in (task_ids.KNOWLEDGE_MASKED_LM, task_ids.UKTP):
    name = task_ids.NAMES[task]
    sums.update(_sums(name, nll, correct, weights[name]))
  for task, key in ((task_ids.SENTENCE_REORDERING, "reorder_logits"),
                    (task_ids.SENTENCE_DISTANCE, "distance_logits")):
    name = task_ids.NAMES[task]
    nll, correct = token_cross_entropy(outputs[key], batch["label"])
    sums.update(_sums(name, nll, correct, weights[name]))
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
