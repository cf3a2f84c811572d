"""How fast the demo's training step consumes examples, per task.

Builds the step of an experiment config (default: the demo's tiny model, its
batch sizes and lengths after progressive learning has finished) on one device,
times it on a synthetic batch of the same shapes, and turns the step time into
examples/s per task: each task's rows per step (NLU rows split by the mixture's
rates, NLG rows are document-LM segments) divided by the step time.
"""

from __future__ import annotations

import os
import statistics
import time

from bench_common import REPO_ROOT

MIXTURE_RATES_TASK = "ernie3_pretrain"


def _import_configurables() -> None:
  """Every module a run config names, before gin parses (and locks) it."""
  # pylint: disable=g-import-not-at-top,unused-import
  from ernie3_jax.runtime import tf_runtime  # noqa: F401
  import ernie3_jax.inference.generation  # noqa: F401
  import ernie3_jax.cli.runs  # noqa: F401
  import ernie3_jax.training.evaluate  # noqa: F401
  import ernie3_jax.training.pretrain_input  # noqa: F401
  import ernie3_jax.training.train  # noqa: F401
  import ernie3_jax.tasks  # noqa: F401


def rows_per_step(nlu_batch: int, nlg_batch: int, rates: dict[str, float]) -> dict[str, float]:
  """Expected rows of each task in one step; NLU rows follow the NLU tasks' rates."""
  nlu_rates = {k: v for k, v in rates.items() if k != "document_lm"}
  total = sum(nlu_rates.values())
  rows = {k: nlu_batch * v / total for k, v in nlu_rates.items()}
  rows["document_lm"] = float(nlg_batch)
  rows[MIXTURE_RATES_TASK] = float(nlu_batch + nlg_batch)
  return rows


def _synthetic_batches(cfg, nlu_batch: int, nlg_batch: int, length: int, segment: int,
                       rates: dict[str, float]):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ernie3_jax.model import task_ids  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  by_name = {v: k for k, v in task_ids.NAMES.items()}
  names = sorted(k for k in rates if k != "document_lm")
  weights = np.array([rates[n] for n in names]) / sum(rates[n] for n in names)
  tid = np.array([by_name[n] for n in rng.choice(names, size=nlu_batch, p=weights)], np.int32)
  tokens = rng.randint(5, cfg.vocab_size, size=(nlu_batch, length)).astype(np.int32)
  masked = (rng.rand(nlu_batch, length) < 0.15) & np.isin(
      tid, [task_ids.KNOWLEDGE_MASKED_LM, task_ids.UKTP])[:, None]
  nlu = {"tokens": tokens, "segment_ids": np.zeros_like(tokens), "task_id": tid,
         "mlm_targets": np.where(masked, tokens, 0).astype(np.int32),
         "mlm_weights": masked.astype(np.float32),
         "label": np.zeros((nlu_batch,), np.int32),
         "label_weight": np.isin(tid, [task_ids.SENTENCE_REORDERING,
                                       task_ids.SENTENCE_DISTANCE]).astype(np.float32)}
  seq = rng.randint(5, cfg.vocab_size, size=(nlg_batch, segment + 1)).astype(np.int32)
  nlg = {"tokens": seq[:, :-1], "targets": seq[:, 1:],
         "loss_weights": np.ones((nlg_batch, segment), np.float32),
         "segment_ids": np.zeros((nlg_batch, segment), np.int32),
         "reset": np.zeros((nlg_batch,), bool),
         "task_id": np.full((nlg_batch,), task_ids.DOCUMENT_LM, np.int32)}
  return nlu, nlg


def measure(gin_file: str, steps: int = 5) -> dict:
  """Median seconds of the experiment's full-size training step and the examples/s
  it consumes per task."""
  _import_configurables()
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ernie3_jax.model import Ernie3, Ernie3Config, init_memory  # pylint: disable=g-import-not-at-top
  from ernie3_jax.training import optimizer  # pylint: disable=g-import-not-at-top
  from ernie3_jax.training.pretrain_input import mixture_rates  # pylint: disable=g-import-not-at-top
  from ernie3_jax.training.train_step import TrainState, make_train_step  # pylint: disable=g-import-not-at-top

  path = gin_file if os.path.isabs(gin_file) else os.path.join(REPO_ROOT, gin_file)
  if not os.path.exists(path):
    raise FileNotFoundError(f"--demo_gin={gin_file}: no such file")
  gin.clear_config()
  gin.parse_config_files_and_bindings([path], ["MODEL_DIR='/tmp/unused'"],
                                      finalize_config=False)
  train = gin.get_bindings("train")
  nlu_batch, nlg_batch = train["nlu_batch_size"], train["nlg_batch_size"]
  length, segment = train["sequence_length"], train["nlg_segment_length"]
  rates = mixture_rates(gin.get_bindings("PretrainInput").get("mixture", MIXTURE_RATES_TASK))
  cfg = Ernie3Config()
  model = Ernie3(cfg)
  tx = optimizer.make_optimizer(optimizer.learning_rate_schedule())
  nlu, nlg = _synthetic_batches(cfg, nlu_batch, nlg_batch, length, segment, rates)
  gin.clear_config()

  @jax.jit
  def init():
    tokens = jnp.ones((1, 8), jnp.int32)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), tokens, jnp.zeros_like(tokens),
                                 jnp.zeros((1,), jnp.int32), init_memory(cfg, 1, 4)))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      memory=init_memory(cfg, nlg_batch),
                      nonfinite_skipped=jnp.zeros((), jnp.int32))

  state = init()
  step = jax.jit(make_train_step(model, tx, {}), donate_argnums=(0,))
  args = (jax.tree_util.tree_map(jnp.asarray, nlu), jax.tree_util.tree_map(jnp.asarray, nlg),
          jnp.float32(1.0), jax.random.PRNGKey(1))
  for _ in range(2):  # compile, then one warm step
    state, metrics = step(state, *args)
    jax.block_until_ready(metrics["loss"])
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, *args)
    jax.block_until_ready(metrics["loss"])
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  rows = rows_per_step(nlu_batch, nlg_batch, rates)
  return {"gin_file": gin_file, "step_s": seconds, "nlu_batch_size": nlu_batch,
          "nlg_batch_size": nlg_batch, "sequence_length": length,
          "nlg_segment_length": segment, "rows_per_step": rows,
          "examples_per_s": {k: v / seconds for k, v in rows.items()}}
