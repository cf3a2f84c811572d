"""Text generation through the NLG path: greedy, sampling and beam search.

`generate` decodes with the key/value cache of `model/decode_cache.py`: the
prompts are run segment by segment (full segments go to the recurrence memory,
exactly as in training), then every new token costs one position per layer.
Prefill and the whole token loop (`lax.while_loop`) are one jitted function, so
nothing is re-traced per token.

Prompts of different lengths keep their own positions: row b's segments start
at its first token, rows commit segments at different steps, and no left
padding is needed.

`reference_greedy_generate` is the uncached original: it re-runs the open
segment for every token; tests check the cached path against it.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from ernie3_jax.model import Ernie3, init_memory
from ernie3_jax.model.decode_cache import CachedNLGDecoder, prefill_width, reorder_rows
from ernie3_jax.model.ernie3 import PAD_ID
from ernie3_jax.model import task_ids

EOS_ID = 1
STRATEGIES = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """How to pick tokens.

  Attributes:
    strategy: "greedy", "sample" or "beam".
    temperature: sampling divides the logits by this (> 0).
    top_k: sampling keeps only the k most likely tokens (0: all).
    top_p: sampling keeps the smallest set of tokens whose probability sums to
      at least p (nucleus sampling; 1.0: all).
    num_beams: beams per prompt for beam search.
    length_penalty: beam search ranks finished beams by
      log p / ((5 + length) / 6) ** length_penalty (0: plain log-probability).
    stop_ids: generating any of these ends a row (the stop token is kept).
  """

  strategy: str = "greedy"
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  num_beams: int = 4
  length_penalty: float = 0.0
  stop_ids: tuple[int, ...] = (EOS_ID,)

  def __post_init__(self):
    if self.strategy not in STRATEGIES:
      raise ValueError(f"strategy={self.strategy!r}; expected one of {STRATEGIES}")
    if self.temperature <= 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.num_beams < 1:
      raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")


@dataclasses.dataclass
class Generation:
  """Per prompt: generated ids (prompt excluded, stop token kept) and their log-prob."""

  tokens: list[list[int]]
  log_probs: list[float]


# -- token selection -----------------------------------------------------------


def top_k_mask(logits: jax.Array, k: jax.Array | int) -> jax.Array:
  """True for the k largest logits of each row [..., V] (ties with the k-th kept; k <= 0: all).

  `k` may be traced, so changing it does not recompile.
  """
  k = jnp.asarray(k, jnp.int32)
  descending = -jnp.sort(-logits, axis=-1)
  kth = jnp.take(descending, jnp.clip(k - 1, 0, logits.shape[-1] - 1), axis=-1)
  return jnp.logical_or(k <= 0, logits >= kth[..., None])


def top_p_mask(logits: jax.Array, p: jax.Array | float) -> jax.Array:
  """True for the smallest set of most likely tokens whose probability sums to >= p."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  order = jnp.argsort(-probs, axis=-1)
  sorted_probs = jnp.take_along_axis(probs, order, axis=-1)
  # A token is kept while the mass of the tokens before it is still short of p
  # (p >= 1 keeps everything, whatever the rounding of the cumulative sum).
  before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  keep_sorted = jnp.logical_or(before < p, p >= 1.0)
  return jnp.put_along_axis(jnp.zeros(logits.shape, jnp.bool_), order, keep_sorted, axis=-1,
                            inplace=False)


