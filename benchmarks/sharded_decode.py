r"""Greedy decoding tokens/s on one device vs the same program sharded over a device mesh.

  python benchmarks/sharded_decode.py --meshes=1x1x8,2x1x4 --batch_size=8

On simulated CPU devices (--devices, default 8) every "device" shares the same cores,
so this measures what sharding costs (collectives, partitioned kernels), not speed-up:
the ratio against one device is the overhead of running on the mesh. On accelerators
the same command measures the real thing. Each mesh's tokens must equal the
one-device tokens (checked, and reported); the best of --repeats timed calls counts,
after one compiling call.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402  pylint: disable=g-import-not-at-top

_DEVICES = flags.DEFINE_integer("devices", 8, "Simulated CPU devices.")
_MESHES = flags.DEFINE_list("meshes", ["1x1x8", "2x1x4", "1x4x2"], "data x fsdp x tensor.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Prompts decoded together.")
_PROMPT = flags.DEFINE_integer("prompt_length", 32, "Prompt tokens per row.")
_NEW = flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row.")
_SEGMENT = flags.DEFINE_integer("segment_length", 64, "NLG segment length.")
_LAYERS = flags.DEFINE_integer("universal_layers", 4, "Universal-module layers.")
_D_MODEL = flags.DEFINE_integer("d_model", 512, "Width of every layer.")
_HEADS = flags.DEFINE_integer("num_heads", 8, "Attention heads (every stack).")
_VOCAB = flags.DEFINE_integer("vocab_size", 8000, "Vocabulary size.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per setting.")
_OUTPUT = flags.DEFINE_string("output", None, "Append the JSON line to this file.")


def main(argv):
  del argv
  bench_common.simulate_cpu_devices(_DEVICES.value)
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ernie3_jax.inference import generation  # pylint: disable=g-import-not-at-top
  from ernie3_jax.model import Ernie3, Ernie3Config, init_memory  # pylint: disable=g-import-not-at-top
  from ernie3_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top

  d, h = _D_MODEL.value, _HEADS.value
  cfg = Ernie3Config(vocab_size=_VOCAB.value, num_layers=_LAYERS.value, d_model=d,
                     num_heads=h, head_dim=d // h, d_ff=4 * d, nlu_layers=1, nlg_layers=2,
                     task_d_model=d, task_num_heads=h, task_head_dim=d // h, task_d_ff=4 * d,
                     memory_len=_SEGMENT.value, dtype="float32", param_dtype="float32",
                     scan_layers=True)
  model = Ernie3(cfg)
  tokens = jnp.ones((1, 8), jnp.int32)
  params = jax.device_get(nn.unbox(jax.jit(lambda: model.init(
      jax.random.PRNGKey(0), tokens, tokens * 0, jnp.zeros((1,), jnp.int32),
      init_memory(cfg, 1, 4)))())["params"])
  prompts = np.random.RandomState(0).randint(
      3, cfg.vocab_size, size=(_BATCH.value, _PROMPT.value)).tolist()
  options = generation.DecodeOptions("greedy", stop_ids=())

  def timed(mesh):
    placed = params
    if mesh is not None:
      from ernie3_jax.parallel import inference  # pylint: disable=g-import-not-at-top
      placed = inference.place_params(params, model, mesh, mesh_lib.logical_axis_rules())
    call = lambda: generation.generate(model, placed, prompts, _NEW.value, _SEGMENT.value,
                                       options, mesh=mesh)
    out = call()
    best = float("inf")
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      call()
      best = min(best, time.perf_counter() - start)
    return out.tokens, _BATCH.value * _NEW.value / best

  reference, one_device = timed(None)
  results = {"1 device": {"tokens_per_s": round(one_device, 1)}}
  for text in _MESHES.value:
    data, fsdp, tensor = (int(x) for x in text.split("x"))
    got, rate = timed(mesh_lib.make_mesh(data, fsdp, tensor))
    results[f"mesh {text}"] = {"tokens_per_s": round(rate, 1),
                               "ratio_to_one_device": round(rate / one_device, 3),
                               "same_tokens_as_one_device": got == reference}
    print(f"# mesh {text}: {rate:.1f} tokens/s ({rate / one_device:.2f}x one device), "
          f"same tokens: {got == reference}", file=sys.stderr, flush=True)
  bench_common.emit({
      "benchmark": "sharded_decode", "unit": "generated tokens/s (greedy, cached)",
      "settings": {"devices": _DEVICES.value, "platform": jax.devices()[0].platform,
                   "batch_size": _BATCH.value, "prompt_length": _PROMPT.value,
                   "new_tokens": _NEW.value, "segment_length": _SEGMENT.value,
                   "universal_layers": _LAYERS.value, "d_model": d, "num_heads": h,
                   "vocab_size": _VOCAB.value, "jax_version": jax.__version__,
                   "machine": bench_common.machine()},
      "results": results}, _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
