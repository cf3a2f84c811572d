r"""Where a cached decoding step's time goes: each part timed alone, beside the whole step.

  python benchmarks/decode_profile.py --batch_sizes=1,8

The model is decode_throughput.py's (10 universal + 2 NLG layers, 768 wide, 12 heads,
vocabulary 40,000, memory 128 + segment 128, fp32). `step` is the real token loop:
`generation.generate`'s compiled call with --new_tokens minus the same call with one
new token, per token. Every other part is a compiled loop of --new_tokens iterations
that runs only that part at the step's shapes (so each includes its own share of the
loop's per-iteration cost), with the state carried so nothing is hoisted:

* weights: every per-token matrix-vector product of the 12 layers (query, key, value,
  output, both feed-forward kernels, out-first as decoding reads them), the LM head's
  transform and the vocabulary projection, with argmax: the weight-read floor XLA:CPU
  reaches, without attention, norms or cache.
* vocabulary: the [40000, 768] projection and argmax alone.
* attention: 12 layers of one query against [memory ; segment] (256 cached keys and
  values): content scores, the relative-position term (W_R R by distance, gathered per
  key), mask, softmax, value mix.
* cache writes: 12 layers' one-token writes of key, value and remembered state
  (`transformer_xl.write_rows`, as the step does).
* empty: a loop iteration that does almost nothing (the per-iteration floor).

The memory roofline is the step's weight bytes over the read bandwidth of a jitted
sum, sampled in the same run (best sample).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402  pylint: disable=g-import-not-at-top

_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to profile.")
_NEW = flags.DEFINE_integer("new_tokens", 128, "Steps per timed loop.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per part (the best counts).")
_THREADS = flags.DEFINE_integer("threads", 0, "CPU threads (0: all).")
_OUTPUT = flags.DEFINE_string("output", None, "Append the JSON line to this file.")

D, H, DH, F, V, LAYERS, M, S = 768, 12, 64, 3072, 40000, 12, 128, 128


def part_loops(batch: int, n: int):
  """{part: (jitted loop, its initial state)}; each loop runs `n` iterations."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ernie3_jax.model import layers  # pylint: disable=g-import-not-at-top
  from ernie3_jax.model.transformer_xl import write_rows  # pylint: disable=g-import-not-at-top

  count = iter(range(1 << 20))
  rand = lambda *shape: 0.02 * jax.random.normal(
      jax.random.fold_in(jax.random.PRNGKey(0), next(count)), shape, jnp.float32)
  x0 = rand(batch, D)
  mm = lambda x, w: layers.matmul_out_first(x, w, 1)
  vocab = rand(V, D)

  def weights_body(_, state):
    x, w = state
    for lw in w["layers"]:
      x = x + mm(mm(x, lw["q"]) + mm(x, lw["k"]) + mm(x, lw["v"]), lw["o"])
      x = x + mm(jax.nn.gelu(mm(x, lw["wi"])), lw["wo"])
    token = jnp.argmax(mm(mm(x, w["transform"]), w["vocab"]), axis=-1)
    return x + 1e-3 * token[:, None].astype(x.dtype), w

  layer_w = [{"q": rand(D, D), "k": rand(D, D), "v": rand(D, D), "o": rand(D, D),
              "wi": rand(F, D), "wo": rand(D, F)} for _ in range(LAYERS)]
  weights = {"layers": layer_w, "transform": rand(D, D), "vocab": vocab}

  def vocab_body(_, state):
    x, table = state
    token = jnp.argmax(mm(x, table), axis=-1)
    return x + 1e-3 * token[:, None].astype(x.dtype), table

  k_cache = [rand(batch, H, DH, M + S) for _ in range(LAYERS)]
  v_cache = [rand(batch, H, M + S, DH) for _ in range(LAYERS)]
  r = [rand(H, M + S, DH) for _ in range(LAYERS)]
  key_at = jnp.arange(M + S)

  def attention_body(i, state):
    x, ks, vs, rs = state
    at = M + i % S
    distance = jnp.clip(at - key_at, 0, M + S - 1)
    for kc, vc, rr in zip(ks, vs, rs):
      q = x.reshape(batch, 1, H, DH)
      content = jnp.einsum("bqhd,bhdk->bhqk", q, kc)
      by_distance = jnp.einsum("bqhd,hpd->bhqp", q, rr)
      logits = content + jnp.take(by_distance, distance, axis=-1)
      logits = jnp.where((key_at <= at)[None, None, None], logits, -1e9)
      probs = jax.nn.softmax(logits, axis=-1)
      x = x + jnp.einsum("bhqk,bhkd->bqhd", probs, vc).reshape(batch, D)
    return x, ks, vs, rs

  seg = [jnp.zeros((batch, S, D), jnp.float32) for _ in range(LAYERS)]

  def writes_body(i, state):
    x, ks, vs, ss = state
    start = jnp.full((batch,), i % S, jnp.int32)
    kv = x.reshape(batch, H, DH, 1)
    ks = [write_rows(kc, kv, start + M, axis=3) for kc in ks]
    vs = [write_rows(vc, kv.reshape(batch, H, 1, DH), start + M, axis=2) for vc in vs]
    ss = [write_rows(sc, x[:, None], start) for sc in ss]
    return x + 1e-3, ks, vs, ss

  def empty_body(_, state):
    return state + 1.0

  # Only the cache-write loop donates its state (its buffers are rewritten in place);
  # the others read their weights and caches, which later calls reuse.
  loop = lambda body, donate=(): jax.jit(lambda s: jax.lax.fori_loop(0, n, body, s),
                                         donate_argnums=donate)
  x = lambda: x0 + 0
  return {
      "weights (every matrix-vector product + vocabulary + argmax)":
          (loop(weights_body), lambda: (x(), weights)),
      "vocabulary projection + argmax": (loop(vocab_body), lambda: (x(), vocab)),
      "attention over [memory ; segment], 12 layers":
          (loop(attention_body), lambda: (x(), k_cache, v_cache, r)),
      "cache writes (key, value, remembered state), 12 layers":
          (loop(writes_body, 0), lambda: (x(), [k + 0 for k in k_cache],
                                          [v + 0 for v in v_cache], [s + 0 for s in seg])),
      "empty loop iteration": (loop(empty_body), x),
  }


