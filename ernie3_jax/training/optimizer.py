"""AdamW with warm-up then linear decay, gradient clipping (ERNIE 3.0 §3.3 defaults)."""

from __future__ import annotations

import gin
import optax


class ScheduleError(ValueError):
  """A learning-rate schedule that would not do what a run needs (found before step 0)."""


@gin.configurable(denylist=["total_steps"])
def learning_rate_schedule(peak: float = 1e-4, warmup_steps: int = 10_000,
                           total_steps: int = 1_000_000, initial: float = 0.0,
                           final: float = 0.0) -> optax.Schedule:
  """Linear warm-up from `initial` to `peak`, then linear decay to `final`.

  The warm-up is also the learning-rate part of progressive learning: the rate
  grows smoothly while sequence length, batch size and dropout grow in stages.
  `total_steps` is set by the run (`run_schedule`), not by gin, so a run and its
  schedule cannot disagree silently.
  """
  for name, value in (("peak", peak), ("initial", initial), ("final", final),
                      ("warmup_steps", warmup_steps)):
    if value < 0:
      raise ScheduleError(f"learning_rate_schedule.{name}={value} is negative")
  if int(warmup_steps) >= int(total_steps):
    raise ScheduleError(
        f"learning_rate_schedule.warmup_steps={warmup_steps} is not shorter than the "
        f"schedule's {total_steps} steps: the rate would never reach "
        f"learning_rate_schedule.peak={peak} and never decay")
  warmup_steps = max(int(warmup_steps), 1)
  decay_steps = max(int(total_steps) - warmup_steps, 1)
  return optax.join_schedules(
      [optax.linear_schedule(initial, peak, warmup_steps),
       optax.linear_schedule(peak, final, decay_steps)], [warmup_steps])


def run_schedule(owner: str, num_steps: int,
                 schedule_steps: int | None) -> tuple[int, optax.Schedule]:
  """(length, schedule) of the learning rate of a run that stops at `num_steps`.

  `schedule_steps` (default: `num_steps`) is the schedule's length. A run may stop
  before the schedule ends (a smoke test, or a long run in several jobs) but not
  after it: those steps would train at `learning_rate_schedule.final`. `owner` is
  the gin name of the run function ("train", "finetune"), named in the errors.
  """
  length = num_steps if schedule_steps is None else int(schedule_steps)
  source = (f"{owner}.num_steps={num_steps}" if schedule_steps is None
            else f"{owner}.schedule_steps={schedule_steps}")
  if num_steps == 0:  # nothing trains (the run saves its initial state)
    return length, learning_rate_schedule()
  if num_steps > length:
    raise ScheduleError(
        f"{owner}.num_steps={num_steps} runs past the end of its learning-rate schedule "
        f"({source}): its last {num_steps - length} steps would train at "
        f"learning_rate_schedule.final. Lengthen {owner}.schedule_steps (the run files' "
        "NUM_STEPS macro sets both).")
  try:
    return length, learning_rate_schedule(total_steps=length)
  except ScheduleError as e:
    # The first line is ours; gin appends the call chain below it.
    reason = str(e).split("\n", 1)[0]
    raise ScheduleError(f"{reason} (the schedule's length is {source})") from None


@gin.configurable
def make_optimizer(schedule: optax.Schedule, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, weight_decay: float = 0.01,
                   clip_norm: float | None = 1.0) -> optax.GradientTransformation:
  """AdamW; weight decay skips biases, layer-norm parameters and u/v biases.

  The mask goes by name, not rank: the attention's q/k/v biases are [heads, head_dim]
  and a scanned stack adds a layer axis to every bias and LayerNorm scale."""

  def decay_mask(params):
    import jax  # pylint: disable=g-import-not-at-top
    def keep(path, leaf):
      del leaf
      keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
      return not (keys[-1] == "scale" or keys[-1] == "bias" or keys[-1].endswith("_bias"))
    return jax.tree_util.tree_map_with_path(keep, params)

  chain = []
  if clip_norm:
    chain.append(optax.clip_by_global_norm(clip_norm))
  chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                           mask=decay_mask))
  return optax.chain(*chain)
