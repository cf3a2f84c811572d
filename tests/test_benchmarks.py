"""The benchmark scripts at tiny sizes: each prints one JSON line of sane figures.

The scripts run in subprocesses (as `make bench` runs them) with the test
session's XLA flags; their PyTorch halves run only where torch and transformers
are installed (the `[bench]` extra), otherwise the JSON must say they were skipped.
"""

from __future__ import annotations

import json
import math
import re
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

BENCH_DIR = os.path.join(REPO_ROOT, "benchmarks")
if BENCH_DIR not in sys.path:
  sys.path.insert(0, BENCH_DIR)

try:
  import torch  # noqa: F401  pylint: disable=unused-import
  import transformers  # noqa: F401  pylint: disable=unused-import
  HAVE_TORCH = True
except ImportError:
  HAVE_TORCH = False

def test_the_pytorch_baselines_run_where_ci_runs():
  """The benchmarks' published ratios are against PyTorch: CI installs the [bench] extra
  (.ci/run), so there the torch halves below must run, not be skipped."""
  if not HAVE_TORCH:
    if os.environ.get("CI"):
      pytest.fail("torch and transformers (the [bench] extra) are not installed in CI")
    pytest.skip("torch/transformers not installed (pip install -e '.[bench]')")


TINY_MODEL = ["--universal_layers=1", "--d_model=32", "--num_heads=4", "--d_ff=64",
              "--vocab_size=97", "--repeats=1", "--threads=1"]


def run_benchmark(script: str, *args: str, timeout: int = 600) -> dict:
  """Runs benchmarks/<script> and returns its JSON line (also checks --output)."""
  out_file = os.path.join(os.environ.get("PYTEST_TMP", "/tmp"),
                          f"bench_{os.getpid()}_{script}.jsonl")
  if os.path.exists(out_file):
    os.remove(out_file)
  proc = subprocess.run([sys.executable, os.path.join(BENCH_DIR, script), *args,
                         f"--output={out_file}"], capture_output=True, text=True,
                        timeout=timeout, cwd=REPO_ROOT, env=dict(os.environ))
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  assert len(lines) == 1, proc.stdout[-2000:]
  record = json.loads(lines[0])
  with open(out_file) as f:
    assert json.loads(f.read().strip()) == record
  os.remove(out_file)
  return record


def assert_positive(value, where: str) -> None:
  assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, \
      f"{where} = {value!r}"


def test_train_throughput_reports_both_frameworks():
  r = run_benchmark("train_throughput.py", *TINY_MODEL, "--nlu_layers=1",
                    "--sequence_lengths=16", "--tokens_per_batch=32", "--steps_per_repeat=1",
                    "--peak_matmul_size=128")
  assert r["benchmark"] == "train_throughput"
  (entry,) = r["results"]
  assert (entry["sequence_length"], entry["rows"]) == (16, 2)
  sides = ["jax", "torch"] if HAVE_TORCH else ["jax"]
  for side in sides:
    for key in ("step_s", "tokens_per_s", "model_flops_per_step", "model_flops_per_s", "mfu",
                "mfu_own_peak"):
      assert_positive(entry[side][key], f"{side}.{key}")
    assert_positive(r["peak_flops_per_s"][side], f"peak {side}")
    # The peak is the best of a sample before the repeats and one after each.
    assert len(r["peak_samples"][side]) == 2
    assert r["peak_flops_per_s"][side] == max(r["peak_samples"][side])
    # MFU against the machine's peak (the best framework's) is never above its own.
    assert r["machine_peak_flops_per_s"] >= r["peak_flops_per_s"][side]
    assert entry[side]["mfu"] <= entry[side]["mfu_own_peak"]
    assert entry[side]["tokens_per_s"] == pytest.approx(32 / entry[side]["step_s"])
  if HAVE_TORCH:
    assert_positive(entry["jax_over_torch_tokens_per_s"], "ratio")
    assert r["settings"]["torch_layers"] == 2
  else:
    assert "torch" not in entry and "torch_skipped" in r["settings"]