def main(argv):
  del argv
  threads = bench_common.pin_threads(_THREADS.value)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from ernie3_jax.inference import generation  # pylint: disable=g-import-not-at-top
  from ernie3_jax.model import Ernie3, Ernie3Config, init_memory  # pylint: disable=g-import-not-at-top

  n = _NEW.value
  # decode_throughput.py's model.
  cfg = Ernie3Config(vocab_size=V, num_layers=10, d_model=D, num_heads=H, head_dim=DH,
                     d_ff=F, nlu_layers=1, nlg_layers=2, task_d_model=D, task_num_heads=H,
                     task_head_dim=DH, task_d_ff=F, memory_len=M, dtype="float32",
                     param_dtype="float32", scan_layers=True)
  tokens = jnp.ones((1, 8), jnp.int32)
  params = nn.unbox(jax.jit(lambda: Ernie3(cfg).init(
      jax.random.PRNGKey(0), tokens, tokens * 0, jnp.zeros((1,), jnp.int32),
      init_memory(cfg, 1, 4)))())["params"]
  weight_bytes = bench_common.jax_weight_bytes_per_step(params)
  bandwidth = bench_common.PeakMeter(bench_common.jax_read_bandwidth)
  bandwidth.sample()
  options = generation.DecodeOptions("greedy", stop_ids=())
  results = []
  for batch in (int(b) for b in _BATCHES.value):
    prompts = np.random.RandomState(0).randint(5, cfg.vocab_size, size=(batch, 64))
    packed, lengths = generation.pack_prompts(prompts.tolist(), 128, cfg.vocab_size)
    args = (params, jnp.asarray(packed), jnp.asarray(lengths), jax.random.PRNGKey(0),
            generation.sampling_args(options))
    calls = {new: generation._compiled_generate(cfg, 128, new, 0) for new in (1, n)}  # pylint: disable=protected-access
    parts = part_loops(batch, n)
    best = {name: float("inf") for name in ["step", "prefill + 1 token"] + list(parts)}
    for name, (fn, state) in parts.items():
      jax.block_until_ready(fn(state()))
    for new, fn in calls.items():
      jax.block_until_ready(fn(*args))
    for _ in range(_REPEATS.value):
      times = {}
      for new, fn in calls.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times[new] = time.perf_counter() - start
      best["prefill + 1 token"] = min(best["prefill + 1 token"], times[1])
      best["step"] = min(best["step"], (times[n] - times[1]) / (n - 1))
      for name, (fn, state) in parts.items():
        s = state()
        jax.block_until_ready(s)
        start = time.perf_counter()
        jax.block_until_ready(fn(s))
        best[name] = min(best[name], (time.perf_counter() - start) / n)
      bandwidth.sample()
    roofline = weight_bytes / bandwidth.best
    results.append({"batch_size": batch,
                    "ms": {k: 1e3 * v for k, v in best.items()},
                    "memory_roofline_ms": 1e3 * roofline,
                    "step_over_roofline": best["step"] / roofline})
  bench_common.emit({"benchmark": "decode_profile", "unit": "ms per decoding step",
                     "settings": {"new_tokens": n, "repeats": _REPEATS.value,
                                  "threads": threads, "dtype": "float32",
                                  "machine": bench_common.machine(),
                                  "jax_version": jax.__version__,
                                  **bench_common.host_memory_settings()},
                     "weight_bytes_per_step": weight_bytes,
                     "read_bandwidth_bytes_per_s": bandwidth.best,
                     "bandwidth_samples": bandwidth.samples, "results": results}, _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
