r"""Generates continuations of prompts with a trained checkpoint.

  python -m ernie3_jax.inference.generate --checkpoint=runs/demo \
      --prompt="Cael Helelteth was born in" --max_new_tokens=24 \
      --strategy=sample --temperature=0.8 --top_p=0.9 --seed=1

Reads MODEL_DIR/config.gin (written by `ernie3_jax.cli.main`) for the model size and
segment length, restores the latest checkpoint's parameters onto the device mesh
(`--gin=make_mesh.tensor=8`: heads, MLP and vocabulary split 8 ways; default: the
run's mesh over all devices) and decodes every `--prompt` in one batch with the
cached NLG decoder (`ernie3_jax.inference.generation`).
"""

from __future__ import annotations

import os
import sys

from absl import flags

from ernie3_jax.runtime import compilation_cache
from ernie3_jax.runtime import storage


def _define_flags() -> flags.FlagValues:
  """This command's flags, in their own FlagValues (no clash with other entry points)."""
  fv = flags.FlagValues()
  flags.DEFINE_string("checkpoint", None,
                      "MODEL_DIR of a training run (holds config.gin and checkpoints/).",
                      flag_values=fv)
  flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable; one batch).", flag_values=fv)
  flags.DEFINE_integer("max_new_tokens", 32, "Tokens to generate per prompt.", flag_values=fv)
  flags.DEFINE_enum("strategy", "greedy", ["greedy", "sample", "beam"], "How tokens are picked.",
                    flag_values=fv)
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature (> 0).", flag_values=fv)
  flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).",
                       flag_values=fv)
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1.0: off).", flag_values=fv)
  flags.DEFINE_integer("num_beams", 4, "Beams per prompt (--strategy=beam).", flag_values=fv)
  flags.DEFINE_float("length_penalty", 0.0, "Beam ranking exponent on ((5 + length) / 6).",
                     flag_values=fv)
  flags.DEFINE_list("stop_ids", [], "Extra token ids that end a row (eos always does).",
                    flag_values=fv)
  flags.DEFINE_integer("segment_length", None,
                       "Segment length (default: the run's generate_from_checkpoint binding in "
                       "config.gin, else 128).", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Sampling seed.", flag_values=fv)
  flags.DEFINE_multi_string("gin", [], "A gin binding applied after MODEL_DIR/config.gin "
                            "(repeatable), e.g. make_mesh.tensor=8 to shard the model and the "
                            "decode cache over 8 devices.", flag_values=fv)
  compilation_cache.define_absl_flags(fv)
  return fv


def load_run_config(model_dir: str | None, bindings: list[str] = ()) -> None:
  """Parses MODEL_DIR/config.gin and then `bindings`, failing clearly when the directory
  is not a run."""
  from ernie3_jax.config import gin_utils  # pylint: disable=g-import-not-at-top
  if not model_dir:
    raise ValueError("--checkpoint is required: the MODEL_DIR of a training run")
  model_dir = storage.check(model_dir, "--checkpoint")
  if not storage.isdir(model_dir):
    raise FileNotFoundError(f"--checkpoint={model_dir!r}: no such directory")
  config = os.path.join(model_dir, "config.gin")
  if not storage.isfile(config):
    raise FileNotFoundError(f"--checkpoint={model_dir!r} has no config.gin; it is not a "
                            "MODEL_DIR written by `python -m ernie3_jax.cli.main --run_mode=train`")
  gin_utils.parse_gin([config], list(bindings))


def run_generation(model_dir: str | None, prompts: list[str], max_new_tokens: int, options,
                   segment_length: int | None = None, seed: int = 0,
                   bindings: list[str] = ()) -> list[str]:
  """Loads the run in `model_dir` and returns one continuation per prompt."""
  from ernie3_jax.inference import generation  # pylint: disable=g-import-not-at-top
  if not prompts:
    raise ValueError("give at least one --prompt")
  load_run_config(model_dir, bindings)
  kwargs = {} if segment_length is None else {"segment_length": segment_length}
  return generation.generate_from_checkpoint(model_dir, prompts, max_new_tokens,
                                             options=options, seed=seed, **kwargs)


def main(argv: list[str]) -> int:
  """Parses `argv` (program name first), generates, prints; returns the exit status."""
  fv = _define_flags()
  if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
    print(__doc__ + "\n" + fv.get_help())
    return 0
  try:
    rest = fv(argv)
    if len(rest) > 1:
      raise ValueError(f"unexpected arguments: {rest[1:]}")
    compilation_cache.setup(fv[compilation_cache.FLAG_ENABLED].value,
                            fv[compilation_cache.FLAG_DIR].value)
    from ernie3_jax.inference import generation  # pylint: disable=g-import-not-at-top
    try:
      stop_ids = tuple(int(s) for s in fv.stop_ids)
    except ValueError as e:
      raise ValueError(f"--stop_ids={','.join(fv.stop_ids)}: ids must be integers") from e
    options = generation.DecodeOptions(fv.strategy, fv.temperature, fv.top_k, fv.top_p,
                                       fv.num_beams, fv.length_penalty,
                                       (generation.EOS_ID,) + stop_ids)
    outputs = run_generation(fv.checkpoint, list(fv.prompt), fv.max_new_tokens, options,
                             fv.segment_length, fv.seed, list(fv.gin))
  except (flags.Error, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for prompt, text in zip(fv.prompt, outputs):
    print(f"prompt: {prompt}\ncontinuation: {text}")
  return 0


if __name__ == "__main__":
  code = main(sys.argv)
  sys.stdout.flush()
  sys.stderr.flush()
  # Leave without interpreter teardown, as ernie3_jax.cli.main does: TensorFlow's
  # threads (seqio tasks imported by config.gin) can hang it.
  os._exit(code)  # pylint: disable=protected-access
