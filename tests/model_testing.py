"""Helpers shared by the model tests."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ernie3_jax.model import Ernie3, Ernie3Config

TINY = Ernie3Config(vocab_size=96, num_layers=2, d_model=32, num_heads=4, head_dim=8, d_ff=64,
                    nlu_layers=2, nlg_layers=2, task_d_model=24, task_num_heads=4,
                    task_head_dim=6, task_d_ff=48, memory_len=8, dropout_rate=0.1,
                    attention_dropout_rate=0.1, scan_layers=False)
# Tests run unrolled by default: op-by-op execution caches compiled ops across
# tests, while an eager nn.scan retraces and recompiles on every call.


def config(**overrides) -> Ernie3Config:
  return dataclasses.replace(TINY, **overrides)


def random_batch(cfg: Ernie3Config, batch: int, length: int, seed: int = 0):
  rng = np.random.RandomState(seed)
  tokens = rng.randint(1, cfg.vocab_size, size=(batch, length)).astype(np.int32)
  segments = rng.randint(0, cfg.num_segments, size=(batch, length)).astype(np.int32)
  tasks = rng.randint(0, cfg.num_tasks, size=(batch,)).astype(np.int32)
  return jnp.asarray(tokens), jnp.asarray(segments), jnp.asarray(tasks)


@functools.lru_cache(maxsize=None)
def init_params(cfg: Ernie3Config, batch: int = 2, length: int = 8, seed: int = 0):
  from ernie3_jax.model import init_memory
  tokens, segments, tasks = random_batch(cfg, batch, length)
  variables = Ernie3(cfg).init(jax.random.PRNGKey(seed), tokens, segments, tasks,
                               init_memory(cfg, batch))
  return variables


def unboxed(variables):
  return nn.unbox(variables)


def randomised(params, seed: int = 0, scale: float = 0.3):
  """`params` with independent N(0, scale**2) noise added to every leaf: biases, attention's
  content and position biases and LayerNorm scales included, which start at zero or one and
  so hide any mix-up of them (swapping u and v, say) in a freshly initialised model."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [
      (x + scale * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
      for x, k in zip(leaves, keys)])
