r"""NLU-path training step: ERNIE 3.0 (JAX) vs Hugging Face ErnieForMaskedLM (PyTorch).

  python benchmarks/train_throughput.py --sequence_lengths=128,512 --repeats=3

Both sides run one masked-LM training step on the same synthetic batch shape
(knowledge-masked LM rows only, 15% of tokens masked): forward, loss, backward,
global-norm clipping and an AdamW update, fp32 on the CPU, with the same number
of threads. The JAX side is the project's own step (`make_train_step` with an
NLU batch and no NLG batch); its 12 layers are split 10 universal + 2 NLU, the
nearest to the paper's 48 + 12 (4:1). As in training, the JAX side computes
masked-token logits only at the masked positions (up to ceil(0.2 x length) per
row; --mlm_prediction_fraction=0 computes them everywhere, as the PyTorch side
does). Each framework runs in its own process, and repeats alternate between
them so background load hits both alike; the median step is reported, and the
ratio of the fastest repeats beside it.

The JAX layers run unrolled by default (--scan_layers=False): at this depth the
compile is under a minute, and XLA then needs no stacked per-layer residuals
(the scan's stacking and slicing took about 10% of the step here).

MFU = model FLOPs per step / step time / peak. Each framework's peak is the best
fp32 size^3 matmul FLOP/s it reaches in its process, sampled before the first
and after every repeat (the best sample counts); `mfu` divides by the machine's
peak (the higher of the two frameworks'), `mfu_own_peak` by the framework's own.
Prints one JSON line (and appends it to --output).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402  pylint: disable=g-import-not-at-top

_LENGTHS = flags.DEFINE_list("sequence_lengths", ["128", "512"], "Sequence lengths to time.")
_TOKENS = flags.DEFINE_integer("tokens_per_batch", 2048,
                               "Tokens per step; rows = tokens_per_batch // length.")
_UNIVERSAL = flags.DEFINE_integer("universal_layers", 10, "Universal-module layers (JAX).")
_NLU = flags.DEFINE_integer("nlu_layers", 2, "NLU task-module layers (JAX).")
_D_MODEL = flags.DEFINE_integer("d_model", 768, "Width of every layer.")
_HEADS = flags.DEFINE_integer("num_heads", 12, "Attention heads.")
_D_FF = flags.DEFINE_integer("d_ff", 3072, "Feed-forward width.")
_VOCAB = flags.DEFINE_integer("vocab_size", 40000, "Vocabulary size (ERNIE 3.0 base: 40000).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats per framework (alternating).")
_STEPS = flags.DEFINE_integer("steps_per_repeat", 2, "Steps per timed repeat.")
_THREADS = flags.DEFINE_integer("threads", 0, "CPU threads for both frameworks (0: all).")
_SCAN = flags.DEFINE_boolean("scan_layers", False, "JAX: nn.scan over layers "
                             "(False: unrolled layers).")
_MLM_FRACTION = flags.DEFINE_float(
    "mlm_prediction_fraction", 0.2, "JAX: masked-token logits at ceil(f x length) masked "
    "positions per row (the trainer's default); 0 for every position, as the PyTorch side.")
_DROPOUT_RNG = flags.DEFINE_enum("dropout_rng", "hash", ["hash", "threefry"],
                                 "JAX: dropout mask generator (Ernie3Config.dropout_rng).")
_PEAK_SIZE = flags.DEFINE_integer("peak_matmul_size", 2048, "Side of the peak-FLOP/s matmul.")
_PEAK_REPEATS = flags.DEFINE_integer("peak_repeats", 3, "Matmuls per peak sample.")
_SKIP_TORCH = flags.DEFINE_boolean("skip_torch", False, "Time the JAX step only.")
_OUTPUT = flags.DEFINE_string("output", None, "Append the JSON line to this file.")

MASK_RATE = 0.15
MASK_ID = 3  # any id > 0 that is not padding; the value does not change the cost


def synthetic_batch(rows: int, length: int, vocab: int, seed: int = 0) -> dict:
  """Knowledge-masked-LM rows: tokens, masked positions and their targets (numpy)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ernie3_jax.model import task_ids  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(seed)
  tokens = rng.randint(5, vocab, size=(rows, length)).astype(np.int32)
  masked = rng.rand(rows, length) < MASK_RATE
  return {"tokens": np.where(masked, MASK_ID, tokens).astype(np.int32),
          "segment_ids": np.zeros((rows, length), np.int32),
          "task_id": np.full((rows,), task_ids.KNOWLEDGE_MASKED_LM, np.int32),
          "mlm_targets": np.where(masked, tokens, 0).astype(np.int32),
          "mlm_weights": masked.astype(np.float32),
          "label": np.zeros((rows,), np.int32),
          "label_weight": np.zeros((rows,), np.float32)}


