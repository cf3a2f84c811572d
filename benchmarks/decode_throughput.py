r"""Greedy decoding tokens/s: the NLG path (JAX) vs GPT2LMHeadModel.generate (PyTorch).

  python benchmarks/decode_throughput.py --batch_sizes=1,8 --prompt_length=64 \
      --new_tokens=128

Both sides decode greedily from random prompts, on the CPU, fp32, with the same
threads, the same total depth (10 universal + 2 NLG layers vs 12 GPT-2 layers),
width, heads and vocabulary, for exactly --new_tokens tokens (no stop token).
JAX decodes with `ernie3_jax.inference.generation.generate` (key/value cache, segments of
--segment_length and the recurrence memory as in training, prefill and token
loop compiled as one call); --jax_path=rerun instead re-runs the open segment
every token, batched (no key/value cache); the JSON says which ran. GPT-2
runs `generate(use_cache=True, do_sample=False)`. Tokens/s counts generated
tokens (batch x new tokens) over the whole call, prompt processing included.
Each framework runs in its own process; repeats alternate between them, the median is reported, and the ratio of
the fastest repeats beside it.

Each decoding step reads every weight it uses once, so the memory time per step
is weight bytes per step / read bandwidth, the bandwidth being the best of a
jitted sum over a 1 GiB array; the compute time is the step's FLOPs (2 per weight
per row, plus attention over the keys it scores) / the matmul peak, the best of a
jitted fp32 matmul (--peak_matmul_size). Both are sampled before the first and
after every repeat, in the JAX worker. The roofline of a step is the larger of
the two: `roofline_fraction` is roofline time / step time (1.0 is the bound),
`bound` says which one it is, and `bandwidth_fraction` is the memory time's
fraction alone (the two agree while memory bounds the step).
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

_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to time.")
_PROMPT = flags.DEFINE_integer("prompt_length", 64, "Prompt tokens per row.")
_NEW = flags.DEFINE_integer("new_tokens", 128, "Tokens generated per row.")
_SEGMENT = flags.DEFINE_integer("segment_length", 128, "JAX: NLG segment length.")
_MEMORY = flags.DEFINE_integer("memory_len", 128, "JAX: recurrence memory length.")
_UNIVERSAL = flags.DEFINE_integer("universal_layers", 10, "Universal-module layers (JAX).")
_NLG = flags.DEFINE_integer("nlg_layers", 2, "NLG task-module layers (JAX).")
_D_MODEL = flags.DEFINE_integer("d_model", 768, "Width of every layer.")
_HEADS = flags.DEFINE_integer("num_heads", 12, "Attention heads.")
_D_FF = flags.DEFINE_integer("d_ff", 3072, "Feed-forward width.")
_VOCAB = flags.DEFINE_integer("vocab_size", 40000, "Vocabulary size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats per framework (alternating).")
_THREADS = flags.DEFINE_integer("threads", 0, "CPU threads for both frameworks (0: all).")
_PATH = flags.DEFINE_enum("jax_path", "cached", ["cached", "rerun"],
                          "JAX decoding: key/value cache, or a re-run of the open segment "
                          "every token.")
_SKIP_TORCH = flags.DEFINE_boolean("skip_torch", False, "Time JAX only.")
_OUTPUT = flags.DEFINE_string("output", None, "Append the JSON line to this file.")
_PEAK_SIZE = flags.DEFINE_integer("peak_matmul_size", 2048, "Side of the peak-FLOP/s matmul.")


def jax_config():
  from ernie3_jax.model import Ernie3Config  # pylint: disable=g-import-not-at-top
  d, h = _D_MODEL.value, _HEADS.value
  return Ernie3Config(vocab_size=_VOCAB.value, num_layers=_UNIVERSAL.value, d_model=d,
                      num_heads=h, head_dim=d // h, d_ff=_D_FF.value, nlu_layers=1,
                      nlg_layers=_NLG.value, task_d_model=d, task_num_heads=h,
                      task_head_dim=d // h, task_d_ff=_D_FF.value, memory_len=_MEMORY.value,
                      dtype="float32", param_dtype="float32", scan_layers=True)


def init_params(cfg):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ernie3_jax.model import Ernie3, init_memory  # pylint: disable=g-import-not-at-top
  tokens = jnp.ones((1, 8), jnp.int32)
  init = lambda: Ernie3(cfg).init(jax.random.PRNGKey(0), tokens, jnp.zeros_like(tokens),
                                  jnp.zeros((1,), jnp.int32), init_memory(cfg, 1, 4))
  return nn.unbox(jax.jit(init)())["params"]


class JaxDecoder:
  """The JAX side, built in its worker process (see bench_common.Worker)."""

  def __init__(self):
    from ernie3_jax.model import Ernie3  # pylint: disable=g-import-not-at-top
    cfg = jax_config()
    self.params = init_params(cfg)
    generator = CachedGreedy if _PATH.value == "cached" else RerunGreedy
    self.generator = generator(Ernie3(cfg), self.params, _SEGMENT.value)

  def timed(self, prompts, new_tokens: int) -> float:
    return timed_generate(self.generator, prompts, new_tokens)

  def weight_bytes_per_step(self) -> int:
    return bench_common.jax_weight_bytes_per_step(self.params)

  def flops_per_step(self, batch: int) -> float:
    """Matmul FLOPs of one token step: every weight once per row, and one query per
    layer against all M + S cached keys (content, value mix) and P = M + S encoded
    distances (the position term), as the cached step computes them."""
    cfg, s = jax_config(), _SEGMENT.value
    weights = bench_common.jax_weight_bytes_per_step(self.params) / 4
    keys = cfg.memory_len + s
    attention = (cfg.num_layers + cfg.nlg_layers) * cfg.num_heads * cfg.head_dim * 2 * 3 * keys
    return float(batch * (2 * weights + attention))

  def read_bandwidth(self) -> float:
    return bench_common.jax_read_bandwidth()

  def matmul_peak(self) -> float:
    return bench_common.jax_matmul_peak(_PEAK_SIZE.value, 3)

  def info(self) -> dict:
    import jax  # pylint: disable=g-import-not-at-top
    return {"jax_version": jax.__version__}


class CachedGreedy:
  """`generation.generate`: key/value-cached greedy decoding, one compiled call
  (prefill + token loop) per batch, no stop token."""

  name = "cached"

  def __init__(self, model, params, segment_length: int):
    from ernie3_jax.inference import generation  # pylint: disable=g-import-not-at-top
    self._generation = generation
    self.model, self.params, self.segment_length = model, params, segment_length
    self.options = generation.DecodeOptions("greedy", stop_ids=())

  def generate(self, prompts, new_tokens: int):
    """prompts: int32 numpy [B, P]; returns generated ids [B, N]."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    out = self._generation.generate(self.model, self.params, prompts.tolist(), new_tokens,
                                    self.segment_length, self.options)
    return np.asarray(out.tokens)


