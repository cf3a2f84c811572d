r"""Per-device memory of the 10B training step, planned for the paper's 384 devices.

  python benchmarks/memory_plan_10b.py --devices=64 \
      --targets=6x64x1,3x128x1 --remat=full,dots_no_batch --microbatches=1,4

Nothing is allocated: the state is `jax.eval_shape`d and the jitted train step
(NLU + NLG batches, AdamW, recurrence memory in the state; the same step and
shardings as training) is AOT-lowered and compiled on a simulated CPU mesh of
--devices devices; `compiled.memory_analysis()` gives one device's argument,
output, temp and code bytes.

A target is data x fsdp x tensor devices. Per-device memory depends on the shard
shapes, set by fsdp x tensor, and on the rows each batch shard holds
(global batch / (data x fsdp)); the data axis only replicates. So each target is
compiled as the mesh 1 x fsdp' x tensor with fsdp' = min(fsdp, devices / tensor)
and the same rows per batch shard:
  * fsdp' == fsdp: the compiled step's per-device memory is the target's.
  * fsdp' < fsdp: the state (parameters, AdamW moments, memory, batch) is
    recomputed exactly from each array's PartitionSpec on the target mesh, and
    the temp bytes are fitted as a + g / fsdp from a second compile at fsdp' / 2
    (g: gradients and optimizer temporaries, sharded like the parameters; a:
    activations and gathered layer weights, which do not shrink with fsdp).
Prints one JSON line: the parameter count, every plan with measured and
projected bytes, whether a step fits 32 GB and 80 GB per device, and the plans
that fit.
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
_DEVICES = flags.DEFINE_integer("devices", 64, "Simulated CPU devices to compile on.")
_TARGETS = flags.DEFINE_list("targets", ["6x64x1", "3x128x1"],
                             "Target meshes, data x fsdp x tensor.")
_REMAT = flags.DEFINE_list("remat", ["full", "dots_no_batch"], "Remat policies to try.")
_MICRO = flags.DEFINE_list("microbatches", ["1", "4"], "Micro-batch counts to try.")
_GLOBAL_BATCH = flags.DEFINE_integer("global_batch", 6144,
                                     "Sequences per step over all tasks (paper: 6144).")
_NLG_FRACTION = flags.DEFINE_float("nlg_fraction", 0.25,
                                   "Share of each batch shard's rows that are NLG streams.")
_LENGTH = flags.DEFINE_integer("sequence_length", 512, "NLU length and NLG segment length.")
_BUDGETS = flags.DEFINE_list("budgets_gb", ["32", "80"], "Per-device memory budgets (GB).")
_FAST_COMPILE = flags.DEFINE_boolean("fast_compile", True,
                                     "Skip LLVM optimisation (does not change the memory "
                                     "figures, only the generated code).")
_OUTPUT = flags.DEFINE_string("output", None, "Append the JSON line to this file.")

GB = 1e9


def parse_target(text: str) -> tuple[int, int, int]:
  try:
    data, fsdp, tensor = (int(x) for x in text.lower().split("x"))
  except ValueError:
    raise ValueError(f"--targets entry {text!r} is not data x fsdp x tensor, e.g. 3x128x1")
  if min(data, fsdp, tensor) < 1:
    raise ValueError(f"--targets entry {text!r}: mesh sizes must be positive")
  return data, fsdp, tensor


class StepCompiler:
  """Compiles the 10B train step for one mesh / remat / micro-batch setting."""

  def __init__(self, base_cfg):
    self.base_cfg = base_cfg

  def compile(self, fsdp: int, tensor: int, remat: str, microbatches: int, nlu_rows: int,
              nlg_rows: int) -> dict:
    """nlu_rows / nlg_rows are per batch shard; returns measured bytes per device."""
    import dataclasses  # pylint: disable=g-import-not-at-top
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
    from ernie3_jax.model import Ernie3  # pylint: disable=g-import-not-at-top
    from ernie3_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    from ernie3_jax.training import optimizer, partitioning  # pylint: disable=g-import-not-at-top
    from ernie3_jax.training.train_step import make_train_step  # pylint: disable=g-import-not-at-top

    cfg = dataclasses.replace(self.base_cfg, remat_policy=remat, scan_layers=True)
    model = Ernie3(cfg)
    tx = optimizer.make_optimizer(optimizer.learning_rate_schedule())
    mesh = mesh_lib.make_mesh(1, fsdp, tensor, num_devices=fsdp * tensor)
    rules = mesh_lib.logical_axis_rules()
    nlu_global, nlg_global = nlu_rows * fsdp, nlg_rows * fsdp
    abstract, shardings = partitioning.state_shardings(model, tx, mesh, rules, nlg_global)
    rows = partitioning.batch_sharding(mesh, rules)
    replicated = NamedSharding(mesh, P())
    length = _LENGTH.value
    i32, f32 = jnp.int32, jnp.float32
    sds = jax.ShapeDtypeStruct
    nlu = {"tokens": sds((nlu_global, length), i32), "segment_ids": sds((nlu_global, length), i32),
           "task_id": sds((nlu_global,), i32), "mlm_targets": sds((nlu_global, length), i32),
           "mlm_weights": sds((nlu_global, length), f32), "label": sds((nlu_global,), i32),
           "label_weight": sds((nlu_global,), f32)} if nlu_rows else None
    nlg = {"tokens": sds((nlg_global, length), i32), "targets": sds((nlg_global, length), i32),
           "loss_weights": sds((nlg_global, length), f32),
           "segment_ids": sds((nlg_global, length), i32), "reset": sds((nlg_global,), jnp.bool_),
           "task_id": sds((nlg_global,), i32)} if nlg_rows else None
    step = make_train_step(model, tx, {}, microbatches)
    jitted = jax.jit(step, in_shardings=(shardings, rows, rows, replicated, replicated),
                     out_shardings=(shardings, replicated), donate_argnums=(0,))
    start = time.perf_counter()
    # jax.set_mesh, not `with mesh`: only an abstract mesh in context makes flax's
    # logical activation constraints apply (under `with mesh` they are no-ops).
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      compiled = jitted.lower(abstract, nlu, nlg, sds((), f32),
                              jax.eval_shape(lambda: jax.random.PRNGKey(0))).compile()
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    axis_sizes = {"data": 1, "fsdp": fsdp, "tensor": tensor}
    batch_bytes = sum(
        partitioning.per_device_bytes(b, jax.tree_util.tree_map(lambda _: rows, b), axis_sizes)
        for b in (nlu, nlg) if b is not None)
    return {
        "compile_s": round(seconds, 1),
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
        "alias_bytes": int(stats.alias_size_in_bytes),
        "temp_bytes": int(stats.temp_size_in_bytes),
        "generated_code_bytes": int(stats.generated_code_size_in_bytes),
        "peak_bytes": int(getattr(stats, "peak_memory_in_bytes", 0) or 0),
        "state_bytes_from_specs": partitioning.per_device_bytes(abstract, shardings, axis_sizes),
        "batch_bytes_from_specs": batch_bytes,
        "_abstract": abstract, "_shardings": shardings, "_batches": (nlu, nlg), "_rows": rows,
    }


def total_bytes(m: dict) -> int:
  """Live bytes of one device during the step: inputs, outputs not aliased to a
  donated input, XLA temporaries, code."""
  return (m["argument_bytes"] + m["output_bytes"] - m["alias_bytes"] + m["temp_bytes"]
          + m["generated_code_bytes"])


def plan(compiler: StepCompiler, target: tuple[int, int, int], remat: str,
         microbatches: int, devices: int) -> dict:
  """Measured (and, if fsdp exceeds the simulated devices, projected) bytes of one plan."""
  import jax  # pylint: disable=g-import-not-at-top
  from ernie3_jax.training import partitioning  # pylint: disable=g-import-not-at-top
  data, fsdp, tensor = target
  shards = data * fsdp
  if _GLOBAL_BATCH.value % shards:
    raise ValueError(f"--global_batch={_GLOBAL_BATCH.value} is not divisible by data x fsdp "
                     f"= {shards} of target {data}x{fsdp}x{tensor}")
  rows = _GLOBAL_BATCH.value // shards
  nlg_rows = int(round(rows * _NLG_FRACTION.value))
  nlu_rows = rows - nlg_rows
  if tensor > devices:
    raise ValueError(f"tensor={tensor} exceeds --devices={devices}")
  fsdp_c = min(fsdp, devices // tensor)
  out = {"target": f"{data}x{fsdp}x{tensor}", "devices": data * fsdp * tensor,
         "remat_policy": remat, "microbatches": microbatches,
         "rows_per_batch_shard": {"nlu": nlu_rows, "nlg": nlg_rows},
         "compiled_mesh": f"1x{fsdp_c}x{tensor}"}
  for name, n in (("NLU", nlu_rows), ("NLG", nlg_rows)):
    if n % microbatches:  # a sweep crosses targets and counts; this pair cannot run
      out["skipped"] = (f"{name} rows per batch shard ({n}) are not divisible by "
                        f"{microbatches} micro-batches")
      return out
  measured = compiler.compile(fsdp_c, tensor, remat, microbatches, nlu_rows, nlg_rows)
  out["measured"] = {k: v for k, v in measured.items() if not k.startswith("_")}
  out["measured"]["total_bytes"] = total_bytes(measured)
  if fsdp_c == fsdp:
    out["method"] = "compiled at the target's fsdp x tensor (data only replicates)"
    projected = total_bytes(measured)
  else:
    if fsdp_c < 2:
      raise ValueError(f"target {data}x{fsdp}x{tensor} needs fsdp >= 2 on --devices={devices}")
    half = compiler.compile(fsdp_c // 2, tensor, remat, microbatches, nlu_rows, nlg_rows)
    out["fit_point"] = {k: v for k, v in half.items() if not k.startswith("_")}
    # temp(F) = a + g / F through the two compiles.
    g = (half["temp_bytes"] - measured["temp_bytes"]) * fsdp_c
    a = measured["temp_bytes"] - g / fsdp_c
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    nlu, nlg = measured["_batches"]
    state_t = partitioning.per_device_bytes(measured["_abstract"], measured["_shardings"], sizes)
    batch_t = sum(partitioning.per_device_bytes(
        b, jax.tree_util.tree_map(lambda _: measured["_rows"], b), sizes)
        for b in (nlu, nlg) if b is not None)
    temp_t = a + g / fsdp
    # Outputs alias the donated state; what is not aliased (metrics) is as measured.
    unaliased_out = measured["output_bytes"] - measured["alias_bytes"]
    projected = int(state_t + batch_t + temp_t + unaliased_out
                    + measured["generated_code_bytes"])
    out["method"] = "extrapolated in fsdp: state from specs, temp = a + g/fsdp"
    out["projection"] = {"state_bytes": state_t, "batch_bytes": batch_t,
                         "temp_bytes": int(temp_t), "temp_fit_a": int(a), "temp_fit_g": int(g)}
  out["per_device_gb"] = round(projected / GB, 3)
  out["fits"] = {f"{b}GB": projected <= float(b) * GB for b in _BUDGETS.value}
  return out


def main(argv):
  del argv
  targets = [parse_target(t) for t in _TARGETS.value]
  devices = _DEVICES.value
  # Before JAX starts: the simulated devices (checked on a small config: fast compiles give
  # the same memory figures).
  bench_common.simulate_cpu_devices(devices, _FAST_COMPILE.value)
  import gin  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from ernie3_jax.model import Ernie3, Ernie3Config, init_memory  # pylint: disable=g-import-not-at-top
  # Every gin-configurable module is imported before the config is parsed (and locked).
  from ernie3_jax.parallel import mesh  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from ernie3_jax.training import optimizer  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  if len(jax.devices()) < devices:
    raise RuntimeError(f"asked for --devices={devices} but JAX sees {len(jax.devices())} "
                       "(was JAX imported before XLA_FLAGS was set?)")
  gin.parse_config_files_and_bindings([os.path.join(bench_common.REPO_ROOT, _MODEL_GIN.value)
                                       if not os.path.isabs(_MODEL_GIN.value)
                                       else _MODEL_GIN.value], _GIN_BINDINGS.value)
  cfg = Ernie3Config()

  def init():
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    tokens = jnp.ones((1, 8), jnp.int32)
    return Ernie3(cfg).init(jax.random.PRNGKey(0), tokens, jnp.zeros_like(tokens),
                            jnp.zeros((1,), jnp.int32), init_memory(cfg, 1, 4))
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  params = nn.unbox(jax.eval_shape(init))["params"]
  num_params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))

  compiler = StepCompiler(cfg)
  plans = []
  for target in targets:
    for remat in _REMAT.value:
      for micro in (int(m) for m in _MICRO.value):
        p = plan(compiler, target, remat, micro, devices)
        if "skipped" in p:
          print(f"# {p['target']} microbatches={micro}: skipped, {p['skipped']}",
                file=sys.stderr, flush=True)
          continue
        print(f"# {p['target']} remat={remat} microbatches={micro}: "
              f"{p['per_device_gb']} GB/device ({p['method']})", file=sys.stderr, flush=True)
        plans.append(p)
  fitting = {f"{b}GB": sorted((p for p in plans if p["fits"][f"{b}GB"]),
                              key=lambda p: p["per_device_gb"])
             for b in _BUDGETS.value}
  settings = {"model_gin": _MODEL_GIN.value, "gin": _GIN_BINDINGS.value,
              "simulated_devices": devices, "global_batch": _GLOBAL_BATCH.value,
              "sequence_length": _LENGTH.value, "nlg_fraction": _NLG_FRACTION.value,
              "memory_len": cfg.memory_len, "dtype": cfg.dtype, "param_dtype": cfg.param_dtype,
              "backend": "XLA:CPU buffer assignment", "fast_compile": _FAST_COMPILE.value, "jax_version": jax.__version__,
              "machine": bench_common.machine()}
  bench_common.emit({
      "benchmark": "memory_plan_10b", "unit": "bytes per device", "settings": settings,
      "num_params": int(num_params), "plans": plans,
      "fits": {b: [{"target": p["target"], "remat_policy": p["remat_policy"],
                    "microbatches": p["microbatches"], "per_device_gb": p["per_device_gb"]}
                   for p in ps] for b, ps in fitting.items()},
      "best": {b: (ps[0]["target"] + f" remat={ps[0]['remat_policy']} "
                   f"microbatches={ps[0]['microbatches']}") if ps else None
               for b, ps in fitting.items()}}, _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