def mlm_prediction_fraction() -> float | None:
  """The trainer's `mlm_prediction_fraction` from the flag (0: every position)."""
  return _MLM_FRACTION.value or None


def jax_config(scan_layers: bool):
  from ernie3_jax.model import Ernie3Config  # pylint: disable=g-import-not-at-top
  d, h = _D_MODEL.value, _HEADS.value
  # The NLG stack is not on this path; one layer (the minimum) keeps its unused
  # parameters (zero gradients, still updated by AdamW) small.
  return Ernie3Config(vocab_size=_VOCAB.value, num_layers=_UNIVERSAL.value, d_model=d,
                      num_heads=h, head_dim=d // h, d_ff=_D_FF.value, nlu_layers=_NLU.value,
                      nlg_layers=1, task_d_model=d, task_num_heads=h, task_head_dim=d // h,
                      task_d_ff=_D_FF.value, memory_len=0, dropout_rate=0.1,
                      attention_dropout_rate=0.1, dropout_rng=_DROPOUT_RNG.value,
                      dtype="float32", param_dtype="float32",
                      scan_layers=scan_layers, remat_policy="none")


class JaxStep:
  """The project's jitted NLU train step with its state, stepping in place."""

  def __init__(self, cfg):
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from ernie3_jax.model import Ernie3, init_memory  # pylint: disable=g-import-not-at-top
    from ernie3_jax.training import optimizer  # pylint: disable=g-import-not-at-top
    from ernie3_jax.training.train_step import TrainState, make_train_step  # pylint: disable=g-import-not-at-top
    self.cfg = cfg
    model = Ernie3(cfg)
    tx = optimizer.make_optimizer(optimizer.learning_rate_schedule(peak=1e-4, warmup_steps=10))
    tokens = jnp.ones((1, 8), jnp.int32)

    @jax.jit
    def init():
      params = nn.unbox(model.init(jax.random.PRNGKey(0), tokens, jnp.zeros_like(tokens),
                                   jnp.zeros((1,), jnp.int32), init_memory(cfg, 1, 4)))["params"]
      return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                        memory=None, nonfinite_skipped=jnp.zeros((), jnp.int32))

    self.state = init()
    self.num_params = sum(x.size for x in jax.tree_util.tree_leaves(self.state.params))
    self._step = jax.jit(make_train_step(model, tx, {},
                                         mlm_prediction_fraction=mlm_prediction_fraction()),
                         donate_argnums=(0,))
    self._rng = jax.random.PRNGKey(1)
    self._dropout = jnp.float32(1.0)
    self._jnp = jnp

  def set_batch(self, batch: dict) -> None:
    self.batch = {k: self._jnp.asarray(v) for k, v in batch.items()}

  def run(self) -> float:
    self.state, metrics = self._step(self.state, self.batch, None, self._dropout, self._rng)
    return float(metrics["loss"])  # blocks until the step is done

  def time_steps(self, steps: int) -> float:
    return time_steps(self, steps)

  def peak(self) -> float:
    return bench_common.jax_matmul_peak(_PEAK_SIZE.value, _PEAK_REPEATS.value)

  def info(self) -> dict:
    import jax  # pylint: disable=g-import-not-at-top
    return {"jax_params": int(self.num_params), "jax_version": jax.__version__}