class RerunGreedy:
  """Greedy decoding that re-runs the open segment every token (no key/value
  cache), batched: finished segments go to the recurrence memory."""

  name = "rerun"

  def __init__(self, model, params, segment_length: int):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from ernie3_jax.model import Ernie3, init_memory  # pylint: disable=g-import-not-at-top
    from ernie3_jax.model import task_ids  # pylint: disable=g-import-not-at-top
    self.s = segment_length
    self.cfg = model.config
    self._init_memory = init_memory
    task = lambda b: jnp.full((b,), task_ids.DOCUMENT_LM, jnp.int32)

    @jax.jit
    def commit(memory, segment):
      _, memory = model.apply({"params": params}, segment, jnp.zeros_like(segment),
                              task(segment.shape[0]), memory, method=Ernie3.nlg_decode)
      return memory

    @jax.jit
    def next_token(memory, segment, position):
      out, _ = model.apply({"params": params}, segment, jnp.zeros_like(segment),
                           task(segment.shape[0]), memory, method=Ernie3.nlg_pretrain)
      return jnp.argmax(out["lm_logits"][:, position], axis=-1).astype(jnp.int32)

    self._commit, self._next = commit, next_token

  def generate(self, prompts, new_tokens: int):
    import numpy as np  # pylint: disable=g-import-not-at-top
    b = prompts.shape[0]
    memory = self._init_memory(self.cfg, b)
    ids = prompts
    while ids.shape[1] > self.s:
      memory = self._commit(memory, ids[:, :self.s])
      ids = ids[:, self.s:]
    generated = []
    for _ in range(new_tokens):
      segment = np.zeros((b, self.s), np.int32)
      segment[:, :ids.shape[1]] = ids
      token = np.asarray(self._next(memory, segment, ids.shape[1] - 1))
      generated.append(token)
      ids = np.concatenate([ids, token[:, None]], axis=1)
      if ids.shape[1] == self.s + 1:
        memory = self._commit(memory, ids[:, :self.s])
        ids = ids[:, self.s:]
    return np.stack(generated, axis=1)


