"""Progressive learning (ERNIE 3.0 §3.3): grow length, batch, dropout together.

Over the first `steps` steps the NLU sequence length and batch size rise in a few
stages (each stage is one compiled program, so few stages bound recompiles),
while the dropout rate rises smoothly (it is a traced input of the step). The
learning rate's part is the optimizer's warm-up, which starts at
`learning_rate_schedule.initial`.
"""

from __future__ import annotations

import dataclasses

import gin


def _round_down(value: float, multiple: int) -> int:
  return max(multiple, int(value) // multiple * multiple)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ProgressiveSchedule:
  steps: int = 0  # 0 disables progressive learning
  num_stages: int = 4
  start_length: int = 32
  start_batch_size: int = 8
  start_dropout: float = 0.0  # fraction of the configured dropout rate at step 0

  def settings(self, step: int, full_length: int, full_batch: int, length_multiple: int = 8,
               batch_multiple: int = 1) -> tuple[int, int, float]:
    """(sequence length, batch size, dropout multiplier) in force at `step`."""
    if self.steps <= 0 or step >= self.steps:
      return full_length, full_batch, 1.0
    stage = min(step * self.num_stages // self.steps, self.num_stages - 1)
    frac = stage / self.num_stages
    length = _round_down(self.start_length + (full_length - self.start_length) * frac,
                         length_multiple)
    batch = _round_down(self.start_batch_size + (full_batch - self.start_batch_size) * frac,
                        batch_multiple)
    dropout = self.start_dropout + (1.0 - self.start_dropout) * step / self.steps
    return min(length, full_length), min(batch, full_batch), dropout
