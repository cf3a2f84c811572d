"""Model FLOPs of a training step and the device's peak (for MFU, MaxText's method).

MFU = model FLOPs per step / step time / peak FLOP/s. Model FLOPs count matmuls
only: 2 per multiply-add forward, x3 for forward + backward; attention scores,
position scores and value mixing counted for the keys each query may see.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from ernie3_jax.model.config import Ernie3Config, StackConfig
from ernie3_jax.training import losses

# bf16 dense peaks of common accelerators (FLOP/s), by jax device_kind prefix.
_PEAKS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
          "TPU v6": 918e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12,
          "NVIDIA A100": 312e12, "Tesla V100": 125e12}


def _stack_flops(st: StackConfig, tokens: int, qlen: int, klen: int, causal: bool) -> float:
  inner = st.num_heads * st.head_dim
  dense = 2 * tokens * st.num_layers * (4 * st.d_model * inner + 2 * st.d_model * st.d_ff)
  seen = (klen - qlen + (qlen + 1) / 2) if causal else klen
  attention = 2 * tokens * st.num_layers * inner * (2 * seen + (klen + qlen))
  # W_R projects the klen + qlen encodings once per layer (or per stack), whatever
  # the batch.
  position = 2 * (klen + qlen) * st.d_model * inner * (1 if st.share_position_projection
                                                       else st.num_layers)
  return dense + attention + position


def forward_flops(cfg: Ernie3Config, batch: int, length: int, nlg: bool,
                  memory_len: int = 0, prediction_slots: int | None = None) -> float:
  """Forward FLOPs of one NLU (nlg=False) or NLG batch, heads included.

  `prediction_slots`: positions per row that reach the token head (all by default).
  """
  tokens = batch * length
  klen = length + (memory_len if nlg else 0)
  flops = _stack_flops(cfg.universal_stack(), tokens, length, klen, nlg)
  task = cfg.nlg_stack() if nlg else cfg.nlu_stack()
  flops += _stack_flops(task, tokens, length, klen, nlg)
  flops += 2 * tokens * cfg.d_model * task.d_model  # projection to the task width
  predicted = batch * (length if prediction_slots is None else prediction_slots)
  flops += 2 * predicted * (task.d_model * cfg.d_model + cfg.d_model * cfg.vocab_size)  # head
  return flops


def train_flops(cfg: Ernie3Config, nlu_batch: int, nlu_length: int, nlg_batch: int,
                nlg_length: int, mlm_prediction_fraction: float | None = None) -> float:
  """Forward + backward (x3) FLOPs of one step; masked-token logits at
  `losses.prediction_slots` positions per NLU row."""
  f = 0.0
  if nlu_batch:
    slots = losses.prediction_slots(nlu_length, mlm_prediction_fraction)
    f += forward_flops(cfg, nlu_batch, nlu_length, False, prediction_slots=slots)
  if nlg_batch:
    f += forward_flops(cfg, nlg_batch, nlg_length, True, cfg.memory_len)
  return 3.0 * f


def peak_flops_per_device(dtype=jnp.float32, size: int = 1024) -> tuple[float, str]:
  """(peak FLOP/s, how it was obtained): a table for accelerators, measured on CPU."""
  device = jax.devices()[0]
  for prefix, peak in _PEAKS.items():
    if device.device_kind.startswith(prefix):
      return peak, f"{device.device_kind} datasheet bf16 dense"
  a = jnp.ones((size, size), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  reps, start = 5, time.perf_counter()
  for _ in range(reps):
    out = f(a)
  out.block_until_ready()
  elapsed = (time.perf_counter() - start) / reps
  return 2 * size ** 3 / elapsed, f"measured {size}^3 {jnp.dtype(dtype).name} matmul"


def peak_flops_total() -> tuple[float, str]:
  """Peak FLOP/s of every device in the run. Simulated CPU devices share the host's
  cores, so on CPU the measured host peak counts once per process, not per device."""
  peak, how = peak_flops_per_device()
  if jax.devices()[0].platform == "cpu":
    return peak * jax.process_count(), how + " (whole host)"
  return peak * jax.device_count(), how