def sampling_args(options: DecodeOptions) -> dict[str, jax.Array]:
  """The options the compiled loop takes as traced values (changing them never recompiles)."""
  # Stop ids are padded to a multiple of 4 with -1, which no token equals.
  size = max(4, -(-len(options.stop_ids) // 4) * 4)
  stop = list(options.stop_ids) + [-1] * (size - len(options.stop_ids))
  return {"greedy": jnp.asarray(options.strategy == "greedy"),
          "temperature": jnp.asarray(options.temperature, jnp.float32),
          "top_k": jnp.asarray(options.top_k, jnp.int32),
          "top_p": jnp.asarray(options.top_p, jnp.float32),
          "length_penalty": jnp.asarray(options.length_penalty, jnp.float32),
          "stop_ids": jnp.asarray(stop, jnp.int32)}


def select_tokens(logits: jax.Array, rng: jax.Array, args: dict[str, jax.Array]) -> jax.Array:
  """One token per row [B] from logits [B, V]: argmax, or a tempered top-k / top-p draw."""
  def sample(logits):
    scaled = logits.astype(jnp.float32) / args["temperature"]
    keep = jnp.logical_and(top_k_mask(scaled, args["top_k"]), top_p_mask(scaled, args["top_p"]))
    return jax.random.categorical(rng, jnp.where(keep, scaled, -jnp.inf)).astype(jnp.int32)

  # A branch, not a select: greedy decoding skips the sorts that sampling needs.
  greedy = lambda logits: jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.lax.cond(args["greedy"], greedy, sample, logits)


def _is_stop(token: jax.Array, stop_ids: jax.Array) -> jax.Array:
  return jnp.any(token[:, None] == stop_ids[None, :], axis=-1)


# -- decoding loops --------------------------------------------------------------


def _keep(cache):
  return cache


def _sample_loop(decoder, dp, cache, logits, rng, max_new_tokens, args, constrain=_keep):
  """Greedy or sampled decoding; returns (tokens [B, N], lengths [B], log-probs [B]).
  `constrain` pins the cache's sharding after every step (identity on one device)."""
  b = logits.shape[0]

  def running(state):
    step, _, _, _, done, _, _, _ = state
    return jnp.logical_and(step < max_new_tokens, jnp.logical_not(jnp.all(done)))

  def token_body(state):
    step, cache, logits, out, done, lengths, log_probs, rng = state
    rng, key = jax.random.split(rng)
    token = jnp.where(done, PAD_ID, select_tokens(logits, key, args))
    token_lp = jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], axis=-1)[:, 0]
    log_probs = log_probs + jnp.where(done, 0.0, token_lp)
    lengths = lengths + jnp.logical_not(done)
    out = out.at[:, step].set(token)
    done = jnp.logical_or(done, _is_stop(token, args["stop_ids"]))
    logits, cache = decoder.advance(dp, cache, token)
    return step + 1, constrain(cache), logits, out, done, lengths, log_probs, rng

  # Tokens run in an inner loop until some row's open segment is full; the outer loop
  # commits those rows, so the per-token body holds no commit and no cond. (Measured
  # alone, this moved the batch-1 step by less than the noise; the per-token cache
  # copies it was aimed at came from the cache writes, see `attend_one`.)
  def segment_body(state):
    step, cache, *rest = state
    cache = constrain(decoder.commit(dp, cache, decoder.full_rows(cache)))
    tokens_left = lambda s: jnp.logical_and(running(s),
                                            jnp.logical_not(jnp.any(decoder.full_rows(s[1]))))
    return jax.lax.while_loop(tokens_left, token_body, (step, cache, *rest))

  state = (jnp.int32(0), cache, logits, jnp.zeros((b, max_new_tokens), jnp.int32),
           jnp.zeros((b,), jnp.bool_), jnp.zeros((b,), jnp.int32), jnp.zeros((b,), jnp.float32),
           rng)
  state = jax.lax.while_loop(running, segment_body, state)
  return state[3], state[5], state[6]


