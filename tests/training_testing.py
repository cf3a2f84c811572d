"""Helpers for training tests: a tiny gin config and a train() call."""

from __future__ import annotations

import functools

import jax

from ernie3_jax.config import gin_utils
from ernie3_jax.parallel import mesh as mesh_lib
from ernie3_jax.training import train as train_lib
from tests.synthetic_input import SyntheticInput

TINY_BINDINGS = [
    "Ernie3Config.vocab_size=96", "Ernie3Config.d_model=32", "Ernie3Config.num_heads=4",
    "Ernie3Config.head_dim=8", "Ernie3Config.d_ff=64", "Ernie3Config.task_d_model=32",
    "Ernie3Config.task_num_heads=4", "Ernie3Config.task_head_dim=8", "Ernie3Config.task_d_ff=64",
    "Ernie3Config.memory_len=8", "learning_rate_schedule.peak=3e-3",
    "learning_rate_schedule.warmup_steps=5",
]


def run(model_dir, num_steps, *, devices=1, data=-1, fsdp=1, tensor=1, extra_bindings=(),
        **kwargs):
  gin_utils.parse_gin([], TINY_BINDINGS + list(extra_bindings))
  mesh_fn = functools.partial(mesh_lib.make_mesh, data, fsdp, tensor,
                              devices=jax.devices()[:devices])
  defaults = dict(input_builder=SyntheticInput, nlu_batch_size=8, nlg_batch_size=4,
                  sequence_length=16, nlg_segment_length=8, log_every=5, checkpoint_every=5,
                  async_checkpoints=True, progress_bar=False,
                  # The 5-step warm-up must be shorter than the schedule; runs of up to
                  # 5 steps only warm up, as they did when the schedule was the run.
                  schedule_steps=max(num_steps, 6))
  defaults.update(kwargs)
  return train_lib.train(str(model_dir), num_steps=num_steps, mesh_fn=mesh_fn, **defaults)


def params_of(result):
  return jax.device_get(result.state.params)
