"""The knowledge study's knowledge tasks and its five arms (mixtures).

Every arm trains `knowledge_masked_lm` on `DataConfig.corpus`. Arms 2-4 add one task
over the triples of `DataConfig.kg`: one row per triple, the relation or the tail masked
(half each, `DataConfig.uktp_relation_mask_prob`), the UKTP task embedding. They differ
only in what sits beside the triple:

  knowledge_study_triples     nothing: `[CLS] h r t [SEP]`
  knowledge_study_uktp        the sentence `triple_alignment.align_triples` pairs it with; a masked
                              tail is masked in the sentence too (nothing to copy)
  knowledge_study_misaligned  a sentence about another person (the aligned sentences,
                              moved to other heads): UKTP's layout without its alignment
  knowledge_study_uktp_bare   UKTP's rows, but each drawn row drops its sentence with
                              probability `BARE_ROW_SHARE` (`drop_sentences`): UKTP that
                              also trains the bare triple layout arm 2 trains

A triple that no sentence states (the K people's) gets the triple-only row in every arm,
so all arms see the same triples equally often. See benchmarks/knowledge_study.py.
"""

from __future__ import annotations

from ernie3_jax.runtime import tf_runtime  # noqa: F401  (first: hides GPUs from TensorFlow)
import numpy as np
import seqio

from ernie3_jax.data import data_config as dc
from ernie3_jax.data import triple_alignment, uktp
from ernie3_jax.runtime.tf_runtime import tf
from ernie3_jax.model import task_ids
from ernie3_jax.tasks import pretraining

TEXT_TASK = "knowledge_masked_lm"
KNOWLEDGE_TASKS = {"triples": "study_triples", "uktp": "study_uktp",
                   "misaligned": "study_misaligned", "uktp_bare": "study_uktp_bare"}
ARMS = {"text": "knowledge_study_text", "triples": "knowledge_study_triples",
        "uktp": "knowledge_study_uktp", "misaligned": "knowledge_study_misaligned",
        "uktp_bare": "knowledge_study_uktp_bare"}
# The share of the uktp_bare arm's rows trained without their sentence: half, so its
# triples are read bare about as often as beside their sentence.
BARE_ROW_SHARE = 0.5
# Keeps drop_sentences' draws apart from those of the preprocessors after it.
_DROP_SALT = 7919


def knowledge_rows(cfg: dc.DataConfig, split: str, pairing: str) -> list[dict]:
  """One example per KG triple: {head, relation, tail, sentence, spans} where the
  sentence is "" (triple only), the aligned sentence ("uktp", "uktp_bare"), or another
  head's sentence ("misaligned")."""
  kg = dc.knowledge_graph(cfg.kg, cfg.aliases)
  aligned = {}
  if pairing != "triples":
    examples, _ = pretraining.aligned_rows_and_report(cfg, split)
    aligned = {e.triple: e for e in examples}
  donors = {}
  if pairing == "misaligned":
    # Aligned triples sorted by head; each takes the sentence `shift` places on, where
    # shift is the most triples any head has, so the donor is always another head.
    order = sorted(aligned, key=lambda t: (t.head, t.relation))
    shift = max(np.unique([t.head for t in order], return_counts=True)[1], default=0)
    if order and shift >= len(order):
      raise ValueError(f"DataConfig.kg={cfg.kg!r}: misaligned pairing needs aligned triples "
                       "of at least two heads")
    donors = {t: aligned[order[(i + shift) % len(order)]] for i, t in enumerate(order)}
  rows = []
  for triple in kg.triples:
    row = {"head": triple.head, "relation": triple.relation, "tail": triple.tail,
           "sentence": "", "head_span": (-1, -1), "tail_span": (-1, -1), "mentions": ()}
    if triple in donors:
      donor = donors[triple]
      row.update(sentence=donor.sentence, mentions=donor.mention_spans)
    elif triple in aligned:
      e = aligned[triple]
      row.update(sentence=e.sentence, head_span=e.head_span, tail_span=e.tail_span,
                 mentions=e.mention_spans)
    rows.append(row)
  return rows


def _source_fn(pairing: str):
  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed
    rows = knowledge_rows(dc.current(), split, pairing)
    width = max([len(r["mentions"]) for r in rows] + [1])
    mentions = np.full((len(rows), width, 2), -1, np.int32)
    for i, r in enumerate(rows):
      if r["mentions"]:
        mentions[i, :len(r["mentions"])] = r["mentions"]
    strings = lambda k: tf.constant([r[k] for r in rows], tf.string, shape=[len(rows)])
    return tf.data.Dataset.from_tensor_slices({
        "head": strings("head"), "relation": strings("relation"), "tail": strings("tail"),
        "sentence": strings("sentence"),
        "head_span": np.asarray([r["head_span"] for r in rows], np.int32).reshape(-1, 2),
        "tail_span": np.asarray([r["tail_span"] for r in rows], np.int32).reshape(-1, 2),
        "mention_spans": mentions})
  return dataset_fn


def drop_sentences(dataset: tf.data.Dataset, seed: int | None = None, *,
                   share: float) -> tf.data.Dataset:
  """Empties the sentence of each row with probability `share`, so that row trains the
  triple alone. Row i's draw is a pure function of (seed, i); the running index goes on
  over repeated epochs, so every epoch draws afresh."""
  if not 0.0 <= share <= 1.0:
    raise ValueError(f"share={share!r}: a probability in [0, 1]")
  base = tf.constant((0 if seed is None else int(seed)) + _DROP_SALT, tf.int64)

  def blank(index, ex):
    draw = tf.random.stateless_uniform([], seed=tf.stack([base, index]))
    return dict(ex, sentence=tf.where(draw < share, tf.constant(""), ex["sentence"]))

  return dataset.enumerate().map(blank)


def _drop_half_the_sentences(dataset, seed=None):
  return drop_sentences(dataset, pretraining.preprocess_seed(seed), share=BARE_ROW_SHARE)


# Preprocessors an arm runs on its rows before they become examples: uktp_bare reads
# UKTP's aligned rows (`knowledge_rows`) and drops some of their sentences.
_ROW_PREPROCESSORS = {"uktp_bare": [_drop_half_the_sentences]}


def _knowledge_preprocessor(dataset, sequence_length, seed=None):
  cfg = dc.current()
  # A masked tail is masked in the sentence too (tail_mask_prob=1 after the relation's
  # share): every arm's targets are the relation or the tail, never copyable words.
  return uktp.uktp(dataset, pretraining.preprocess_seed(seed),
                   vocab=dc.vocabulary(cfg.vocabulary), sequence_length=sequence_length,
                   relation_mask_prob=cfg.uktp_relation_mask_prob, task_id=task_ids.UKTP,
                   level_weights=cfg.level_weights, mask_ratio=cfg.mask_ratio,
                   tail_mask_prob=1.0)


def register() -> None:
  for pairing, name in KNOWLEDGE_TASKS.items():
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(_source_fn(pairing), splits=pretraining.SPLITS),
        preprocessors=_ROW_PREPROCESSORS.get(pairing, [])
        + [_knowledge_preprocessor, pretraining.fill_missing],
        output_features=pretraining.FEATURES)
  seqio.MixtureRegistry.add(ARMS["text"], [(TEXT_TASK, 1.0)])
  for pairing, name in KNOWLEDGE_TASKS.items():
    seqio.MixtureRegistry.add(ARMS[pairing], [(TEXT_TASK, 1.0), (name, 1.0)])


if ARMS["text"] not in seqio.MixtureRegistry.names():
  register()