class Gpt2Greedy:
  name = "gpt2_generate"

  def __init__(self, positions: int, threads: int):
    import torch  # pylint: disable=g-import-not-at-top
    from transformers import GPT2Config, GPT2LMHeadModel  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=_VOCAB.value, n_positions=positions, n_embd=_D_MODEL.value,
                        n_layer=_UNIVERSAL.value + _NLG.value, n_head=_HEADS.value,
                        n_inner=_D_FF.value, bos_token_id=None, eos_token_id=None)
    self.model = GPT2LMHeadModel(config).eval()
    self.model.generation_config.eos_token_id = None
    self.model.generation_config.pad_token_id = 0
    self.num_params = sum(p.numel() for p in self.model.parameters())
    # A step reads every weight but the position table, of which it reads B rows.
    self._weight_bytes = sum(p.numel() * p.element_size()
                             for n, p in self.model.named_parameters()
                             if not n.endswith("wpe.weight"))
    self._torch = torch

  def timed(self, prompts, new_tokens: int) -> float:
    return timed_generate(self, prompts, new_tokens)

  def weight_bytes_per_step(self) -> int:
    return self._weight_bytes

  def flops_per_step(self, batch: int) -> float:
    """Matmul FLOPs of a mean token step: every weight once per row, attention over
    the mean cached context (prompt + half the new tokens)."""
    context = _PROMPT.value + _NEW.value / 2
    layers = _UNIVERSAL.value + _NLG.value
    return float(batch * (2 * self._weight_bytes / 4 + layers * _D_MODEL.value * 2 * 2 * context))

  def info(self) -> dict:
    import transformers  # pylint: disable=g-import-not-at-top
    return {"torch_version": self._torch.__version__,
            "transformers_version": transformers.__version__,
            "gpt2_params": int(self.num_params)}

  def generate(self, prompts, new_tokens: int):
    t = self._torch
    ids = t.from_numpy(prompts).long()
    with t.inference_mode():
      out = self.model.generate(ids, attention_mask=t.ones_like(ids), max_new_tokens=new_tokens,
                                do_sample=False, use_cache=True)
    return out[:, prompts.shape[1]:].numpy()


def timed_generate(generator, prompts, new_tokens: int) -> float:
  start = time.perf_counter()
  out = generator.generate(prompts, new_tokens)
  seconds = time.perf_counter() - start
  if out.shape != (prompts.shape[0], new_tokens):
    raise RuntimeError(f"{generator.name} returned {out.shape}, expected "
                       f"{(prompts.shape[0], new_tokens)}")
  return seconds


