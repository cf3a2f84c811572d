r"""Builds a model from gin, runs both paths on embedded articles, prints a summary.

  python -m ernie3_jax.tools.model_summary --gin_file=gin_configs/models/tiny.gin

Runs the NLU path on one batch and the NLG path over consecutive segments with
recurrence memory; prints parameter counts per module and the untrained model's
next-token loss (about log(vocab) before training). It does not train.
"""

from __future__ import annotations

import math

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ernie3_jax import gin_utils
from ernie3_jax.data import corpus_readers
from ernie3_jax.data.vocabulary import Vocabulary
from ernie3_jax.model import Ernie3, init_memory

_GIN_FILES = flags.DEFINE_multi_string("gin_file", ["gin_configs/models/tiny.gin"],
                                       "Model gin files.")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin", [], "Extra gin bindings NAME=VALUE.")
_SEGMENT_LEN = flags.DEFINE_integer("segment_len", 64, "Tokens per segment.")
_NUM_SEGMENTS = flags.DEFINE_integer("num_segments", 3, "NLG segments to run with memory.")


def main(argv):
  del argv
  cfg = gin_utils.model_config_from_gin(_GIN_FILES.value, _GIN_BINDINGS.value)
  vocab = Vocabulary()
  if vocab.vocab_size > cfg.vocab_size:
    raise ValueError(f"vocabulary has {vocab.vocab_size} pieces but Ernie3Config.vocab_size "
                     f"is {cfg.vocab_size}")
  seg_len, n_seg = _SEGMENT_LEN.value, _NUM_SEGMENTS.value
  docs = corpus_readers.read_documents(corpus_readers.EMBEDDED_CORPUS)
  rows = []
  for doc in docs:
    ids = vocab.encode(doc.text)
    if len(ids) >= seg_len * n_seg + 1:
      rows.append(ids[: seg_len * n_seg + 1])
    if len(rows) == 4:
      break
  tokens = jnp.asarray(np.array(rows, np.int32))
  batch = tokens.shape[0]
  zeros = jnp.zeros((batch, seg_len), jnp.int32)
  task = jnp.zeros((batch,), jnp.int32)
  model = Ernie3(cfg)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), tokens[:, :seg_len], zeros, task,
                                  init_memory(cfg, batch))
  params = nn.unbox(variables["params"])
  print(f"model: universal {cfg.num_layers}x{cfg.d_model}, NLU {cfg.nlu_layers}x"
        f"{cfg.task_d_model}, NLG {cfg.nlg_layers}x{cfg.task_d_model}, memory {cfg.memory_len} "
        f"({cfg.memory_mode})")
  total = 0
  for name, sub in params.items():
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(sub))
    total += count
    print(f"  {name:16s} {count:>12,d} parameters")
  print(f"  {'total':16s} {total:>12,d} parameters")

  nlu = jax.jit(lambda v, t: model.apply(v, t, jnp.zeros_like(t), task,
                                         method=Ernie3.nlu_pretrain))
  out = nlu(variables, tokens[:, :seg_len])
  print("NLU path outputs: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in out.items()))

  @jax.jit
  def nlg_step(v, inputs, targets, memory):
    out, memory = model.apply(v, inputs, jnp.zeros_like(inputs), task, memory,
                              method=Ernie3.nlg_pretrain)
    logp = jax.nn.log_softmax(out["lm_logits"])
    nll = -jnp.take_along_axis(logp, targets[..., None], -1).mean()
    return nll, memory

  memory = init_memory(cfg, batch)
  for s in range(n_seg):
    inputs = tokens[:, s * seg_len:(s + 1) * seg_len]
    targets = tokens[:, s * seg_len + 1:(s + 1) * seg_len + 1]
    nll, memory = nlg_step(variables, inputs, targets, memory)
    filled = int(memory["valid"][0].sum())
    print(f"NLG segment {s}: next-token loss {float(nll):.3f} (untrained; log V = "
          f"{math.log(cfg.vocab_size):.3f}), memory slots filled {filled}/{cfg.memory_len}")


if __name__ == "__main__":
  app.run(main)
