r"""Knowledge probe: what a pre-trained model knows about knowledge-graph triples.

  python -m ernie3_jax.evaluation.knowledge_probe --model_dir=runs/demo

Two rank-classification probes over triples of the knowledge graph:

* relation prediction: given head and tail, rank every relation name of the graph;
* tail cloze: given head and relation, rank candidate tails. Candidates are the
  relation's range (every entity or value that is the tail of that relation
  somewhere in the graph: the tail's type as the graph defines it), either all of
  it (`--tail_candidates=type`) or a seeded sample of K-1 of it plus the gold
  (`--tail_candidates=K`, default 10, so chance is 1/10).

Both are *filtered*: other true answers (another relation that also links head and
tail, another true tail of (head, relation)) are removed from the candidates, so a
model is not punished for a right answer that is not the held-out one. Chance is
the mean of 1/len(candidates).

Scoring (`--scorer`). The default, `nlu`, is the masked-LM log-likelihood of the
candidate in the UKTP input layout, `[CLS] head relation tail [SEP]` with the
probed slot's pieces all [MASK]ed at once: UKTP trains exactly this (relation
pieces masked jointly; entity-level masking does the same to names), and it runs
through the NLU stack, the one UKTP trains, so the UKTP ablation shows up here.
`--nlu_task=knowledge_masked_lm` feeds the knowledge-masked-LM task embedding
instead of UKTP's, for comparing with a model that never trained the UKTP one.
`nlg` scores the verbalised triple "head relation tail" with the causal NLG stack
(the zero-shot path). Scores are per-piece means by default (candidate names have
1-6 pieces; a summed joint score would favour short names).

Triples (`--triples`): `heldout` (default) are the graph's triples that no corpus
sentence states, so a model can only get them by generalising; `stated` is a seeded
sample of the others; or a path to a head<TAB>relation<TAB>tail file.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
from typing import Callable, Sequence

import numpy as np

from ernie3_jax.data import knowledge_graph as kg_lib
from ernie3_jax.data.knowledge_graph import KnowledgeGraph, Triple
from ernie3_jax.data.triple_alignment import relation_text
from ernie3_jax.evaluation import zero_shot
from ernie3_jax.runtime import compilation_cache
from ernie3_jax.runtime import storage

RELATION, TAIL = "relation", "tail"


@dataclasses.dataclass(frozen=True)
class ProbeItem:
  """One question: rank `candidates` (relation ids or tail names) for `triple`."""

  kind: str  # RELATION or TAIL
  triple: Triple
  candidates: tuple[str, ...]
  gold: int  # index of the true answer in candidates


class Facts:
  """Lookups over a knowledge graph: true relations per pair, tails, relation ranges."""

  def __init__(self, kg: KnowledgeGraph):
    self.relations = sorted({t.relation for t in kg.triples})
    self.pair_relations: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    self.tails: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    ranges: dict[str, dict[str, None]] = collections.defaultdict(dict)
    for t in kg.triples:
      self.pair_relations[(t.head, t.tail)].add(t.relation)
      self.tails[(t.head, t.relation)].add(t.tail)
      ranges[t.relation].setdefault(t.tail)
    self.ranges = {r: sorted(v) for r, v in ranges.items()}


def relation_item(triple: Triple, facts: Facts) -> ProbeItem:
  """Every relation of the graph, less the other ones that also link head and tail."""
  if triple.relation not in facts.relations:
    raise ValueError(f"relation {triple.relation!r} of {triple} is not in the graph")
  others = facts.pair_relations.get((triple.head, triple.tail), set()) - {triple.relation}
  candidates = tuple(r for r in facts.relations if r not in others)
  return ProbeItem(RELATION, triple, candidates, candidates.index(triple.relation))


def tail_item(triple: Triple, facts: Facts, num_candidates: int | None,
              rng: np.random.Generator) -> ProbeItem:
  """The gold tail plus distractors from the relation's range (all, or a sample)."""
  true_tails = facts.tails.get((triple.head, triple.relation), set())
  pool = [e for e in facts.ranges.get(triple.relation, ())
          if e not in true_tails and e != triple.head]
  if num_candidates is not None:
    if num_candidates < 2:
      raise ValueError(f"--tail_candidates={num_candidates}: need at least 2 (gold + 1)")
    take = min(num_candidates - 1, len(pool))
    pool = [pool[i] for i in sorted(rng.choice(len(pool), size=take, replace=False))]
  candidates = [triple.tail] + pool
  order = rng.permutation(len(candidates))  # the gold's position must not be a cue
  candidates = tuple(candidates[i] for i in order)
  return ProbeItem(TAIL, triple, candidates, candidates.index(triple.tail))