def make_jax_step() -> JaxStep:
  """The JAX side, built in its worker process."""
  return JaxStep(jax_config(_SCAN.value))


class TorchStep:
  """ErnieForMaskedLM of the same depth/width/heads/vocab with AdamW, in train mode."""

  def __init__(self, max_length: int, num_segments: int, num_tasks: int, threads: int):
    import torch  # pylint: disable=g-import-not-at-top
    from transformers import ErnieConfig, ErnieForMaskedLM  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = ErnieConfig(vocab_size=_VOCAB.value, hidden_size=_D_MODEL.value,
                         num_hidden_layers=_UNIVERSAL.value + _NLU.value,
                         num_attention_heads=_HEADS.value, intermediate_size=_D_FF.value,
                         max_position_embeddings=max_length, type_vocab_size=num_segments,
                         use_task_id=True, task_type_vocab_size=num_tasks,
                         hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    self.model = ErnieForMaskedLM(config).train()
    self.attn_implementation = getattr(self.model.config, "_attn_implementation", "eager")
    self.num_params = sum(p.numel() for p in self.model.parameters())
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.999),
                                 eps=1e-8, weight_decay=0.01)
    self._torch = torch

  def set_batch(self, batch: dict) -> None:
    t = self._torch
    labels = t.from_numpy(batch["mlm_targets"]).long()
    self.batch = {"input_ids": t.from_numpy(batch["tokens"]).long(),
                  "token_type_ids": t.from_numpy(batch["segment_ids"]).long(),
                  "task_type_ids": t.zeros_like(labels),
                  "labels": t.where(t.from_numpy(batch["mlm_weights"]) > 0, labels, -100)}

  def run(self) -> float:
    self.opt.zero_grad(set_to_none=True)
    loss = self.model(**self.batch).loss
    loss.backward()
    self._torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
    self.opt.step()
    return loss.item()

  def time_steps(self, steps: int) -> float:
    return time_steps(self, steps)

  def peak(self) -> float:
    return bench_common.torch_matmul_peak(_PEAK_SIZE.value, _PEAK_REPEATS.value)

  def info(self) -> dict:
    import transformers  # pylint: disable=g-import-not-at-top
    return {"torch_params": int(self.num_params), "torch_version": self._torch.__version__,
            "transformers_version": transformers.__version__,
            "torch_attention": self.attn_implementation}


def time_steps(stepper, steps: int) -> float:
  start = time.perf_counter()
  for _ in range(steps):
    loss = stepper.run()
  elapsed = (time.perf_counter() - start) / steps
  if loss != loss:  # NaN: the timing would be of a broken step
    raise RuntimeError(f"{type(stepper).__name__} produced a NaN loss")
  return elapsed


