"""AdamW with warm-up then linear decay, gradient clipping (ERNIE 3.0 §3.3 defaults)."""

from __future__ import annotations

import gin
import optax


@gin.configurable
def learning_rate_schedule(peak: float = 1e-4, warmup_steps: int = 10_000,
                           total_steps: int = 1_000_000, initial: float = 0.0,
                           final: float = 0.0) -> optax.Schedule:
  """Linear warm-up from `initial` to `peak`, then linear decay to `final`.

  The warm-up is also the learning-rate part of progressive learning: the rate
  grows smoothly while sequence length, batch size and dropout grow in stages.
  """
  warmup_steps = max(int(warmup_steps), 1)
  decay_steps = max(int(total_steps) - warmup_steps, 1)
  return optax.join_schedules(
      [optax.linear_schedule(initial, peak, warmup_steps),
       optax.linear_schedule(peak, final, decay_steps)], [warmup_steps])


@gin.configurable
def make_optimizer(schedule: optax.Schedule, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, weight_decay: float = 0.01,
                   clip_norm: float | None = 1.0) -> optax.GradientTransformation:
  """AdamW; weight decay skips biases, layer-norm parameters and u/v biases."""

  def decay_mask(params):
    import jax  # pylint: disable=g-import-not-at-top
    def keep(path, leaf):
      keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
      return leaf.ndim >= 2 and keys[-1] not in ("content_bias", "position_bias")
    return jax.tree_util.tree_map_with_path(keep, params)

  chain = []
  if clip_norm:
    chain.append(optax.clip_by_global_norm(clip_norm))
  chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                           mask=decay_mask))
  return optax.chain(*chain)
