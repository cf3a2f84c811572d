r"""Per-device memory of serving the 10B model: cached decoding on a tensor-parallel mesh.

  python benchmarks/decode_memory_plan_10b.py --tensor=8,16 --batch=1,8

Nothing is allocated. The whole decoding program that `generation.generate` runs
(prefill of one --segment_length prompt, then --new_tokens greedy steps with the
key/value cache and recurrence memory of --memory_len; weights placed by their logical
axis names, the cache pinned by batch and heads) is AOT-lowered and compiled on a
simulated CPU mesh of 1 x 1 x tensor devices; `compiled.memory_analysis()` gives one
device's argument (the weights decoding reads, prompts), output, temp (cache,
activations, the decode layout of the weights) and code bytes; the plan's total counts
every parameter (a served checkpoint holds the NLU stack too) plus temp, output and code. Weights and the cache are also counted from
their shardings, so the table says where the bytes go. Weights in --param_dtype
(bfloat16: a float32 checkpoint is cast on restore), compute in bfloat16.
Prints one JSON line; whether each plan fits 32 GB and 80 GB per device.
"""

from __future__ import annotations

import math
import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402  pylint: disable=g-import-not-at-top

_MODEL_GIN = flags.DEFINE_string("model_gin", "gin_configs/models/ernie3_10b.gin",
                                 "Model size config.")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin", [], "Extra gin bindings (NAME=VALUE).")