def main(argv):
  del argv
  threads = bench_common.pin_threads(_THREADS.value)
  from ernie3_jax.training import flops  # pylint: disable=g-import-not-at-top
  lengths = [int(x) for x in _LENGTHS.value]
  for length in lengths:
    if _TOKENS.value // length < 1:
      raise ValueError(f"--tokens_per_batch={_TOKENS.value} is smaller than the sequence "
                       f"length {length}")
  if _D_MODEL.value % _HEADS.value:
    raise ValueError(f"--d_model={_D_MODEL.value} is not divisible by --num_heads={_HEADS.value}")

  use_torch, why_not = (False, "--skip_torch") if _SKIP_TORCH.value else \
      bench_common.torch_available()
  cfg = jax_config(_SCAN.value)
  # Each framework runs in its own process (see bench_common.Worker).
  sides = {"jax": bench_common.Worker(make_jax_step, sys.argv)}
  if use_torch:
    sides["torch"] = bench_common.Worker(TorchStep, sys.argv, max(lengths), cfg.num_segments,
                                         cfg.num_tasks, threads)
  peaks = {side: bench_common.PeakMeter(lambda w=worker: w.call("peak"))
           for side, worker in sides.items()}
  for meter in peaks.values():
    meter.sample()

  results = []
  for length in lengths:
    rows = _TOKENS.value // length
    batch = synthetic_batch(rows, length, _VOCAB.value)
    for worker in sides.values():
      worker.call("set_batch", batch)
    start = time.perf_counter()
    sides["jax"].call("run")  # compiles
    compile_s = time.perf_counter() - start
    for worker in sides.values():
      worker.call("run")  # warm-up (allocations, optimizer state)
    times = {side: [] for side in sides}
    for _ in range(_REPEATS.value):  # alternate so load changes hit both
      for side, worker in sides.items():
        times[side].append(worker.call("time_steps", _STEPS.value))
        peaks[side].sample()
    jax_times, torch_times = times["jax"], times.get("torch")
    tokens = rows * length
    jax_s = statistics.median(jax_times)
    entry = {"sequence_length": length, "rows": rows, "tokens_per_step": tokens,
             "jax": {"step_s": jax_s, "tokens_per_s": tokens / jax_s,
                     "model_flops_per_step": flops.train_flops(
                         cfg, rows, length, 0, 0, mlm_prediction_fraction()),
                     "compile_and_first_step_s": compile_s,
                     "step_s_all": jax_times}}
    entry["jax"]["model_flops_per_s"] = entry["jax"]["model_flops_per_step"] / jax_s
    if torch_times:
      torch_s = statistics.median(torch_times)
      f = bench_common.bert_train_flops(_UNIVERSAL.value + _NLU.value, _D_MODEL.value,
                                        _D_FF.value, _VOCAB.value, rows, length)
      entry["torch"] = {"step_s": torch_s, "tokens_per_s": tokens / torch_s,
                        "model_flops_per_step": f, "model_flops_per_s": f / torch_s,
                        "step_s_all": torch_times}
      entry["jax_over_torch_tokens_per_s"] = torch_s / jax_s
      # Background load only ever slows a repeat down: the ratio of the fastest
      # repeats is the less noisy estimate of the two frameworks' own speeds.
      entry["jax_over_torch_fastest_repeats"] = min(torch_times) / min(jax_times)
    results.append(entry)

  machine_peak = max(meter.best for meter in peaks.values())
  for entry in results:
    for side in ("jax", "torch"):
      if side in entry:
        entry[side]["mfu"] = entry[side]["model_flops_per_s"] / machine_peak
        entry[side]["mfu_own_peak"] = entry[side]["model_flops_per_s"] / peaks[side].best

  settings = {"universal_layers": _UNIVERSAL.value, "nlu_layers": _NLU.value,
              "torch_layers": _UNIVERSAL.value + _NLU.value, "d_model": _D_MODEL.value,
              "num_heads": _HEADS.value, "d_ff": _D_FF.value, "vocab_size": _VOCAB.value,
              "tokens_per_batch": _TOKENS.value, "repeats": _REPEATS.value,
              "steps_per_repeat": _STEPS.value, "threads": threads, "dtype": "float32",
              "jax_scan_layers": _SCAN.value,
              "jax_mlm_prediction_fraction": mlm_prediction_fraction(),
              "jax_dropout_rng": _DROPOUT_RNG.value, "peak_matmul_size": _PEAK_SIZE.value,
              "peak_repeats": _PEAK_REPEATS.value, "process_per_framework": True,
              "machine": bench_common.machine()}
  settings.update(bench_common.host_memory_settings())
  for worker in sides.values():
    settings.update(worker.call("info"))
    worker.close()
  if "torch" not in sides:
    settings["torch_skipped"] = why_not
  bench_common.emit({"benchmark": "train_throughput", "unit": "tokens/s",
                     "settings": settings,
                     "peak_flops_per_s": {side: m.best for side, m in peaks.items()},
                     "machine_peak_flops_per_s": machine_peak,
                     "peak_samples": {side: m.samples for side, m in peaks.items()},
                     "results": results},
                    _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
