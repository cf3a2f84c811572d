r"""Per-op profile of the cached decoding step, from a `jax.profiler` trace.

  python benchmarks/decode_trace.py --batch_sizes=1,8 --new_tokens=128

The model and prompts are decode_throughput.py's (10 universal + 2 NLG layers, 768
wide, vocabulary 40,000, 64-token prompts, memory 128 + segment 128, fp32; its flags
set them, and its --output takes the JSON line). For each batch size the real `generation.generate` call runs under
`jax.profiler.trace` twice, with --new_tokens new tokens and with one: every XLA:CPU op
event of the trace is summed by op, and the difference of the two calls divided by
--new_tokens - 1 is that op's time per token (prefill and the first token cancel).
A dot is put in a group by its shape (most carry no source path): batched dots are
attention, a dot with the vocabulary size among its dimensions the vocabulary
projection, with d_ff the feed-forward input, any other a d_model-wide dense product.
Any other op goes by its source path (the op_name metadata of the compiled HLO). The
line gives each group's op time and ops per token, the step's wall time per token
(untraced: the best of --repeats calls, at least 3), and the ops' time summed over
XLA:CPU's threads against that wall time (above 1: ops ran concurrently on the two
cores). The trace's own cost is in both traced calls, so op times run a little above
an untraced run's.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import shutil
import sys
import tempfile

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402  pylint: disable=g-import-not-at-top

# decode_throughput (its flags set the model and prompts) is imported only when this runs
# as a script, so that importing the module for its parsing and grouping defines no flags
# beyond its own.
decode_throughput = None

_TOP = flags.DEFINE_integer("top_ops", 12, "Single ops listed per batch size.")

# Groups of ops other than dots: (group, pattern on the op's source path); first match wins.
GROUPS = (
    ("segment commit (memory keys/values, under cond)", r"memory_keys_values|commit|/cond/"),
    ("cache writes", r"dynamic_update_slice|scatter"),
    ("layer norms", r"_norm/"),
    ("feed-forward bias and GeLU", r"/ffn/"),
    ("attention over [memory ; segment]: scores, softmax, gather", r"/attention/"),
    ("token choice (argmax, log-prob, rng)", r"argmax|log_softmax|select_tokens|threefry|random"),
)
OTHER = "other (loop control, masks, embedding, copies)"
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \w+\[([\d,]*)\][^ ]* ([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def instructions(hlo_text: str) -> dict[str, tuple[str, tuple[int, ...], str, bool]]:
  """HLO instruction name -> (opcode, result dims, source path (op_name), batched dot)."""
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if m:
      dims = tuple(int(d) for d in m.group(2).split(",") if d)
      path = _OP_NAME.search(line)
      out[m.group(1)] = (m.group(3), dims, path.group(1) if path else "",
                         "lhs_batch_dims" in line)
  return out


def group_of(name: str, info, vocab: int, d_ff: int) -> str:
  """A dot by its shape (most carry no source path), any other op by its source path."""
  opcode, dims, path, batched = info if info else ("", (), "", False)
  if opcode == "dot" or "ynn_fusion" in name:
    if batched:
      return "attention matmuls (scores, position term, value mix)"
    if vocab in dims:
      return "vocabulary projection"
    if d_ff in dims:
      return "dense matmuls, d_ff out (feed-forward in)"
    return "dense matmuls, d_model out (q, k, v, attention out, feed-forward out, LM transform)"
  for group, pattern in GROUPS:
    if re.search(pattern, path or name):
      return group
  return OTHER


def traced_ops(run, args) -> tuple[dict[str, float], dict[str, int]]:
  """Runs `run(*args)` under the profiler: (seconds per op name, events per op name),
  summed over XLA:CPU's threads."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  folder = tempfile.mkdtemp(prefix="decode_trace_")
  try:
    with jax.profiler.trace(folder):
      jax.block_until_ready(run(*args))
    data = ProfileData.from_file(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)[0])
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  seconds, events = collections.Counter(), collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        if line.name.startswith("tf_XLAEigen") and not event.name.startswith("ThunkExecutor"):
          seconds[event.name] += event.duration_ns / 1e9
          events[event.name] += 1
  return seconds, events


