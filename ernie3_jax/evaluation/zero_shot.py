"""Zero-/few-shot rank classification through the NLG (causal) stack.

ERNIE 3.0 evaluates zero-shot by scoring each verbalised candidate continuation with
the NLG stack and picking the most likely one. A row is a (prompt, candidate) pair;
its score is the log-likelihood of the candidate's pieces given the prompt, summed
("sum") or averaged per piece ("mean"). Prompts too long for `max_length` lose their
beginning (the end holds the question), and such truncations are counted.

Few-shot prepends k solved training questions, drawn per question with a seeded
generator (so a run is reproducible and every question sees its own draw).

The seqio side (tasks/superglue_zero_shot.py) registers one task per SuperGLUE task
whose rows are these pairs; `score_task` runs a checkpoint through seqio's
Evaluator score path and returns the task's metrics.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ernie3_jax.model import Ernie3
from ernie3_jax.model import task_ids
from ernie3_jax.superglue import prompts as prompts_lib
from ernie3_jax.runtime import storage

NORMALIZATIONS = ("sum", "mean")


def check_normalization(normalization: str) -> str:
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"normalization={normalization!r}; expected one of {NORMALIZATIONS}")
  return normalization


def fit_prompt(prompt_ids: Sequence[int], target_ids: Sequence[int],
               max_length: int) -> tuple[list[int], bool]:
  """(prompt ids cut from the left to fit `max_length` with the target, truncated?)."""
  if not target_ids:
    raise ValueError("a candidate continuation tokenised to no pieces")
  room = max_length - len(target_ids)
  if room < 1:
    raise ValueError(f"a candidate of {len(target_ids)} pieces leaves no room for the prompt "
                     f"in max_length={max_length}; raise max_length")
  if not prompt_ids:
    raise ValueError("an empty prompt: the first candidate piece would have no context")
  if len(prompt_ids) > room:
    return list(prompt_ids[len(prompt_ids) - room:]), True
  return list(prompt_ids), False


def replicated_outputs(mesh: jax.sharding.Mesh | None):
  """Outputs every process can read whole (None: wherever jit puts them)."""
  if mesh is None:
    return None
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


class NlgScorer:
  """Log-likelihoods of target pieces under the NLG stack (no memory, one segment).

  Rows are padded to `max_length` and scored `batch_size` at a time, so one compiled
  program serves every batch. Causal attention makes right padding invisible to the
  real positions.
  """

  def __init__(self, model: Ernie3, params: Any, max_length: int = 128, batch_size: int = 16,
               mesh: jax.sharding.Mesh | None = None):
    # With a mesh, `params` are placed on it (training.evaluate.load_params): the forward
    # pass runs sharded as they are, and the scores come back replicated to every process.
    self.model, self.params, self.mesh = model, params, mesh
    self.max_length, self.batch_size = int(max_length), int(batch_size)
    vocab_size = model.config.vocab_size

    def batch_scores(params, tokens, target_mask):
      task = jnp.full((tokens.shape[0],), task_ids.DOCUMENT_LM, jnp.int32)
      out, _ = model.apply({"params": params}, tokens, jnp.zeros_like(tokens), task,
                           method=Ernie3.nlg_pretrain)
      logp = jax.nn.log_softmax(out["lm_logits"][:, :-1, :vocab_size].astype(jnp.float32))
      picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
      mask = target_mask[:, 1:].astype(jnp.float32)
      return (picked * mask).sum(-1), mask.sum(-1)

    self._batch_scores = jax.jit(batch_scores, out_shardings=replicated_outputs(mesh))

  def score_rows(self, tokens: Sequence[Sequence[int]], target_masks: Sequence[Sequence[int]]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(sum of target log-probs, number of target pieces) per row.

    `target_masks[i][j]` is 1 where token j of row i is scored given tokens[:j].
    """
    n = len(tokens)
    sums, counts = np.zeros(n, np.float64), np.zeros(n, np.int64)
    for start in range(0, n, self.batch_size):
      stop = min(start + self.batch_size, n)
      tok = np.zeros((self.batch_size, self.max_length), np.int32)
      mask = np.zeros((self.batch_size, self.max_length), np.int32)
      for r in range(start, stop):
        row, m = np.asarray(tokens[r]), np.asarray(target_masks[r])
        if len(row) > self.max_length:
          raise ValueError(f"row {r} has {len(row)} tokens > max_length={self.max_length}")
        if len(row) and row[0] != 0 and m[0]:
          raise ValueError(f"row {r}: the first token cannot be a target (it has no context)")
        tok[r - start, :len(row)] = row
        mask[r - start, :len(m)] = m
      s, c = jax.device_get(self._batch_scores(self.params, tok, mask))
      sums[start:stop], counts[start:stop] = s[:stop - start], c[:stop - start]
    return sums, counts

  def score_pairs(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """(sums, counts, number of left-truncated prompts) for (prompt ids, target ids)."""
    tokens, masks, truncated = [], [], 0
    for prompt_ids, target_ids in pairs:
      fitted, cut = fit_prompt(prompt_ids, target_ids, self.max_length)
      truncated += cut
      tokens.append(fitted + list(target_ids))
      masks.append([0] * len(fitted) + [1] * len(target_ids))
    sums, counts = self.score_rows(tokens, masks)
    return sums, counts, truncated


def normalize(sums: np.ndarray, counts: np.ndarray, normalization: str) -> np.ndarray:
  """Raw summed log-likelihoods, or their per-piece mean."""
  check_normalization(normalization)
  if normalization == "sum":
    return np.asarray(sums, np.float64)
  return np.asarray(sums, np.float64) / np.maximum(counts, 1)


@dataclasses.dataclass
class RankResult:
  """Predicted candidate per question, accuracy and the prompts that lost their start."""

  predictions: list[int]
  accuracy: float
  truncated_prompts: int


def rank_questions(questions: Sequence[prompts_lib.Question], encode: Callable[[str], list[int]],
                   scorer: NlgScorer, normalization: str = "sum") -> RankResult:
  """Scores every candidate of every question and picks the best per question."""
  pairs, owner = [], []
  truncated = 0  # questions whose prompt lost its beginning (for any candidate)
  for qi, q in enumerate(questions):
    prompt_ids = encode(q.prompt)
    cut_any = False
    for cand in q.candidates:
      target_ids = encode(cand)
      fitted, cut = fit_prompt(prompt_ids, target_ids, scorer.max_length)
      cut_any |= cut
      pairs.append((fitted, target_ids))
      owner.append(qi)
    truncated += cut_any
  sums, counts, _ = scorer.score_pairs(pairs)
  scores = normalize(sums, counts, normalization)
  predictions = pick_best(np.asarray(owner), scores, len(questions))
  # A labelled question with no correct candidate counts (wrong); unlabelled ones do not.
  labelled = [i for i, q in enumerate(questions) if q.labelled]
  correct = sum(predictions[i] in questions[i].correct for i in labelled)
  return RankResult(predictions, correct / max(len(labelled), 1), int(truncated))


def pick_best(groups: np.ndarray, scores: np.ndarray, num_groups: int) -> list[int]:
  """Index within its group of the best-scoring row, per group (ties: the first)."""
  best: list[int] = [-1] * num_groups
  best_score = [-np.inf] * num_groups
  position = [0] * num_groups
  for g, s in zip(groups.tolist(), np.asarray(scores).tolist()):
    if best[g] < 0 or s > best_score[g]:
      best[g], best_score[g] = position[g], s
    position[g] += 1
  return best


# -- seqio score path ---------------------------------------------------------


def seqio_score_fn(scorer: NlgScorer, normalization: str = "sum"
                   ) -> Callable[..., list[tuple[int, float]]]:
  """A seqio.Evaluator `score_fn` over PrefixLM model features.

  The converter concatenates inputs and targets into `decoder_target_tokens` and
  puts `decoder_loss_weights` on the target pieces: exactly the rows and masks the
  scorer wants (the shifted `decoder_input_tokens` start with id 0, our padding).
  """
  check_normalization(normalization)

  def score_fn(dataset, model_feature_shapes=None) -> list[tuple[int, float]]:
    del model_feature_shapes
    indices, tokens, masks = [], [], []
    for index, ex in dataset.as_numpy_iterator():
      length = int(np.count_nonzero(ex["decoder_target_tokens"]))
      indices.append(int(index))
      tokens.append(ex["decoder_target_tokens"][:length])
      masks.append((ex["decoder_loss_weights"][:length] > 0).astype(np.int32))
    sums, counts = scorer.score_rows(tokens, masks)
    return list(zip(indices, normalize(sums, counts, normalization).tolist()))

  return score_fn


def load_scorer(model_dir: str, max_length: int = 128, batch_size: int = 16,
                gin_bindings: Sequence[str] = ()) -> NlgScorer:
  """An NlgScorer over the latest checkpoint in `model_dir` (its config.gin is parsed, then
  `gin_bindings`, e.g. "make_mesh.tensor = 8"), its parameters sharded over that mesh."""
  from ernie3_jax.config import gin_utils  # pylint: disable=g-import-not-at-top
  from ernie3_jax.training.evaluate import load_params  # pylint: disable=g-import-not-at-top
  config = os.path.join(model_dir, "config.gin")
  if not storage.isfile(config):
    raise FileNotFoundError(f"{config} does not exist: --model_dir must be a training run's "
                            "MODEL_DIR (it holds config.gin and checkpoints/)")
  gin_utils.parse_gin([config], list(gin_bindings))
  model, params, _, mesh, _ = load_params(model_dir)
  return NlgScorer(model, params, max_length, batch_size, mesh)


def score_task(task_name: str, scorer: NlgScorer, split: str = "validation",
               normalization: str = "sum", num_examples: int | None = None,
               predictions_path: str | None = None) -> dict[str, float]:
  """Runs seqio's Evaluator score path on a registered zero-shot task; its metrics. With
  `predictions_path`, every scored row is written there as jsonl (`prediction_lines`)."""
  import seqio  # pylint: disable=g-import-not-at-top
  from ernie3_jax.runtime import tf_runtime  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  evaluator = seqio.Evaluator(task_name, seqio.PrefixLMFeatureConverter(pack=False),
                              eval_split=split, use_cached=False, seed=None,
                              sequence_length=None, num_examples=num_examples,
                              async_compute_metrics=False)
  if not evaluator.eval_tasks:
    raise ValueError(f"seqio task {task_name!r} has no split {split!r} or no score metric")
  scored: dict[int, float] = {}
  base = seqio_score_fn(scorer, normalization)

  def score_fn(dataset, model_feature_shapes=None):
    out = base(dataset, model_feature_shapes)
    scored.update(out)
    return out

  try:
    metrics, _ = evaluator.evaluate(compute_metrics=True, score_fn=score_fn)
    result = metrics.result()[task_name]
    if predictions_path is not None:
      # The rows scored, in the order of their indices (seqio's cached copy of the task).
      rows = list(evaluator.cached_task_datasets[task_name].as_numpy_iterator())
      storage.write_atomic(predictions_path, "".join(
          json.dumps(line) + "\n" for line in prediction_lines(rows, scored)))
  finally:
    evaluator.close()
  return {k: float(getattr(v, "value", v)) for k, v in result.items()}


def prediction_lines(rows: Sequence[Mapping[str, Any]], scored: Mapping[int, float]
                     ) -> list[dict[str, Any]]:
  """The per-row file of a zero-shot task: one line per (question, candidate) row, in row
  order, with the fields fine-tuning's eval_predictions carry for its candidate rows:
  "idx" (official form), "group", "candidate_index", "candidate" (the candidate's text:
  ReCoRD's entity, else the verbaliser), "chosen" (the question's best-scoring row, the
  first on ties) and "score"; plus "row" and "question" (the question's key)."""
  lines = []
  for index, row in enumerate(rows):
    if index not in scored:
      continue
    idx = _text(row.get("idx", b""))
    lines.append({"row": index, "question": _text(row.get("key", b"")),
                  "idx": json.loads(idx) if idx else None,
                  "group": int(row.get("group", -1)),
                  "candidate_index": int(row.get("candidate", -1)),
                  "candidate": _text(row.get("choice", b"")),
                  "chosen": False, "score": scored[index]})
  best: dict[int, dict[str, Any]] = {}
  for line in lines:
    if line["group"] not in best or line["score"] > best[line["group"]]["score"]:
      best[line["group"]] = line
  for line in best.values():
    line["chosen"] = True
  return lines


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def accuracy_table(results: Mapping[str, Mapping[str, float]]) -> str:
  """A plain-text table of {task: {metric: value}}."""
  lines = []
  for task, metrics in results.items():
    lines.append(f"{task:12s} " + " ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())))
  return "\n".join(lines)


if __name__ == "__main__":
  # The command lives in zero_shot_command.py: it reads the task registry, which imports
  # this library (running it from here keeps `python -m ernie3_jax.evaluation.zero_shot`).
  import runpy  # pylint: disable=g-import-not-at-top
  runpy.run_module("ernie3_jax.evaluation.zero_shot_command", run_name="__main__")