def build_items(triples: Sequence[Triple], facts: Facts, num_candidates: int | None,
                seed: int) -> tuple[list[ProbeItem], list[ProbeItem]]:
  """(relation items, tail items); tail items with no distractor are left out."""
  relation_items = [relation_item(t, facts) for t in triples]
  tail_items = []
  for i, t in enumerate(triples):
    item = tail_item(t, facts, num_candidates, np.random.default_rng([seed, i]))
    if len(item.candidates) > 1:
      tail_items.append(item)
  return relation_items, tail_items


def chance(items: Sequence[ProbeItem]) -> float:
  """Expected accuracy of a uniform random pick."""
  return float(np.mean([1.0 / len(it.candidates) for it in items])) if items else float("nan")


# A scorer maps items to one score per candidate (higher = more likely).
ItemScorer = Callable[[Sequence[ProbeItem]], list[np.ndarray]]


def accuracy(items: Sequence[ProbeItem], scorer: ItemScorer) -> float:
  """Share of items whose best-scoring candidate is the gold (ties: the first)."""
  if not items:
    return float("nan")
  scores = scorer(items)
  return float(np.mean([int(np.argmax(s)) == it.gold for it, s in zip(items, scores)]))


def filled(item: ProbeItem, candidate: str) -> tuple[str, str, str]:
  """(head, relation words, tail) with the candidate in the probed slot."""
  h, r, t = item.triple
  if item.kind == RELATION:
    r = candidate
  else:
    t = candidate
  return h, relation_text(r), t


# -- model scorers --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SlotItem:
  """A question with one masked slot, marked "{}" in `prompt`: rank `candidates` for it.

  prompt: (head, relation words, tail), the triple layout, whose parts are encoded
    separately as UKTP encodes them; or (text,), one sentence encoded whole, as
    knowledge-masked LM reads passages.
  context: a second segment after the prompt's [SEP] (UKTP's sentence side), or "".
    A "{}" in it is the same slot: the candidate is masked there too and both places
    are scored together, as UKTP masks a tail in the triple and the sentence at once.
  """

  kind: str  # RELATION or TAIL: what the slot asks for
  prompt: tuple[str, ...]
  candidates: tuple[str, ...]
  gold: int
  context: str = ""


def slot_item(item: ProbeItem) -> SlotItem:
  """A graph probe item in the triple layout."""
  h, r, t = item.triple
  if item.kind == RELATION:
    return SlotItem(RELATION, (h, "{}", t), tuple(relation_text(c) for c in item.candidates),
                    item.gold)
  return SlotItem(TAIL, (h, relation_text(r), "{}"), item.candidates, item.gold)


