r"""Generates continuations of prompts with a trained checkpoint.

  python -m ernie3_jax.generate --checkpoint=runs/demo \
      --prompt="Cael Helelteth was born in" --max_new_tokens=24 \
      --strategy=sample --temperature=0.8 --top_p=0.9 --seed=1

Reads MODEL_DIR/config.gin (written by `ernie3_jax.main`) for the model size and
segment length, restores the latest checkpoint and decodes every `--prompt`
in one batch with the cached NLG decoder (`ernie3_jax.generation`).
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags

_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "MODEL_DIR of a training run (holds config.gin, checkpoints/).")
_PROMPTS = flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable; one batch).")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 32, "Tokens to generate per prompt.")
_STRATEGY = flags.DEFINE_enum("strategy", "greedy", ["greedy", "sample", "beam"],
                              "How tokens are picked.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature (> 0).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1.0: off).")
_NUM_BEAMS = flags.DEFINE_integer("num_beams", 4, "Beams per prompt (--strategy=beam).")
_LENGTH_PENALTY = flags.DEFINE_float("length_penalty", 0.0,
                                     "Beam ranking exponent on ((5 + length) / 6).")
_STOP_IDS = flags.DEFINE_list("stop_ids", [], "Extra token ids that end a row (eos always does).")
_SEGMENT_LENGTH = flags.DEFINE_integer(
    "segment_length", None, "Segment length (default: the run's generate_from_checkpoint "
    "binding in config.gin, else 128).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def load_run_config(model_dir: str) -> None:
  """Parses MODEL_DIR/config.gin, failing clearly when the directory is not a run."""
  from ernie3_jax import gin_utils  # pylint: disable=g-import-not-at-top
  if not model_dir:
    raise ValueError("--checkpoint is required: the MODEL_DIR of a training run")
  if not os.path.isdir(model_dir):
    raise FileNotFoundError(f"--checkpoint={model_dir!r}: no such directory")
  config = os.path.join(model_dir, "config.gin")
  if not os.path.isfile(config):
    raise FileNotFoundError(f"--checkpoint={model_dir!r} has no config.gin; it is not a "
                            "MODEL_DIR written by `python -m ernie3_jax.main --run_mode=train`")
  gin_utils.parse_gin([config])


def run_generation(model_dir: str, prompts: list[str], max_new_tokens: int, options,
                   segment_length: int | None = None, seed: int = 0) -> list[str]:
  """Loads the run in `model_dir` and returns one continuation per prompt."""
  from ernie3_jax import generation  # pylint: disable=g-import-not-at-top
  if not prompts:
    raise ValueError("give at least one --prompt")
  load_run_config(model_dir)
  kwargs = {} if segment_length is None else {"segment_length": segment_length}
  return generation.generate_from_checkpoint(model_dir, prompts, max_new_tokens,
                                             options=options, seed=seed, **kwargs)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from ernie3_jax import generation  # pylint: disable=g-import-not-at-top
  try:
    stop_ids = tuple(int(s) for s in _STOP_IDS.value)
  except ValueError as e:
    raise app.UsageError(f"--stop_ids={','.join(_STOP_IDS.value)}: ids must be integers") from e
  options = generation.DecodeOptions(
      _STRATEGY.value, _TEMPERATURE.value, _TOP_K.value, _TOP_P.value, _NUM_BEAMS.value,
      _LENGTH_PENALTY.value, (generation.EOS_ID,) + stop_ids)
  outputs = run_generation(_CHECKPOINT.value, list(_PROMPTS.value), _MAX_NEW_TOKENS.value,
                           options, _SEGMENT_LENGTH.value, _SEED.value)
  for prompt, text in zip(_PROMPTS.value, outputs):
    print(f"prompt: {prompt}\ncontinuation: {text}")
  sys.stdout.flush()


def _main_or_error(argv):
  try:
    main(argv)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(_main_or_error)
