"""Pre-training evaluation: each task's loss and accuracy on held-out data.

`evaluate` (`--run_mode=eval`) runs the latest checkpoint's parameters, and
`train.eval_every` runs the training state's, through one `HeldOutEvaluator`:
deterministically (no dropout, no update) over `num_batches` batches of the input's
validation split; the NLG memory carries across those batches as in training.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import gin
import jax

from ernie3_jax.model import Ernie3, Ernie3Config, init_memory
from ernie3_jax.parallel import mesh as mesh_lib
from ernie3_jax.training import checkpointing, losses, optimizer, partitioning


DEFAULT_NLG_BATCH_SIZE = 8  # train.nlg_batch_size's default


def _trained_nlg_batch_size() -> int:
  """The NLG batch the checkpoint's memory was saved with (train's gin binding)."""
  try:
    value = gin.query_parameter("train.nlg_batch_size")
    if isinstance(value, gin.config.ConfigurableReference):  # a macro such as %NLG_BATCH
      value = value.scoped_configurable_fn()
    return int(value)
  except ValueError:
    return DEFAULT_NLG_BATCH_SIZE


def load_latest(model_dir: str, mesh=None):
  """(config, model, TrainState of the latest checkpoint, step, mesh, rules, data state)."""
  import os  # pylint: disable=g-import-not-at-top
  nlg_batch_size = _trained_nlg_batch_size()
  cfg = Ernie3Config()
  model = Ernie3(cfg)
  mesh = mesh or mesh_lib.make_mesh()
  rules = mesh_lib.logical_axis_rules()
  tx = optimizer.make_optimizer(optimizer.learning_rate_schedule())
  ckpt = checkpointing.Checkpointer(os.path.join(model_dir, "checkpoints"), 0, async_save=False)
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}; train first "
                            "(--run_mode=train with the same MODEL_DIR)")
  abstract, shardings = partitioning.state_shardings(model, tx, mesh, rules, nlg_batch_size)
  state, data_state = ckpt.restore(step, abstract, shardings)
  ckpt.close()
  return cfg, model, state, step, mesh, rules, data_state


def load_params(model_dir: str, mesh=None, rules=None):
  """(model, parameters of the latest checkpoint placed on `mesh`, step, mesh, rules).

  For inference: only the parameters are read (no optimizer state), straight onto their
  shardings on `mesh` (default: gin's `make_mesh()`, e.g. `make_mesh.tensor=8`) under
  `rules` (default: gin's `logical_axis_rules()`), so a model too large for one device
  is never gathered on one.
  """
  import os  # pylint: disable=g-import-not-at-top
  from ernie3_jax.parallel import inference  # pylint: disable=g-import-not-at-top
  model = Ernie3(Ernie3Config())
  mesh = mesh or mesh_lib.make_mesh()
  rules = tuple(rules if rules is not None else mesh_lib.logical_axis_rules())
  ckpt = checkpointing.Checkpointer(os.path.join(model_dir, "checkpoints"), 0, async_save=False)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}; train first "
                              "(--run_mode=train with the same MODEL_DIR)")
    shardings = inference.param_shardings(model, mesh, rules)
    params = ckpt.restore_params(step, inference.abstract_params(model), shardings)
  finally:
    ckpt.close()
  return model, params, step, mesh, rules


@gin.configurable(denylist=["model_dir"])
def evaluate(model_dir: str, *, input_builder: Callable = gin.REQUIRED, num_batches: int = 10,
             nlu_batch_size: int = 32, nlg_batch_size: int = 8, sequence_length: int = 128,
             nlg_segment_length: int = 128, seed: int = 0) -> dict[str, float]:
  """Each task's held-out loss and accuracy at the latest checkpoint of `model_dir`."""
  cfg, model, state, step, mesh, rules, _ = load_latest(model_dir)
  evaluator = HeldOutEvaluator(model, cfg, mesh, rules, input_builder, num_batches,
                               nlu_batch_size, nlg_batch_size, sequence_length,
                               nlg_segment_length, seed)
  return {"step": float(step), **evaluator(state.params)}


def configured_evaluator(model: Ernie3, cfg: Ernie3Config, mesh, rules) -> "HeldOutEvaluator":
  """The held-out evaluation that `evaluate` is configured for (gin's evaluate.*), on
  the training run's model and mesh: what `train.eval_every` runs while training."""
  import inspect  # pylint: disable=g-import-not-at-top
  settings = {name: p.default for name, p in inspect.signature(evaluate).parameters.items()
              if p.kind == p.KEYWORD_ONLY}
  settings.update(gin.get_bindings(evaluate))
  if settings["input_builder"] is gin.REQUIRED:
    raise ValueError("train.eval_every is set but evaluate.input_builder is not bound; bind it "
                     "(e.g. evaluate.input_builder = @PretrainInput, as "
                     "gin_configs/runs/pretrain.gin does)")
  return HeldOutEvaluator(model, cfg, mesh, rules, **settings)


class HeldOutEvaluator:
  """Each task's loss and accuracy over the first `num_batches` batches of the input's
  validation split, with parameters given at each call.

  The batches are read once and kept, so the figures of successive calls differ only
  through the parameters. No dropout, no update;
  the NLG memory carries across the batches as in training. The step compiles once.
  Every process reads its share of each global batch; the figures are global.
  """

  def __init__(self, model: Ernie3, cfg: Ernie3Config, mesh, rules,
               input_builder: Callable, num_batches: int, nlu_batch_size: int,
               nlg_batch_size: int, sequence_length: int, nlg_segment_length: int,
               seed: int):
    processes = jax.process_count()
    for name, size in (("nlu_batch_size", nlu_batch_size), ("nlg_batch_size", nlg_batch_size)):
      if size % processes:
        raise ValueError(f"evaluate.{name}={size} does not split over {processes} processes")
    if num_batches < 1:
      raise ValueError(f"evaluate.num_batches={num_batches}; expected at least 1")
    self.cfg, self.mesh, self.rules = cfg, mesh, rules
    self.num_batches, self.nlu_batch_size = num_batches, nlu_batch_size
    self.nlg_batch_size, self.sequence_length = nlg_batch_size, sequence_length
    self._build = lambda: input_builder(
        nlu_batch_size=nlu_batch_size // processes, nlg_batch_size=nlg_batch_size // processes,
        sequence_length=sequence_length, nlg_segment_length=nlg_segment_length, seed=seed,
        shard_index=jax.process_index(), num_shards=processes, split="validation")
    self._step = jax.jit(functools.partial(_eval_sums, model))

    self._batches: list | None = None

  def check_input(self) -> None:
    """Reads the held-out batches now: a run that evaluates while training fails on a
    bad validation split before it trains."""
    self._held_out()

  def _held_out(self) -> list:
    """This process's rows of the `num_batches` held-out batches, read once and kept on
    the host (a few batches), so every evaluation sees exactly the same rows."""
    if self._batches is None:
      data = self._build()
      try:
        self._batches = [data.next_batch(self.nlu_batch_size // jax.process_count(),
                                         self.sequence_length)
                         for _ in range(self.num_batches)]
      finally:
        _close(data)
    return self._batches

  def __call__(self, params) -> dict[str, float]:
    totals: dict[str, float] = {}
    memory = init_memory(self.cfg, self.nlg_batch_size)
    rows = partitioning.batch_sharding(self.mesh, self.rules)
    with self.mesh, nn.logical_axis_rules(self.rules):
      for nlu, nlg in self._held_out():
        sums, weights, memory = self._step(params, partitioning.to_global_batch(nlu, rows),
                                           partitioning.to_global_batch(nlg, rows), memory)
        for k, v in jax.device_get(sums).items():
          totals[k] = totals.get(k, 0.0) + float(v)
        for k, v in jax.device_get(weights).items():
          totals[f"{k}/weight"] = totals.get(f"{k}/weight", 0.0) + float(v)
    metrics = {}
    for key in [k for k in totals if k.endswith("/weight")]:
      name = key.split("/")[0]
      denom = max(totals[key], 1e-8)
      metrics[f"{name}/loss"] = totals[f"{name}/loss_sum"] / denom
      metrics[f"{name}/accuracy"] = totals[f"{name}/correct_sum"] / denom
    return metrics


def _eval_sums(model: Ernie3, params, nlu, nlg, memory):
  """One held-out batch's loss and correct sums per task, their weights, and the memory."""
  sums = {}
  if nlu is not None:
    out = model.apply({"params": params}, nlu["tokens"], nlu["segment_ids"], nlu["task_id"],
                      method=Ernie3.nlu_pretrain)
    sums.update(losses.nlu_loss_sums(out, nlu))
  if nlg is not None:
    out, memory = model.apply({"params": params}, nlg["tokens"], nlg["segment_ids"],
                              nlg["task_id"], memory, nlg["reset"],
                              method=Ernie3.nlg_pretrain)
    sums.update(losses.nlg_loss_sums(out, nlg))
  return sums, losses.weight_sums(nlu, nlg), memory


def _close(data) -> None:
  if hasattr(data, "close"):
    data.close()