class MaskedSlotScorer:
  """NLU scorer: log p(candidate pieces | the prompt with the slot's pieces [MASK]ed), the
  candidate's pieces all masked at once, through `Ernie3.nlu_pretrain` with `task_id`'s
  embedding. Takes `SlotItem`s, or `ProbeItem`s (scored in the triple layout).

  Each candidate gets as many [MASK]s as it has pieces, so candidates of different
  lengths are scored on different inputs: the mask count tells the model the length,
  and a wrong candidate of a rarer length can win on that alone. Compare candidates of
  one piece count (`mixed_lengths` counts the items that are not), or use the NLG
  scorer, which reads every candidate as a continuation of one prefix."""

  def __init__(self, model, params, vocab, max_length: int = 48, batch_size: int = 64,
               normalization: str = "mean", task_id: int | None = None, mesh=None):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from ernie3_jax.model import Ernie3  # pylint: disable=g-import-not-at-top
    from ernie3_jax.model import task_ids  # pylint: disable=g-import-not-at-top
    self.vocab, self.max_length, self.batch_size = vocab, max_length, batch_size
    self.normalization = zero_shot.check_normalization(normalization)
    vocab_size = model.config.vocab_size
    task_id = task_ids.UKTP if task_id is None else int(task_id)

    def log_probs(params, tokens, segment_ids, positions):
      """[B, P, V] log-probabilities at `positions` [B, P] (the slot's pieces)."""
      task = jnp.full((tokens.shape[0],), task_id, jnp.int32)
      out = model.apply({"params": params}, tokens, segment_ids, task,
                        method=Ernie3.nlu_pretrain)
      logits = jnp.take_along_axis(out["mlm_logits"], positions[..., None], axis=1)
      return jax.nn.log_softmax(logits[..., :vocab_size].astype(jnp.float32))

    # With a mesh, `params` are placed on it: the pass runs sharded, outputs replicated.
    self._fn = jax.jit(log_probs, out_shardings=zero_shot.replicated_outputs(mesh))
    self._params = params
    self._encode_cache: dict[str, list[int]] = {}

  def _safe(self, ids) -> list[int]:
    # A name spelling a special piece must not break the layout (as in UKTP).
    unk = self.vocab.tokenizer.unk_id()
    return [unk if i in self.vocab.special_ids else int(i) for i in ids]

  def _encode(self, text: str) -> list[int]:
    if text not in self._encode_cache:
      self._encode_cache[text] = self._safe(self.vocab.tokenizer.encode(text))
    return self._encode_cache[text]

  def _sentence(self, text: str, candidate: str) -> tuple[list[int], list[int]]:
    """`text` with the candidate in its "{}", encoded whole (as a passage is): (ids with
    the pieces that overlap the candidate [MASK]ed, those pieces' original ids)."""
    from ernie3_jax.data import knowledge_masking as km  # pylint: disable=g-import-not-at-top
    before, after = text.split("{}")
    ids, spans = km.encode_with_offsets(self.vocab.tokenizer, before + candidate + after)
    ids = self._safe(ids)
    inside = [(s < len(before) + len(candidate)) and (e > len(before)) for s, e in spans]
    return ([self.vocab.mask_id if m else i for i, m in zip(ids, inside)],
            [i for i, m in zip(ids, inside) if m])

  def _prompt(self, item: SlotItem, candidate: str) -> tuple[list[int], list[int]]:
    """(segment-0 ids with the slot masked, the slot's original ids)."""
    if len(item.prompt) == 1:  # a sentence: encoded whole, the candidate's pieces masked
      return self._sentence(item.prompt[0], candidate)
    ids, slot = [], []
    for part in item.prompt:
      if part == "{}":
        slot = self._encode(candidate)
        ids += [self.vocab.mask_id] * len(slot)
      else:
        ids += self._encode(part)
    return ids, slot

  def mixed_lengths(self, items: Sequence) -> int:
    """How many of `items` have candidates of different piece counts in their slot."""
    items = [slot_item(it) if isinstance(it, ProbeItem) else it for it in items]
    return sum(len({len(self._prompt(it, c)[1]) for c in it.candidates}) > 1
               for it in items)

  def row(self, item, candidate: str):
    """tokens, segment ids, targets, weights (int32/float32 [max_length]) of a candidate."""
    if isinstance(item, ProbeItem):
      candidate = relation_text(candidate) if item.kind == RELATION else candidate
      item = slot_item(item)
    prompt, slot = self._prompt(item, candidate)
    if not slot:
      raise ValueError(f"candidate {candidate!r} of {item.prompt} has no pieces in its slot")
    ids = [self.vocab.cls_id] + prompt + [self.vocab.sep_id]
    second, second_slot = [], []
    if "{}" in item.context:
      second, second_slot = self._sentence(item.context, candidate)
      second.append(self.vocab.sep_id)
    elif item.context:
      second = self._encode(item.context) + [self.vocab.sep_id]
    if len(ids) + len(second) > self.max_length:
      raise ValueError(f"{item.prompt} with candidate {candidate!r} needs "
                       f"{len(ids) + len(second)} pieces > max_length={self.max_length}; "
                       "raise max_length")
    tokens = np.zeros(self.max_length, np.int32)
    segments = np.zeros(self.max_length, np.int32)
    targets = np.zeros(self.max_length, np.int32)
    tokens[:len(ids)] = ids
    tokens[len(ids):len(ids) + len(second)] = second
    segments[len(ids):len(ids) + len(second)] = 1
    masked = np.flatnonzero(tokens[:len(ids)] == self.vocab.mask_id)
    targets[masked] = slot
    if second_slot:
      masked = len(ids) + np.flatnonzero(np.asarray(second) == self.vocab.mask_id)
      targets[masked] = second_slot
    return tokens, segments, targets, (targets > 0).astype(np.float32)

  def __call__(self, items: Sequence) -> list[np.ndarray]:
    items = [slot_item(it) if isinstance(it, ProbeItem) else it for it in items]
    rows = [self.row(it, c) for it in items for c in it.candidates]
    # Candidates with as many pieces as each other make the same input (only the targets
    # differ), so each distinct input runs once and every candidate reads its pieces'
    # log-probabilities off it: exact, and several times fewer forward passes.
    readers: dict[bytes, list[int]] = {}
    for i, r in enumerate(rows):
      readers.setdefault(r[0].tobytes() + r[1].tobytes(), []).append(i)
    inputs = list(readers.values())
    sums, counts = np.zeros(len(rows)), np.zeros(len(rows))
    for start in range(0, len(inputs), self.batch_size):
      chunk = inputs[start:start + self.batch_size]
      pad = self.batch_size - len(chunk)
      # Rows are cut to the batch's longest, rounded up to 16 (few shapes to compile).
      width = max(int(np.flatnonzero(rows[c[0]][0]).max()) + 1 for c in chunk)
      width = min(self.max_length, -(-width // 16) * 16)
      stack = lambda k: np.stack([rows[c[0]][k][:width] for c in chunk]
                                 + [np.zeros_like(rows[0][k][:width])] * pad)
      slots = [np.flatnonzero(rows[c[0]][3]) for c in chunk]
      positions = np.zeros((self.batch_size, max(len(p) for p in slots)), np.int32)
      for b, p in enumerate(slots):
        positions[b, :len(p)] = p
      logp = np.asarray(self._fn(self._params, stack(0), stack(1), positions))
      for b, readers_of_input in enumerate(chunk):
        for i in readers_of_input:
          targets = rows[i][2][slots[b]]
          sums[i] = logp[b, np.arange(len(targets)), targets].sum()
          counts[i] = len(targets)
    scores = zero_shot.normalize(sums, counts, self.normalization)
    return _split(scores, items)


class VerbalisedTripleScorer:
  """NLG scorer: log p(" relation tail" | head) or log p(" tail" | head relation)."""

  def __init__(self, nlg_scorer, vocab, normalization: str = "mean"):
    self.scorer, self.vocab = nlg_scorer, vocab
    self.normalization = zero_shot.check_normalization(normalization)

  def __call__(self, items: Sequence[ProbeItem]) -> list[np.ndarray]:
    encode = self.vocab.tokenizer.encode
    pairs = []
    for it in items:
      for c in it.candidates:
        h, r, t = filled(it, c)
        if it.kind == RELATION:
          pairs.append((encode(h), encode(f" {r} {t}")))
        else:
          pairs.append((encode(f"{h} {r}"), encode(f" {t}")))
    sums, counts, _ = self.scorer.score_pairs(pairs)
    return _split(zero_shot.normalize(sums, counts, self.normalization), items)


def _split(flat: np.ndarray, items: Sequence[ProbeItem]) -> list[np.ndarray]:
  out, pos = [], 0
  for it in items:
    out.append(np.asarray(flat[pos:pos + len(it.candidates)]))
    pos += len(it.candidates)
  return out


# -- the command ------------------------------------------------------------------


def select_triples(which: str, kg: KnowledgeGraph, max_triples: int | None,
                   seed: int) -> list[Triple]:
  """`heldout`, `stated` or a triples file; a seeded sample of at most max_triples."""
  heldout = kg_lib.load_triples(kg_lib.EMBEDDED_HELDOUT_KG)
  if which == "heldout":
    triples = heldout
  elif which == "stated":
    held = set(heldout)
    triples = [t for t in kg.triples if t not in held]
  elif storage.isfile(which):
    triples = kg_lib.load_triples(which)
  else:
    raise ValueError(f"--triples={which!r}: expected heldout, stated or a triples file")
  known = set(kg.triples)
  missing = [t for t in triples if t not in known]
  if missing:
    raise ValueError(f"--triples={which!r}: {len(missing)} triples are not in the graph "
                     f"(first: {missing[0]}); the probe filters answers with the graph")
  if max_triples is not None and len(triples) > max_triples:
    rng = np.random.default_rng(seed)
    triples = [triples[i] for i in sorted(rng.choice(len(triples), max_triples, replace=False))]
  return triples


def run_probe(triples: Sequence[Triple], kg: KnowledgeGraph, scorer: ItemScorer,
              num_candidates: int | None = 10, seed: int = 0) -> dict[str, float]:
  """Accuracy and chance of both probes (and, for a scorer that counts them, the items
  whose candidates differ in length: `mixed_lengths`)."""
  relation_items, tail_items = build_items(triples, Facts(kg), num_candidates, seed)
  mixed = {}
  if hasattr(scorer, "mixed_lengths"):
    mixed = {f"{kind}_mixed_lengths": float(scorer.mixed_lengths(items))
             for kind, items in ((RELATION, relation_items), (TAIL, tail_items))}
  return mixed | {"relation_accuracy": accuracy(relation_items, scorer),
          "relation_chance": chance(relation_items),
          "relation_items": float(len(relation_items)),
          "tail_accuracy": accuracy(tail_items, scorer),
          "tail_chance": chance(tail_items),
          "tail_items": float(len(tail_items))}


def _parse_candidates(value: str) -> int | None:
  if value == "type":
    return None
  try:
    return int(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f"--tail_candidates={value!r}: 'type' or an integer "
                                     ">= 2") from None


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model_dir", required=True, help="a training run's MODEL_DIR")
  parser.add_argument("--triples", default="heldout", help="heldout, stated or a .tsv path")
  parser.add_argument("--max_triples", type=int, default=500)
  parser.add_argument("--tail_candidates", type=_parse_candidates, default=10)
  parser.add_argument("--scorer", choices=("nlu", "nlg"), default="nlu")
  parser.add_argument("--normalization", choices=("sum", "mean"), default="mean")
  parser.add_argument("--nlu_task", choices=("uktp", "knowledge_masked_lm"), default="uktp",
                      help="task embedding of the nlu scorer's input; knowledge_masked_lm "
                      "compares a model trained without UKTP on an embedding it has learnt")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--gin", action="append", default=[], metavar="NAME=VALUE",
                      help="gin binding applied after MODEL_DIR/config.gin (repeatable), "
                      "e.g. make_mesh.tensor=8 to shard the model over 8 devices")
  parser.add_argument("--output", help="also write the metrics to this JSON file")
  compilation_cache.add_arguments(parser)
  args = parser.parse_args(argv)
  compilation_cache.setup_from_args(args)

  from ernie3_jax.runtime import tf_runtime  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from ernie3_jax.data import data_config as dc  # pylint: disable=g-import-not-at-top
  nlg = zero_shot.load_scorer(args.model_dir, 64, args.batch_size, args.gin)  # parses gin
  cfg = dc.current()
  kg = dc.knowledge_graph(cfg.kg, cfg.aliases)
  vocab = dc.vocabulary(cfg.vocabulary)
  if args.scorer == "nlu":
    from ernie3_jax.model import task_ids  # pylint: disable=g-import-not-at-top
    task_id = {"uktp": task_ids.UKTP, "knowledge_masked_lm": task_ids.KNOWLEDGE_MASKED_LM}
    scorer = MaskedSlotScorer(nlg.model, nlg.params, vocab, batch_size=args.batch_size,
                              normalization=args.normalization,
                              task_id=task_id[args.nlu_task], mesh=nlg.mesh)
  else:
    scorer = VerbalisedTripleScorer(nlg, vocab, args.normalization)
  triples = select_triples(args.triples, kg, args.max_triples, args.seed)
  metrics = run_probe(triples, kg, scorer, args.tail_candidates, args.seed)
  scorer_name = args.scorer + (f"/{args.nlu_task}" if args.scorer == "nlu" else "")
  print(f"knowledge probe ({scorer_name} scorer, {args.triples} triples, "
        f"tail candidates {args.tail_candidates or 'type'}, model {args.model_dir}):")
  for kind in (RELATION, TAIL):
    print(f"  {kind:9s} accuracy {metrics[f'{kind}_accuracy']:.3f}  chance "
          f"{metrics[f'{kind}_chance']:.3f}  items {int(metrics[f'{kind}_items'])}")
    if metrics.get(f"{kind}_mixed_lengths"):
      print(f"    {int(metrics[f'{kind}_mixed_lengths'])} of these items have candidates of "
            "different piece counts, which the nlu scorer compares on different inputs "
            "(biased: see MaskedSlotScorer; --scorer=nlg has no such bias)")
  import jax  # pylint: disable=g-import-not-at-top
  if args.output and jax.process_index() == 0:
    storage.write_atomic(args.output, json.dumps(
        dict(metrics, **{k: str(v) for k, v in vars(args).items()}), indent=1))
  sys.stdout.flush()
  return metrics


if __name__ == "__main__":
  main()