def profile(batch: int, model, params, cfg) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ernie3_jax.inference import generation  # pylint: disable=g-import-not-at-top
  seg, new = decode_throughput._SEGMENT.value, decode_throughput._NEW.value  # pylint: disable=protected-access
  prompts = np.random.default_rng(batch).integers(
      5, cfg.vocab_size, (batch, decode_throughput._PROMPT.value)).tolist()  # pylint: disable=protected-access
  packed, lengths = generation.pack_prompts(prompts, seg, cfg.vocab_size)
  options = generation.DecodeOptions("greedy", stop_ids=())
  args = (params, jnp.asarray(packed), jnp.asarray(lengths), jax.random.PRNGKey(0),
          generation.sampling_args(options))
  measured, wall = {}, {}
  for tokens in (new, 1):
    run = generation._compiled_generate(cfg, seg, tokens, 0, None, None)  # pylint: disable=protected-access
    jax.block_until_ready(run(*args))  # compile and warm
    if tokens == new:
      program = instructions(run.lower(*args).compile().as_text())
    wall[tokens] = min(bench_common.median_time(lambda: jax.block_until_ready(run(*args)), 1)
                       for _ in range(max(3, decode_throughput._REPEATS.value)))  # pylint: disable=protected-access
    measured[tokens] = traced_ops(run, args)
  (sec_n, ev_n), (sec_1, ev_1) = measured[new], measured[1]
  per = new - 1

  def table(seconds, events, base_seconds, base_events, divide):
    groups = collections.defaultdict(lambda: [0.0, 0.0])
    ops = []
    for name in seconds:
      ms = (seconds[name] - base_seconds.get(name, 0.0)) / divide * 1e3
      count = (events[name] - base_events.get(name, 0)) / divide
      group = group_of(name, program.get(name), cfg.vocab_size, cfg.d_ff)
      groups[group][0] += ms
      groups[group][1] += count
      ops.append((ms, name, program.get(name, ("", (), "", False))[2], group))
    ops.sort(reverse=True)
    return ({g: {"ms": round(v[0], 3), "ops": round(v[1], 1)}
             for g, v in sorted(groups.items(), key=lambda kv: -kv[1][0])}, ops)

  groups, ops = table(sec_n, ev_n, sec_1, ev_1, per)
  prefill_groups, prefill_ops = table(sec_1, ev_1, {}, {}, 1)
  op_ms = sum(g["ms"] for g in groups.values())
  wall_ms = (wall[new] - wall[1]) / per * 1e3
  return {
      "batch_size": batch,
      "step_wall_ms": wall_ms,
      "prefill_and_first_token_wall_ms": wall[1] * 1e3,
      "op_ms_summed_over_threads": op_ms,
      "concurrency": op_ms / wall_ms if wall_ms else None,
      "groups": groups,
      "prefill_and_first_token_groups": prefill_groups,
      "top_ops": [{"op": n, "ms": round(ms, 3), "source": p, "group": g}
                  for ms, n, p, g in ops[:_TOP.value]],
      "top_prefill_ops": [{"op": n, "ms": round(ms, 3), "source": p, "group": g}
                          for ms, n, p, g in prefill_ops[:_TOP.value]],
      "top_other_ops": [{"op": n, "ms": round(ms, 3), "source": p}
                        for ms, n, p, g in ops if g == OTHER][:_TOP.value],
  }


def main(argv):
  del argv
  threads = bench_common.pin_threads(decode_throughput._THREADS.value)  # pylint: disable=protected-access
  from ernie3_jax.model import Ernie3  # pylint: disable=g-import-not-at-top
  cfg = decode_throughput.jax_config()
  params = decode_throughput.init_params(cfg)
  model = Ernie3(cfg)
  results = []
  for b in decode_throughput._BATCHES.value:  # pylint: disable=protected-access
    r = profile(int(b), model, params, cfg)
    results.append(r)
    print(f"batch {r['batch_size']}: step {r['step_wall_ms']:.2f} ms per token (untraced), "
          f"ops {r['op_ms_summed_over_threads']:.2f} ms summed over threads (traced; "
          f"concurrency {r['concurrency']:.2f}); prefill + first token "
          f"{r['prefill_and_first_token_wall_ms']:.0f} ms")
    for g, v in r["groups"].items():
      print(f"  {v['ms']:8.2f} ms {v['ops']:7.1f} ops  {g}")
    print("  prefill + first token, by group:")
    for g, v in r["prefill_and_first_token_groups"].items():
      print(f"  {v['ms']:8.2f} ms {v['ops']:7.1f} ops  {g}")
    for title, key in (("largest ops", "top_ops"), (f"largest of '{OTHER}'", "top_other_ops"),
                       ("largest ops of prefill + first token", "top_prefill_ops")):
      print(f"  {title}:")
      for op in r[key]:
        print(f"  {op['ms']:8.3f} ms  {op['op']:<36} {op['source'][-70:]}")
  bench_common.emit({
      "benchmark": "decode_trace", "unit": "ms per generated token",
      "settings": {"new_tokens": decode_throughput._NEW.value,  # pylint: disable=protected-access
                   "prompt_length": decode_throughput._PROMPT.value,  # pylint: disable=protected-access
                   "threads": threads, "dtype": "float32", "machine": bench_common.machine(),
                   **bench_common.host_memory_settings()},
      "results": results}, decode_throughput._OUTPUT.value)  # pylint: disable=protected-access


if __name__ == "__main__":
  import decode_throughput  # noqa: F811  pylint: disable=g-import-not-at-top
  app.run(main)