def main(argv):
  del argv
  threads = bench_common.pin_threads(_THREADS.value)
  import numpy as np  # pylint: disable=g-import-not-at-top
  if _NEW.value < 1 or _PROMPT.value < 1:
    raise ValueError("--new_tokens and --prompt_length must be >= 1")
  path = _PATH.value
  use_torch, why_not = (False, "--skip_torch") if _SKIP_TORCH.value else \
      bench_common.torch_available()
  # Each framework runs in its own process (see bench_common.Worker).
  sides = {"jax": bench_common.Worker(JaxDecoder, sys.argv)}
  if use_torch:
    sides["torch"] = bench_common.Worker(Gpt2Greedy, sys.argv,
                                         max(1024, _PROMPT.value + _NEW.value), threads)
  bandwidth = bench_common.PeakMeter(lambda: sides["jax"].call("read_bandwidth"))
  peak = bench_common.PeakMeter(lambda: sides["jax"].call("matmul_peak"))
  bandwidth.sample()
  peak.sample()
  weight_bytes = {side: w.call("weight_bytes_per_step") for side, w in sides.items()}
  results = []
  rng = np.random.RandomState(0)
  for batch in (int(b) for b in _BATCHES.value):
    prompts = rng.randint(5, _VOCAB.value, size=(batch, _PROMPT.value)).astype(np.int32)
    first_s = sides["jax"].call("timed", prompts, _NEW.value)  # compiles
    if "torch" in sides:
      sides["torch"].call("timed", prompts, _NEW.value)  # warm-up
    times = {side: [] for side in sides}
    for _ in range(_REPEATS.value):
      for side, worker in sides.items():
        times[side].append(worker.call("timed", prompts, _NEW.value))
      bandwidth.sample()
      peak.sample()
    jax_times, torch_times = times["jax"], times.get("torch")
    tokens = batch * _NEW.value
    jax_s = statistics.median(jax_times)
    entry = {"batch_size": batch, "generated_tokens": tokens,
             "jax": {"seconds": jax_s, "tokens_per_s": tokens / jax_s,
                     "ms_per_step": 1e3 * jax_s / _NEW.value,
                     "compile_and_first_call_s": first_s, "seconds_all": jax_times}}
    if torch_times:
      torch_s = statistics.median(torch_times)
      entry["torch"] = {"seconds": torch_s, "tokens_per_s": tokens / torch_s,
                        "ms_per_step": 1e3 * torch_s / _NEW.value, "seconds_all": torch_times}
      entry["jax_over_torch_tokens_per_s"] = torch_s / jax_s
      # Background load only ever slows a repeat down: the ratio of the fastest
      # repeats is the less noisy estimate of the two frameworks' own speeds.
      entry["jax_over_torch_fastest_repeats"] = min(torch_times) / min(jax_times)
    results.append(entry)

  for entry in results:
    for side, nbytes in weight_bytes.items():
      step_s = entry[side]["ms_per_step"] / 1e3
      entry[side]["weight_bytes_per_step"] = nbytes
      memory_s = nbytes / bandwidth.best
      flops = sides[side].call("flops_per_step", entry["batch_size"])
      compute_s = flops / peak.best
      entry[side]["flops_per_step"] = flops
      entry[side]["memory_ms_per_step"] = 1e3 * memory_s
      entry[side]["compute_ms_per_step"] = 1e3 * compute_s
      entry[side]["roofline_ms_per_step"] = 1e3 * max(memory_s, compute_s)
      entry[side]["bound"] = "memory" if memory_s >= compute_s else "compute"
      entry[side]["roofline_fraction"] = max(memory_s, compute_s) / step_s
      entry[side]["bandwidth_fraction"] = memory_s / step_s
  settings = {"jax_path": path, "universal_layers": _UNIVERSAL.value, "nlg_layers": _NLG.value,
              "gpt2_layers": _UNIVERSAL.value + _NLG.value, "d_model": _D_MODEL.value,
              "num_heads": _HEADS.value, "d_ff": _D_FF.value, "vocab_size": _VOCAB.value,
              "prompt_length": _PROMPT.value, "new_tokens": _NEW.value,
              "segment_length": _SEGMENT.value, "memory_len": _MEMORY.value,
              "repeats": _REPEATS.value, "threads": threads, "dtype": "float32",
              "process_per_framework": True, "machine": bench_common.machine()}
  settings.update(bench_common.host_memory_settings())
  settings["peak_matmul_size"] = _PEAK_SIZE.value
  for worker in sides.values():
    settings.update(worker.call("info"))
    worker.close()
  if "torch" not in sides:
    settings["torch_skipped"] = why_not
  bench_common.emit({"benchmark": "decode_throughput", "unit": "generated tokens/s",
                     "settings": settings, "read_bandwidth_bytes_per_s": bandwidth.best,
                     "bandwidth_samples": bandwidth.samples,
                     "matmul_peak_flops_per_s": peak.best, "peak_samples": peak.samples,
                     "results": results},
                    _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