def _beam_loop(decoder, dp, cache, logits, max_new_tokens, num_beams, args, constrain=_keep):
  """Beam search; returns the best beam's (tokens [B, N], lengths [B], log-probs [B])."""
  b, vocab = logits.shape
  k = num_beams
  rows = jnp.repeat(jnp.arange(b), k)
  cache, logits = constrain(reorder_rows(cache, rows)), logits[rows]
  # Every beam starts as the same prompt: only beam 0 may be extended at first.
  scores = jnp.tile(jnp.asarray([0.0] + [-jnp.inf] * (k - 1), jnp.float32), (b, 1))
  finished_lp = jnp.full((vocab,), -jnp.inf).at[PAD_ID].set(0.0)

  def cond(state):
    step, _, _, _, done, _, _ = state
    return jnp.logical_and(step < max_new_tokens, jnp.logical_not(jnp.all(done)))

  def body(state):
    step, cache, logits, out, done, lengths, scores = state
    # A finished beam stays in the race unchanged: its only extension is pad at 0.
    lp = jnp.where(done[:, None], finished_lp, jax.nn.log_softmax(logits.astype(jnp.float32)))
    candidates = (scores[:, :, None] + lp.reshape(b, k, vocab)).reshape(b, k * vocab)
    scores, index = jax.lax.top_k(candidates, k)
    parent = (jnp.arange(b)[:, None] * k + index // vocab).reshape(-1)
    token = (index % vocab).reshape(-1).astype(jnp.int32)
    cache, out = reorder_rows(cache, parent), out[parent]
    done, lengths = done[parent], lengths[parent]
    out = out.at[:, step].set(token)
    lengths = lengths + jnp.logical_not(done)
    done = jnp.logical_or(done, _is_stop(token, args["stop_ids"]))
    logits, cache = decoder.step(dp, cache, token)
    return step + 1, constrain(cache), logits, out, done, lengths, scores

  state = (jnp.int32(0), cache, logits, jnp.zeros((b * k, max_new_tokens), jnp.int32),
           jnp.zeros((b * k,), jnp.bool_), jnp.zeros((b * k,), jnp.int32), scores)
  _, _, _, out, _, lengths, scores = jax.lax.while_loop(cond, body, state)
  lengths = lengths.reshape(b, k)
  penalty = ((5.0 + lengths) / 6.0) ** args["length_penalty"]
  best = jnp.argmax(scores / penalty, axis=-1)
  pick = jnp.arange(b) * k + best
  return out[pick], lengths.reshape(-1)[pick], jnp.take_along_axis(scores, best[:, None], 1)[:, 0]


@functools.lru_cache(maxsize=32)
def _compiled_generate(config, segment_length: int, max_new_tokens: int, num_beams: int,
                       mesh=None, rules=None):
  """The jitted prefill + token loop, built once per (config, lengths, beams, mesh).

  num_beams 0 is greedy / sampling; the sampling options are traced arguments. With a
  mesh, the parameters come in with their named shardings, the cache is pinned to its
  own (`parallel/inference.py`) and the outputs are replicated.
  """
  decoder = CachedNLGDecoder(Ernie3(config), segment_length, task_ids.DOCUMENT_LM)
  constrain = _keep
  if mesh is not None:
    from ernie3_jax.parallel import inference  # pylint: disable=g-import-not-at-top
    constrain = functools.partial(inference.constrain_cache, mesh=mesh, rules=rules)

  def run(params, prompts, prompt_lengths, rng, args):
    dp = decoder.prepare(params)
    cache = constrain(decoder.init_cache(dp, prompts.shape[0]))
    logits, cache = decoder.prefill(dp, cache, prompts, prompt_lengths)
    cache = constrain(cache)
    if num_beams:
      return _beam_loop(decoder, dp, cache, logits, max_new_tokens, num_beams, args, constrain)
    return _sample_loop(decoder, dp, cache, logits, rng, max_new_tokens, args, constrain)

  if mesh is None:
    return jax.jit(run)
  from ernie3_jax.parallel import inference  # pylint: disable=g-import-not-at-top
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(run, in_shardings=(inference.param_shardings(Ernie3(config), mesh, rules),
                                    replicated, replicated, replicated, replicated),
                 out_shardings=replicated)


def pack_prompts(prompts: Sequence[Sequence[int]], segment_length: int,
                 vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Prompts -> ([B, C * S] ids, each row's tokens first; [B] lengths), validated.
  Prompts all shorter than a segment take `decode_cache.prefill_width` columns."""
  if not prompts:
    raise ValueError("generation needs at least one prompt")
  for i, p in enumerate(prompts):
    if len(p) == 0:
      raise ValueError(f"prompt {i} is empty; generation needs at least one token")
    bad = [t for t in p if not 0 <= t < vocab_size]
    if bad:
      raise ValueError(f"prompt {i} holds ids {bad[:5]} outside the model's vocabulary "
                       f"(Ernie3Config.vocab_size={vocab_size})")
  lengths = np.asarray([len(p) for p in prompts], np.int32)
  longest = int(lengths.max())
  width = (prefill_width(longest, segment_length) if longest < segment_length
           else -(-longest // segment_length) * segment_length)
  packed = np.zeros((len(prompts), width), np.int32)
  for i, p in enumerate(prompts):
    packed[i, :len(p)] = p
  return packed, lengths


def generate(model: Ernie3, params, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             segment_length: int, options: DecodeOptions = DecodeOptions(),
             seed: int = 0, mesh=None, rules=None) -> Generation:
  """Cached decoding of a batch of prompts (lists of ids, any lengths >= 1).

  Returns each prompt's generated ids, cut after its first stop token, and
  their total log-probability under the model (temperature 1; for beam search,
  the chosen beam's score). With a `mesh`, decoding runs sharded over it: the
  parameters by their logical axis names under `rules` (default: the training rules),
  the key/value cache and memory by batch and heads.
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  packed, lengths = pack_prompts(prompts, segment_length, model.config.vocab_size)
  num_beams = options.num_beams if options.strategy == "beam" else 0
  if mesh is not None:
    # pylint: disable=g-import-not-at-top
    from ernie3_jax.parallel import inference, mesh as mesh_lib
    # pylint: enable=g-import-not-at-top
    rules = tuple(rules if rules is not None else mesh_lib.logical_axis_rules())
    params = inference.place_params(params, model, mesh, rules)
  run = _compiled_generate(model.config, segment_length, max_new_tokens, num_beams, mesh,
                           rules)
  out, n, log_probs = jax.device_get(run(params, jnp.asarray(packed), jnp.asarray(lengths),
                                         jax.random.PRNGKey(seed), sampling_args(options)))
  return Generation([out[i, :n[i]].tolist() for i in range(len(prompts))],
                    [float(x) for x in log_probs])


def greedy_generate(model: Ernie3, params, prompt_ids: Sequence[int], max_new_tokens: int,
                    segment_length: int, stop_ids: Sequence[int] = (EOS_ID,)) -> list[int]:
  """Greedy ids generated after one prompt (cached), stopping at a stop id."""
  options = DecodeOptions("greedy", stop_ids=tuple(stop_ids))
  return generate(model, params, [prompt_ids], max_new_tokens, segment_length,
                  options).tokens[0]


# -- the uncached reference ------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _reference_functions(config):
  """Jitted (commit, next-token logits, segment logits) of the uncached path, per config."""
  model = Ernie3(config)
  task = jnp.full((1,), task_ids.DOCUMENT_LM, jnp.int32)

  @jax.jit
  def commit(params, memory, segment):
    _, memory = model.apply({"params": params}, segment, jnp.zeros_like(segment), task, memory,
                            method=Ernie3.nlg_decode)
    return memory

  @jax.jit
  def next_logits(params, memory, segment, position):
    out, _ = model.apply({"params": params}, segment, jnp.zeros_like(segment), task, memory,
                         method=Ernie3.nlg_pretrain)
    return out["lm_logits"][0, position]

  @jax.jit
  def segment_logits(params, memory, segment):
    out, memory = model.apply({"params": params}, segment, jnp.zeros_like(segment), task,
                              memory, method=Ernie3.nlg_pretrain)
    return out["lm_logits"][0], memory

  return commit, next_logits, segment_logits


def reference_greedy_generate(model: Ernie3, params, prompt_ids: Sequence[int],
                              max_new_tokens: int, segment_length: int,
                              stop_ids: Sequence[int] = (EOS_ID,)) -> list[int]:
  """Greedy ids by re-running the open segment for every token (no cache)."""
  cfg = model.config
  jit_commit, jit_next_logits, _ = _reference_functions(cfg)
  commit = lambda memory, segment: jit_commit(params, memory, segment)
  next_logits = lambda memory, segment, position: jit_next_logits(params, memory, segment,
                                                                  position)
  memory = init_memory(cfg, 1)
  ids = list(prompt_ids)
  if not ids:
    raise ValueError("generation needs a non-empty prompt")
  while len(ids) > segment_length:  # full prompt segments go to memory
    memory = commit(memory, jnp.asarray([ids[:segment_length]], jnp.int32))
    ids = ids[segment_length:]
  generated = []
  for _ in range(max_new_tokens):
    padded = np.zeros((1, segment_length), np.int32)
    padded[0, :len(ids)] = ids
    logits = np.asarray(next_logits(memory, jnp.asarray(padded), len(ids) - 1))
    token = int(np.argmax(logits[: cfg.vocab_size]))
    generated.append(token)
    if token in stop_ids:
      break
    ids.append(token)
    if len(ids) == segment_length + 1:
      memory = commit(memory, jnp.asarray([ids[:segment_length]], jnp.int32))
      ids = ids[segment_length:]
  return generated


def reference_logits(model: Ernie3, params, ids: Sequence[int],
                     segment_length: int) -> np.ndarray:
  """Next-token logits [len(ids), V] by running whole segments (teacher forcing)."""
  _, _, segment_logits = _reference_functions(model.config)
  memory = init_memory(model.config, 1)
  rows = []
  for start in range(0, len(ids), segment_length):
    part = list(ids[start:start + segment_length])
    segment = np.zeros((1, segment_length), np.int32)
    segment[0, :len(part)] = part
    logits, memory = segment_logits(params, memory, jnp.asarray(segment))
    rows.append(np.asarray(logits[:len(part)]))
  return np.concatenate(rows, axis=0)


# -- checkpoints and throughput ---------------------------------------------------


@gin.configurable(denylist=["model_dir", "prompts", "max_new_tokens"])
def generate_from_checkpoint(model_dir: str, prompts: list[str], max_new_tokens: int,
                             segment_length: int = 128,
                             options: DecodeOptions | None = None, seed: int = 0) -> list[str]:
  """Decodes continuations of `prompts` with the latest checkpoint (greedy by default),
  sharded over gin's `make_mesh()` (all devices; e.g. `make_mesh.tensor=8`)."""
  from ernie3_jax.data import data_config  # pylint: disable=g-import-not-at-top
  from ernie3_jax.training.evaluate import load_params  # pylint: disable=g-import-not-at-top
  model, params, _, mesh, rules = load_params(model_dir)
  # The vocabulary the model was trained with (DataConfig in MODEL_DIR/config.gin).
  vocab = data_config.vocabulary(data_config.current().vocabulary)
  result = generate(model, params, [vocab.encode(p) for p in prompts], max_new_tokens,
                    segment_length, options or DecodeOptions(), seed, mesh=mesh, rules=rules)
  return [vocab.decode(ids) for ids in result.tokens]


def decode_throughput(model: Ernie3, params, *, batch_size: int = 1, prompt_length: int = 16,
                      max_new_tokens: int = 64, segment_length: int = 64, repeats: int = 2,
                      include_uncached: bool = True, seed: int = 0) -> dict[str, float]:
  """Greedy decoding tokens/s, cached (batched) and uncached (prompt by prompt).

  No stop token, so every row makes `max_new_tokens`; compile time is excluded
  (one warm-up run each); the best of `repeats` timed runs counts.
  """
  rng = np.random.RandomState(seed)
  prompts = rng.randint(3, model.config.vocab_size,
                        size=(batch_size, prompt_length)).tolist()
  options = DecodeOptions("greedy", stop_ids=())

  def best_time(fn) -> float:
    fn()
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
    return min(times)

  tokens = batch_size * max_new_tokens
  cached = best_time(lambda: generate(model, params, prompts, max_new_tokens, segment_length,
                                      options))
  out = {"cached_tokens_per_s": tokens / cached, "cached_seconds": cached}
  if include_uncached:
    uncached = best_time(lambda: [
        reference_greedy_generate(model, params, p, max_new_tokens, segment_length, ())
        for p in prompts])
    out.update(uncached_tokens_per_s=tokens / uncached, uncached_seconds=uncached,
               speedup=uncached / cached)
  return out
