"""Cached decoding against the uncached re-running reference; strategies; the CLI."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ernie3_jax.inference import generation
from ernie3_jax.inference.generation import DecodeOptions
from ernie3_jax.model import Ernie3, init_memory
from ernie3_jax.model.decode_cache import CachedNLGDecoder, prefill_width
from ernie3_jax.model import task_ids
from tests import model_testing

# Segment 4 and memory 8: generations of 12 cross several segment boundaries and
# the memory rolls over; a 9-token prompt commits two segments before decoding.
SEGMENT = 4
NEW_TOKENS = 12
PROMPTS = [[5, 17, 33], [40, 2, 61, 7, 12, 90, 3, 44, 8], [70, 11, 23, 56, 9, 31]]
NO_STOP = DecodeOptions("greedy", stop_ids=())
# Noise added to every parameter: large enough that swapping any two same-shaped parameters
# (u and v, say) moves the logits far past the tolerances below.
RANDOM_SCALE = 0.2


@functools.lru_cache(maxsize=None)
def _setup():
  """The tiny model with its NLG-path parameters (all that decoding uses), jit-initialised,
  then randomised: every parameter, the attention's content and position biases (zero at
  init) included, so the cached path must use each one where the re-run does."""
  cfg = model_testing.config()
  model = Ernie3(cfg)
  tokens, segments, tasks = model_testing.random_batch(cfg, 1, SEGMENT)
  init = jax.jit(functools.partial(model.init, method=Ernie3.nlg_pretrain))
  variables = init(jax.random.PRNGKey(0), tokens, segments, tasks, init_memory(cfg, 1))
  return model, model_testing.randomised(nn.unbox(variables["params"]), scale=RANDOM_SCALE)


@functools.lru_cache(maxsize=None)
def _greedy():
  model, params = _setup()
  return generation.generate(model, params, PROMPTS, NEW_TOKENS, SEGMENT, NO_STOP)


def _sequence_log_prob(model, params, prompt, continuation):
  """Log-probability of `continuation` after `prompt` by whole-segment re-runs."""
  ids = list(prompt) + list(continuation)
  logp = jax.nn.log_softmax(generation.reference_logits(model, params, ids, SEGMENT), -1)
  return float(sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(continuation)))


def test_the_decoding_model_has_every_parameter_randomised():
  _, params = _setup()
  names = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names.append(jax.tree_util.keystr(path))
    assert np.std(np.asarray(leaf)) > RANDOM_SCALE / 2, names[-1]
  assert any("content_bias" in n for n in names) and any("position_bias" in n for n in names)


def test_cached_greedy_matches_uncached_reference_for_a_batch():
  model, params = _setup()
  result = _greedy()
  for prompt, tokens in zip(PROMPTS, result.tokens):
    assert len(tokens) == NEW_TOKENS
    assert tokens == generation.reference_greedy_generate(model, params, prompt, NEW_TOKENS,
                                                          SEGMENT, stop_ids=())
  # The reported log-prob is the model's probability of the generated tokens.
  assert result.log_probs[0] == pytest.approx(
      _sequence_log_prob(model, params, PROMPTS[0], result.tokens[0]), abs=1e-4)


def test_prompts_shorter_than_a_segment_prefill_without_padding_to_it():
  # Widths are the divisors of the segment: 9 under 12-token segments runs 12 columns.
  assert [prefill_width(n, 12) for n in (1, 2, 3, 5, 6, 7, 9, 12, 30)] == \
      [1, 2, 3, 6, 6, 12, 12, 12, 12]
  model, params = _setup()
  prompts = [[5, 17], [40]]
  packed, lengths = generation.pack_prompts(prompts, SEGMENT, model.config.vocab_size)
  assert packed.shape == (2, 2) and lengths.tolist() == [2, 1]
  result = generation.generate(model, params, prompts, NEW_TOKENS, SEGMENT, NO_STOP)
  for prompt, tokens in zip(prompts, result.tokens):
    assert tokens == generation.reference_greedy_generate(model, params, prompt, NEW_TOKENS,
                                                          SEGMENT, stop_ids=())
  # A prompt as long as a segment, or longer, still runs whole segments.
  assert generation.pack_prompts([[5] * 4], SEGMENT, 100)[0].shape == (1, 4)
  assert generation.pack_prompts([[5] * 5, [6]], SEGMENT, 100)[0].shape == (2, 8)


def test_cached_step_logits_match_full_rerun_logits():
  model, params = _setup()
  decoder = CachedNLGDecoder(model, SEGMENT, task_ids.DOCUMENT_LM)
  prompt, continuation = PROMPTS[2], _greedy().tokens[2]
  dp = decoder.prepare(params)
  packed, lengths = generation.pack_prompts([prompt], SEGMENT, model.config.vocab_size)
  logits, cache = jax.jit(decoder.prefill)(dp, decoder.init_cache(dp, 1), packed, lengths)
  cached = [np.asarray(logits[0])]
  step = jax.jit(decoder.step)
  for token in continuation[:-1]:
    logits, cache = step(dp, cache, jnp.asarray([token], jnp.int32))
    cached.append(np.asarray(logits[0]))
  full = generation.reference_logits(model, params, prompt + continuation, SEGMENT)
  np.testing.assert_allclose(np.stack(cached), full[len(prompt) - 1:-1], atol=2e-5, rtol=1e-5)


def test_top_k_one_sampling_is_greedy():
  model, params = _setup()
  sampled = generation.generate(model, params, PROMPTS, NEW_TOKENS, SEGMENT,
                                DecodeOptions("sample", temperature=0.7, top_k=1, stop_ids=()),
                                seed=3)
  assert sampled.tokens == _greedy().tokens


def test_top_p_keeps_the_smallest_set_reaching_p():
  probs = np.asarray([[0.05, 0.4, 0.1, 0.3, 0.15]])
  logits = jnp.log(jnp.asarray(probs))
  # Sorted: 0.4, 0.3, 0.15, 0.1, 0.05 -> cumulative 0.4, 0.7, 0.85, 0.95, 1.0.
  expect = {0.3: [1], 0.4: [1], 0.5: [1, 3], 0.7: [1, 3], 0.8: [1, 3, 4], 0.96: [0, 1, 2, 3, 4]}
  for p, kept in expect.items():
    mask = np.asarray(generation.top_p_mask(logits, p))[0]
    assert sorted(np.flatnonzero(mask).tolist()) == kept, p
  mask = np.asarray(generation.top_k_mask(logits, 2))[0]
  assert sorted(np.flatnonzero(mask).tolist()) == [1, 3]


def test_top_p_sampling_draws_only_from_the_nucleus():
  logits = jnp.log(jnp.asarray([[0.05, 0.4, 0.1, 0.3, 0.15]] * 512))
  args = generation.sampling_args(DecodeOptions("sample", top_p=0.7))
  draws = np.asarray(generation.select_tokens(logits, jax.random.PRNGKey(0), args))
  assert set(draws.tolist()) == {1, 3}
  # Renormalised inside the nucleus: 0.4 / 0.7 of the draws are token 1.
  assert abs(np.mean(draws == 1) - 0.4 / 0.7) < 0.07


def test_beam_search_with_one_beam_is_greedy():
  model, params = _setup()
  beam = generation.generate(model, params, PROMPTS, NEW_TOKENS, SEGMENT,
                             DecodeOptions("beam", num_beams=1, stop_ids=()))
  assert beam.tokens == _greedy().tokens


def test_beam_search_finds_a_sequence_at_least_as_likely_as_greedy():
  model, params = _setup()
  prompts = PROMPTS[:2]
  beam = generation.generate(model, params, prompts, NEW_TOKENS, SEGMENT,
                             DecodeOptions("beam", num_beams=4, stop_ids=()))
  for i, prompt in enumerate(prompts):
    greedy_lp = _sequence_log_prob(model, params, prompt, _greedy().tokens[i])
    beam_lp = _sequence_log_prob(model, params, prompt, beam.tokens[i])
    assert len(beam.tokens[i]) == NEW_TOKENS
    assert beam.log_probs[i] == pytest.approx(beam_lp, abs=1e-4)
    assert beam_lp >= greedy_lp - 1e-5


def test_stop_tokens_end_each_row_at_its_first_stop():
  model, params = _setup()
  greedy = _greedy().tokens
  stop = greedy[1][5]
  result = generation.generate(model, params, PROMPTS, NEW_TOKENS, SEGMENT,
                               DecodeOptions("greedy", stop_ids=(stop,)))
  for full, tokens in zip(greedy, result.tokens):
    cut = full.index(stop) + 1 if stop in full else len(full)
    assert tokens == full[:cut]
  assert len(result.tokens[1]) <= 6


def test_bad_input_is_rejected_with_a_clear_error():
  model, params = _setup()
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    generation.generate(model, params, [[3], []], 2, SEGMENT)
  with pytest.raises(ValueError, match="vocab_size=96"):
    generation.generate(model, params, [[3, 500]], 2, SEGMENT)
  with pytest.raises(ValueError, match="top_p"):
    DecodeOptions("sample", top_p=0.0)
  with pytest.raises(ValueError, match="strategy"):
    DecodeOptions("nucleus")


def test_decode_throughput_reports_both_paths():
  model, params = _setup()
  # The shapes of the greedy test, so its compiled loop is reused.
  out = generation.decode_throughput(model, params, batch_size=3, prompt_length=9,
                                     max_new_tokens=NEW_TOKENS, segment_length=SEGMENT,
                                     repeats=1)
  assert out["cached_tokens_per_s"] > 0 and out["uncached_tokens_per_s"] > 0
  assert math.isclose(out["speedup"], out["uncached_seconds"] / out["cached_seconds"])


@pytest.mark.slow  # builds and restores a checkpoint: about a minute on 2 CPU cores
def test_cli_generates_from_a_tiny_checkpoint(tmp_path, capsys):
  from ernie3_jax.config import gin_utils
  from ernie3_jax.inference import generate
  from tests import training_testing
  model_dir = tmp_path / "run"
  # num_steps=0 saves the freshly initialised state: a real checkpoint, no train step
  # to compile. The shipped vocabulary has 4,000 pieces, so the model must too.
  # An NLG batch of 8 so the checkpointed memory shards over the 8 test devices.
  training_testing.run(model_dir, 0, nlg_batch_size=8,
                       extra_bindings=["Ernie3Config.vocab_size=4000"])
  # train() got its batch sizes as arguments; the run's config names the NLG batch the
  # checkpointed memory was made for, as a gin-configured run's config.gin does.
  (model_dir / "config.gin").write_text(gin_utils.effective_config() +
                                        "\ntrain.nlg_batch_size = 8\n")
  argv = ["generate", f"--checkpoint={model_dir}", "--prompt=The river", "--prompt=A",
          "--max_new_tokens=5", "--strategy=sample", "--top_k=5", "--segment_length=4"]
  assert generate.main(argv) == 0
  out = capsys.readouterr().out
  assert out.count("continuation:") == 2 and "prompt: The river" in out


def test_cli_names_a_missing_or_empty_model_dir(tmp_path, capsys):
  from ernie3_jax.inference import generate
  assert generate.main(["generate", f"--checkpoint={tmp_path / 'absent'}", "--prompt=x"]) == 1
  assert "no such directory" in capsys.readouterr().err
  assert generate.main(["generate", f"--checkpoint={tmp_path}", "--prompt=x"]) == 1
  assert "has no config.gin" in capsys.readouterr().err
  (tmp_path / "config.gin").write_text("")
  assert generate.main(["generate", f"--checkpoint={tmp_path}", "--prompt=x"]) == 1
  assert "no checkpoint in" in capsys.readouterr().err


@pytest.mark.slow  # one model init and two compiles per variant
@pytest.mark.parametrize("overrides", [
    dict(pre_layer_norm=True, memory_mode="previous_layer"),
    dict(share_position_projection=True, scan_layers=True, memory_len=3),
])
def test_cached_logits_match_rerun_for_other_stack_variants(overrides):
  cfg = model_testing.config(**overrides)
  model = Ernie3(cfg)
  params = model_testing.randomised(nn.unbox(model_testing.init_params(cfg)["params"]),
                                    scale=RANDOM_SCALE)
  decoder = CachedNLGDecoder(model, SEGMENT, task_ids.DOCUMENT_LM)
  ids = PROMPTS[1] + PROMPTS[2]
  dp = decoder.prepare(params)
  packed, lengths = generation.pack_prompts([ids[:5]], SEGMENT, cfg.vocab_size)
  logits, cache = jax.jit(decoder.prefill)(dp, decoder.init_cache(dp, 1), packed, lengths)
  cached = [np.asarray(logits[0])]
  step = jax.jit(decoder.step)
  for token in ids[5:]:
    logits, cache = step(dp, cache, jnp.asarray([token], jnp.int32))
    cached.append(np.asarray(logits[0]))
  full = generation.reference_logits(model, params, ids, SEGMENT)
  np.testing.assert_allclose(np.stack(cached), full[4:], atol=2e-5, rtol=1e-5)
