"""Greedy text generation through the NLG path with recurrence memory.

Generation follows the training layout exactly: text is cut into segments of
`segment_length`; finished segments live in the recurrence memory, and the
current, growing segment is re-run each step with that memory. (Re-running the
open segment keeps the same-layer memory semantics of training; a per-layer
key/value cache for the open segment is the faster equivalent.)
"""

from __future__ import annotations

from typing import Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from ernie3_jax.model import Ernie3, init_memory
from ernie3_jax.training import task_ids


def greedy_generate(model: Ernie3, params, prompt_ids: Sequence[int], max_new_tokens: int,
                    segment_length: int, stop_ids: Sequence[int] = (1,)) -> list[int]:
  """Returns the generated ids (prompt excluded), stopping at a stop id."""
  cfg = model.config
  task = jnp.full((1,), task_ids.DOCUMENT_LM, jnp.int32)

  @jax.jit
  def commit(memory, segment):
    _, memory = model.apply({"params": params}, segment, jnp.zeros_like(segment), task, memory,
                            method=Ernie3.nlg_decode)
    return memory

  @jax.jit
  def next_logits(memory, segment, position):
    out, _ = model.apply({"params": params}, segment, jnp.zeros_like(segment), task, memory,
                         method=Ernie3.nlg_pretrain)
    return out["lm_logits"][0, position]

  memory = init_memory(cfg, 1)
  ids = list(prompt_ids)
  if not ids:
    raise ValueError("generation needs a non-empty prompt")
  while len(ids) > segment_length:  # full prompt segments go to memory
    memory = commit(memory, jnp.asarray([ids[:segment_length]], jnp.int32))
    ids = ids[segment_length:]
  generated = []
  for _ in range(max_new_tokens):
    padded = np.zeros((1, segment_length), np.int32)
    padded[0, :len(ids)] = ids
    logits = np.asarray(next_logits(memory, jnp.asarray(padded), len(ids) - 1))
    token = int(np.argmax(logits[: cfg.vocab_size]))
    generated.append(token)
    if token in stop_ids:
      break
    ids.append(token)
    if len(ids) == segment_length + 1:
      memory = commit(memory, jnp.asarray([ids[:segment_length]], jnp.int32))
      ids = ids[segment_length:]
  return generated


@gin.configurable(denylist=["model_dir", "prompts", "max_new_tokens"])
def generate_from_checkpoint(model_dir: str, prompts: list[str], max_new_tokens: int,
                             segment_length: int = 128) -> list[str]:
  """Decodes greedy continuations of `prompts` with the latest checkpoint."""
  from ernie3_jax.data.vocabulary import Vocabulary  # pylint: disable=g-import-not-at-top
  from ernie3_jax.training.evaluate import load_latest  # pylint: disable=g-import-not-at-top
  _, model, state, _, _, _, _ = load_latest(model_dir)
  params = jax.device_get(state.params)
  vocab = Vocabulary()
  outputs = []
  for prompt in prompts:
    ids = greedy_generate(model, params, vocab.encode(prompt), max_new_tokens, segment_length)
    outputs.append(vocab.decode(ids))
  return outputs