_TENSOR = flags.DEFINE_list("tensor", ["8", "16"], "Tensor-parallel degrees to plan.")
_BATCH = flags.DEFINE_list("batch", ["1", "8"], "Prompts decoded together.")
_SEGMENT = flags.DEFINE_integer("segment_length", 512, "Decoding segment length.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 16, "Tokens generated (the loop's memory "
                                   "does not grow with it beyond the output ids).")
_PARAM_DTYPE = flags.DEFINE_string("param_dtype", "bfloat16", "Weights' dtype when serving.")
_BUDGETS = flags.DEFINE_list("budgets_gb", ["32", "80"], "Per-device memory budgets (GB).")
_FAST_COMPILE = flags.DEFINE_boolean("fast_compile", True,
                                     "Skip LLVM optimisation (the memory figures come from "
                                     "buffer assignment, which it does not change).")
_OUTPUT = flags.DEFINE_string("output", None, "Append the JSON line to this file.")

GB = 1e9


def plan(cfg, tensor: int, batch: int) -> dict:
  """Compiles the decoding program for one (tensor, batch); bytes per device."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ernie3_jax.inference import generation  # pylint: disable=g-import-not-at-top
  from ernie3_jax.model import Ernie3  # pylint: disable=g-import-not-at-top
  from ernie3_jax.model.decode_cache import CachedNLGDecoder  # pylint: disable=g-import-not-at-top
  from ernie3_jax.parallel import inference  # pylint: disable=g-import-not-at-top
  from ernie3_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from ernie3_jax.model import task_ids  # pylint: disable=g-import-not-at-top
  from ernie3_jax.training import partitioning  # pylint: disable=g-import-not-at-top

  mesh = mesh_lib.make_mesh(1, 1, tensor, num_devices=tensor)
  rules = tuple(mesh_lib.logical_axis_rules())
  model = Ernie3(cfg)
  shardings = inference.param_shardings(model, mesh, rules)
  abstract = inference.abstract_params(model)
  params = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  segment = _SEGMENT.value
  sds = jax.ShapeDtypeStruct
  run = generation._compiled_generate(cfg, segment, _NEW_TOKENS.value, 0, mesh, rules)  # pylint: disable=protected-access
  args = jax.tree_util.tree_map(lambda x: sds(x.shape, x.dtype),
                                generation.sampling_args(generation.DecodeOptions("greedy")))
  start = time.perf_counter()
  compiled = run.lower(params, sds((batch, segment), jnp.int32), sds((batch,), jnp.int32),
                       jax.eval_shape(lambda: jax.random.PRNGKey(0)), args).compile()
  seconds = time.perf_counter() - start
  stats = compiled.memory_analysis()
  sizes = {"data": 1, "fsdp": 1, "tensor": tensor}
  decoder = CachedNLGDecoder(model, segment, task_ids.DOCUMENT_LM)
  cache = jax.eval_shape(lambda p: decoder.init_cache(decoder.prepare(p), batch), abstract)
  measured = {
      "compile_s": round(seconds, 1),
      "argument_bytes": int(stats.argument_size_in_bytes),
      "output_bytes": int(stats.output_size_in_bytes),
      "temp_bytes": int(stats.temp_size_in_bytes),
      "generated_code_bytes": int(stats.generated_code_size_in_bytes),
  }
  weights = partitioning.per_device_bytes(abstract, shardings, sizes)
  # jit drops the arguments decoding never reads (the NLU stack and heads), but a served
  # checkpoint keeps every parameter on the devices: count all of them, from the specs.
  total = (weights + measured["output_bytes"] + measured["temp_bytes"]
           + measured["generated_code_bytes"])
  cache_bytes = partitioning.per_device_bytes(
      cache, inference.cache_shardings(cache, mesh, rules), sizes)
  return {"mesh": f"1x1x{tensor}", "batch": batch, "measured": measured,
          "weights_bytes_from_specs": weights, "cache_bytes_from_specs": cache_bytes,
          "weights_bytes_unsharded": sum(math.prod(a.shape) * a.dtype.itemsize
                                         for a in jax.tree_util.tree_leaves(abstract)),
          "per_device_gb": round(total / GB, 3),
          "fits": {f"{b}GB": total <= float(b) * GB for b in _BUDGETS.value}}


def main(argv):
  del argv
  tensors = [int(t) for t in _TENSOR.value]
  devices = max(tensors)
  bench_common.simulate_cpu_devices(devices, _FAST_COMPILE.value)
  import gin  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from ernie3_jax.model import Ernie3Config  # pylint: disable=g-import-not-at-top
  # Every gin-configurable module is imported before the config is parsed (and locked).
  from ernie3_jax.inference import generation  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from ernie3_jax.parallel import mesh  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from ernie3_jax.training import partitioning  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  if len(jax.devices()) < devices:
    raise RuntimeError(f"asked for tensor={devices} but JAX sees {len(jax.devices())} devices "
                       "(was JAX imported before XLA_FLAGS was set?)")
  path = _MODEL_GIN.value
  gin.parse_config_files_and_bindings(
      [path if os.path.isabs(path) else os.path.join(bench_common.REPO_ROOT, path)],
      list(_GIN_BINDINGS.value) + [f"Ernie3Config.param_dtype = '{_PARAM_DTYPE.value}'",
                                   "Ernie3Config.remat_policy = 'none'"])
  cfg = Ernie3Config()
  plans = []
  for tensor in tensors:
    for batch in (int(b) for b in _BATCH.value):
      p = plan(cfg, tensor, batch)
      print(f"# tensor={tensor} batch={batch}: {p['per_device_gb']} GB/device "
            f"(weights {p['weights_bytes_from_specs'] / GB:.2f} GB, cache "
            f"{p['cache_bytes_from_specs'] / GB:.3f} GB, compile {p['measured']['compile_s']} s)",
            file=sys.stderr, flush=True)
      plans.append(p)
  settings = {"model_gin": _MODEL_GIN.value, "gin": _GIN_BINDINGS.value,
              "segment_length": _SEGMENT.value, "memory_len": cfg.memory_len,
              "new_tokens": _NEW_TOKENS.value, "dtype": cfg.dtype, "param_dtype": cfg.param_dtype,
              "backend": "XLA:CPU buffer assignment", "fast_compile": _FAST_COMPILE.value,
              "jax_version": jax.__version__, "machine": bench_common.machine()}
  bench_common.emit({"benchmark": "decode_memory_plan_10b", "unit": "bytes per device",
                     "settings": settings, "plans": plans}, _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