@pytest.mark.slow
def test_decode_throughput_generates_every_token():
  r = run_benchmark("decode_throughput.py", *TINY_MODEL, "--nlg_layers=1",
                    "--batch_sizes=2", "--prompt_length=5", "--new_tokens=6",
                    "--segment_length=4", "--memory_len=4")
  assert r["settings"]["jax_path"] == "cached"
  (entry,) = r["results"]
  assert entry["generated_tokens"] == 12
  for side in (["jax", "torch"] if HAVE_TORCH else ["jax"]):
    assert_positive(entry[side]["tokens_per_s"], f"{side}.tokens_per_s")
    assert entry[side]["tokens_per_s"] == pytest.approx(12 / entry[side]["seconds"])
    e = entry[side]
    # Memory time: the step's weight bytes over the best measured read bandwidth;
    # compute time: its FLOPs over the best measured matmul peak; the roofline is
    # the larger, and the fraction is against it.
    assert e["memory_ms_per_step"] == pytest.approx(
        1e3 * e["weight_bytes_per_step"] / r["read_bandwidth_bytes_per_s"])
    assert e["flops_per_step"] >= 2 * 2 * e["weight_bytes_per_step"] / 4  # batch 2, fp32
    assert e["compute_ms_per_step"] == pytest.approx(
        1e3 * e["flops_per_step"] / r["matmul_peak_flops_per_s"])
    assert e["roofline_ms_per_step"] == pytest.approx(
        max(e["memory_ms_per_step"], e["compute_ms_per_step"]))
    assert e["bound"] == ("memory" if e["memory_ms_per_step"] >= e["compute_ms_per_step"]
                          else "compute")
    assert e["roofline_fraction"] == pytest.approx(e["roofline_ms_per_step"] / e["ms_per_step"])
    assert 0 < e["bandwidth_fraction"] <= e["roofline_fraction"] < 2
  assert r["read_bandwidth_bytes_per_s"] == max(r["bandwidth_samples"])
  assert r["matmul_peak_flops_per_s"] == max(r["peak_samples"])


def test_decode_trace_groups_the_traced_ops_of_a_token_step():
  r = run_benchmark("decode_trace.py", *TINY_MODEL, "--nlg_layers=1", "--batch_sizes=2",
                    "--prompt_length=5", "--new_tokens=40", "--segment_length=4",
                    "--memory_len=4", "--top_ops=5")
  (entry,) = r["results"]
  assert entry["batch_size"] == 2
  assert_positive(entry["step_wall_ms"], "step_wall_ms")
  assert_positive(entry["prefill_and_first_token_wall_ms"], "prefill wall")
  groups = entry["groups"]
  # Every token multiplies by the vocabulary table once and by each layer's kernels.
  assert groups["vocabulary projection"]["ops"] == pytest.approx(1, abs=0.5)
  assert groups["dense matmuls, d_ff out (feed-forward in)"]["ops"] == pytest.approx(2, abs=0.5)
  assert sum(g["ms"] for g in groups.values()) == pytest.approx(
      entry["op_ms_summed_over_threads"], rel=1e-3, abs=1e-3)
  assert entry["concurrency"] == pytest.approx(
      entry["op_ms_summed_over_threads"] / entry["step_wall_ms"])
  assert len(entry["top_ops"]) == 5 and entry["top_ops"][0]["ms"] >= entry["top_ops"][-1]["ms"]


def test_decode_trace_groups_dots_by_shape_and_other_ops_by_source():
  import decode_trace  # pylint: disable=import-outside-toplevel
  program = decode_trace.instructions(
      '  %dot.1 = f32[40000,1]{1,0} dot(%a, %b), lhs_contracting_dims={1}\n'
      '  %dot.2 = f32[8,12,1,256]{3,2,1,0} dot(%c, %d), lhs_batch_dims={0,1}, '
      'lhs_contracting_dims={2}\n'
      '  %ynn_fusion.3 = f32[8,3072]{1,0} fusion(%e, %f), kind=kCustom\n'
      '  %fusion.4 = f32[8,768]{1,0} fusion(%g), kind=kLoop, metadata={op_name='
      '"jit(run)/while/body/CachedTransformerXLBlock/ffn_norm/mul" stack_frame_id=1}\n'
      '  ROOT %dynamic-update-slice.5 = f32[8,12,64,256]{3,2,1,0} dynamic-update-slice(%h), '
      'metadata={op_name="jit(run)/while/body/CachedTransformerXLBlock/dynamic_update_slice"}\n')
  assert program["dot.1"] == ("dot", (40000, 1), "", False)
  assert program["fusion.4"][2].endswith("ffn_norm/mul")
  group = lambda name: decode_trace.group_of(name, program.get(name), 40000, 3072)
  assert group("dot.1") == "vocabulary projection"
  assert group("dot.2").startswith("attention matmuls")
  assert group("ynn_fusion.3").startswith("dense matmuls, d_ff out")
  assert group("fusion.4") == "layer norms"
  assert group("dynamic-update-slice.5") == "cache writes"
  assert group("SlinkyThreadPool::Await") == decode_trace.OTHER


def _memory_plan(*targets: str, devices: int) -> dict:
  return run_benchmark("memory_plan_10b.py", "--model_gin=gin_configs/models/tiny.gin",
                       f"--devices={devices}", f"--targets={','.join(targets)}",
                       "--remat=full", "--microbatches=1", "--global_batch=16",
                       "--sequence_length=16", "--nlg_fraction=0.5",
                       "--budgets_gb=0.001,80")


def test_memory_plan_compiles_the_step_on_the_target_shards():
  r = _memory_plan("2x4x1", devices=4)
  assert_positive(r["num_params"], "num_params")
  (p,) = r["plans"]
  assert p["compiled_mesh"] == "1x4x1" and p["devices"] == 8
  assert p["rows_per_batch_shard"] == {"nlu": 1, "nlg": 1}
  m = p["measured"]
  for key in ("argument_bytes", "temp_bytes", "total_bytes", "state_bytes_from_specs"):
    assert_positive(m[key], key)
  # The state the script derives from the specs is what XLA holds as arguments.
  assert m["state_bytes_from_specs"] + m["batch_bytes_from_specs"] <= m["argument_bytes"]
  assert m["argument_bytes"] - m["state_bytes_from_specs"] < 0.01 * m["argument_bytes"] + 4096
  assert p["fits"] == {"0.001GB": p["per_device_gb"] <= 0.001, "80GB": True}
  assert r["best"]["80GB"].startswith("2x4x1")


@pytest.mark.slow
def test_memory_plan_extrapolates_fsdp_beyond_the_simulated_devices():
  r = _memory_plan("1x8x1", devices=4)
  (p,) = r["plans"]
  assert p["compiled_mesh"] == "1x4x1" and "fit_point" in p
  proj = p["projection"]
  # Twice the fsdp shards: the state per device about halves.
  assert proj["state_bytes"] < 0.6 * p["measured"]["state_bytes_from_specs"]
  assert_positive(proj["temp_bytes"], "projected temp")
  assert p["per_device_gb"] * 1e9 < p["measured"]["total_bytes"]


@pytest.mark.slow
def test_data_throughput_compares_with_the_demo_step():
  r = run_benchmark("data_throughput.py", "--tasks=sentence_distance,ernie3_pretrain",
                    "--examples=32", "--warmup=8", "--demo_steps=1")
  demo = r["demo_consumption"]
  assert_positive(demo["step_s"], "demo step_s")
  for name in ("sentence_distance", "ernie3_pretrain"):
    assert_positive(r["results"][name], name)
    assert r["pipeline_over_demo_consumption"][name] == pytest.approx(
        r["results"][name] / demo["examples_per_s"][name], rel=0.01)


def test_demo_rows_per_step_follow_the_mixture_rates():
  import demo_step  # pylint: disable=import-outside-toplevel
  rates = {"knowledge_masked_lm": 4.0, "uktp": 2.0, "sentence_reordering": 1.0,
           "sentence_distance": 1.0, "document_lm": 4.0}
  assert demo_step.rows_per_step(16, 4, rates) == {
      "knowledge_masked_lm": 8.0, "uktp": 4.0, "sentence_reordering": 2.0,
      "sentence_distance": 2.0, "document_lm": 4.0, "ernie3_pretrain": 20.0}


def test_per_device_bytes_matches_jax_shard_shapes():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from ernie3_jax.training.partitioning import per_device_bytes  # pylint: disable=import-outside-toplevel
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(1, 4, 2), ("data", "fsdp", "tensor"))
  arrays = {"w": jax.ShapeDtypeStruct((64, 48), jnp.float32),
            "v": jax.ShapeDtypeStruct((16, 10), jnp.bfloat16),
            "b": jax.ShapeDtypeStruct((7,), jnp.float32)}
  shardings = {"w": NamedSharding(mesh, P("fsdp", "tensor")),
               "v": NamedSharding(mesh, P(("fsdp", "tensor"), None)),
               "b": NamedSharding(mesh, P())}
  expected = sum(math.prod(shardings[k].shard_shape(a.shape)) * a.dtype.itemsize
                 for k, a in arrays.items())
  sizes = {"data": 1, "fsdp": 4, "tensor": 2}
  assert per_device_bytes(arrays, shardings, sizes) == expected
  # On a mesh with 8x the fsdp shards (no such devices needed) w shrinks 8x;
  # v's 16 rows over 64 shards round up to one row per device.
  bigger = per_device_bytes(arrays, shardings, dict(sizes, fsdp=32))
  assert bigger == (64 * 48 // 64) * 4 + 1 * 10 * 2 + 7 * 4


def test_bert_flop_count_equals_a_hand_count():
  """layers 2, d 4, d_ff 8, vocab 10, one row of 3 tokens. Per token and layer: QKV and the
  output projection 4·d·d = 64 MACs, the FFN 2·d·d_ff = 64 MACs, attention scores and
  value mixing 2·length·d = 24 MACs; the head d·d + d·vocab = 56 MACs per token.
  Forward FLOPs = 2 · 3 tokens · (2 layers · (64 + 64 + 24) + 56) = 2160; training = 3x."""
  from bench_common import bert_train_flops
  assert bert_train_flops(layers=2, d=4, d_ff=8, vocab=10, rows=1, length=3) == 6480


def test_decode_weight_bytes_count_every_read_weight_once():
  """The tiny decode model's weights, counted from its shapes by hand (float32)."""
  import jax
  import jax.numpy as jnp
  from bench_common import jax_weight_bytes_per_step
  from ernie3_jax.model import Ernie3, Ernie3Config, init_memory
  d, ff, vocab, heads = 32, 64, 97, 4
  cfg = Ernie3Config(vocab_size=vocab, num_layers=1, d_model=d, num_heads=heads,
                     head_dim=d // heads, d_ff=ff, nlu_layers=1, nlg_layers=1, task_d_model=d,
                     task_num_heads=heads, task_head_dim=d // heads, task_d_ff=ff,
                     memory_len=4, scan_layers=True)
  tokens = jnp.ones((1, 4), jnp.int32)
  params = jax.eval_shape(lambda: Ernie3(cfg).init(
      jax.random.PRNGKey(0), tokens, tokens * 0, jnp.zeros((1,), jnp.int32),
      init_memory(cfg, 1, 4)))["params"]
  import flax.linen as nn
  params = nn.unbox(params)
  # One Transformer-XL layer: q, k, v, o kernels (4·d·d) and biases (4·d), the content
  # bias u (d; W_R and the position bias v are applied once per generation, not per
  # step), two layer norms (4·d), the FFN (2·d·ff kernels, ff + d biases).
  layer = 4 * d * d + 4 * d + d + 4 * d + 2 * d * ff + ff + d
  # The NLG stack adds its universal -> task projection (d·d + d) and layer norm (2·d).
  nlg = layer + d * d + d + 2 * d
  # The LM head's transform (d·d + d), its layer norm (2·d) and output bias (vocab);
  # the tied token table (vocab·d).
  head = d * d + d + 2 * d + vocab + vocab * d
  assert jax_weight_bytes_per_step(params) == 4 * (layer + nlg + head)


def test_decode_memory_plan_counts_sharded_weights_and_cache():
  r = run_benchmark("decode_memory_plan_10b.py", "--model_gin=gin_configs/models/tiny.gin",
                    "--tensor=1,2", "--batch=2", "--segment_length=16", "--new_tokens=2",
                    "--param_dtype=float32")
  one, two = r["plans"]
  assert (one["mesh"], two["mesh"]) == ("1x1x1", "1x1x2")
  # One device holds every parameter; two split the head and MLP kernels, not the rest.
  assert one["weights_bytes_from_specs"] == one["weights_bytes_unsharded"]
  assert one["weights_bytes_unsharded"] / 2 < two["weights_bytes_from_specs"] < \
      one["weights_bytes_unsharded"]
  assert two["cache_bytes_from_specs"] < one["cache_bytes_from_specs"]
  for p in (one, two):
    assert_positive(p["measured"]["temp_bytes"], "temp_bytes")
    assert p["per_device_gb"] * 1e9 >= p["weights_bytes_from_specs"]


def test_sharded_decode_reports_each_mesh_against_one_device():
  r = run_benchmark("sharded_decode.py", "--meshes=1x1x8,2x1x4", "--new_tokens=3",
                    "--repeats=1", "--universal_layers=1", "--d_model=32", "--num_heads=8",
                    "--vocab_size=97", "--batch_size=2", "--prompt_length=5")
  assert_positive(r["results"]["1 device"]["tokens_per_s"], "one device")
  for mesh in ("mesh 1x1x8", "mesh 2x1x4"):
    entry = r["results"][mesh]
    assert entry["same_tokens_as_one_device"] is True
    assert entry["ratio_to_one_device"] == pytest.approx(
        entry["tokens_per_s"] / r["results"]["1 device"]["tokens_per_s"], rel=0.01,
        abs=1e-3)  # the benchmark rounds the ratio to 3 decimals


def test_start_to_first_step_times_until_the_first_step_line_and_stops_the_run(tmp_path):
  # In a process of its own: the script defines absl flags (--output ...) that other
  # modules of this test process may have defined already.
  script = r"""
import os, re, sys, time
import start_to_first_step as s2fs
log = sys.argv[1]
started = time.perf_counter()
seconds, step = s2fs.time_to_first_step(
    [sys.executable, "-c", "import time; print('resumed from step 4', flush=True); "
     "time.sleep(0.5); print('step 5: loss=1.0', flush=True); time.sleep(60)"],
    dict(os.environ), 60, log)
assert step == 5 and 0.5 <= seconds < 30, (step, seconds)
assert time.perf_counter() - started < 30  # killed at the line, not left to sleep
assert re.search(r"\[ *\d+\.\d s\] resumed from step 4", open(log).read())
for command, timeout, expected in (
    ("import sys; print('no'); sys.exit(3)", 60, r"logged no step \(exit 3\)"),
    ("import time; time.sleep(60)", 1, r"timed out after 1 s")):
  try:
    s2fs.time_to_first_step([sys.executable, "-c", command], dict(os.environ), timeout, log)
  except RuntimeError as e:
    assert re.search(expected, str(e)), e
  else:
    raise AssertionError("no error for " + command)
print("ok")
"""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [os.path.join(REPO_ROOT, "benchmarks"), REPO_ROOT, os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run.log")], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.slow
def test_start_to_first_step_reports_a_warm_resume_against_a_cold_one():
  # One device: the suite simulates 8, which the demo's NLG batch of 4 cannot split over.
  r = run_benchmark("start_to_first_step.py", "--cases=demo_resume", "--demo_steps=1",
                    "--demo_gin=make_mesh.num_devices=1", timeout=1800)
  assert (r["case"], r["first_step"], r["resumed_from_step"]) == ("demo_resume", 2, 1)
  assert_positive(r["cold_s"], "cold_s")
  assert_positive(r["warm_s"], "warm_s")
  assert r["warm_over_cold"] == pytest.approx(r["warm_s"] / r["cold_s"], abs=2e-3)
  assert r["cache_entries"] > 0 and r["cache_bytes"] > 0
  assert r["warm_s"] < r["cold_s"]
