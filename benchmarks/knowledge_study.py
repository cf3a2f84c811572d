r"""The knowledge study: does aligning a knowledge graph with text (UKTP) move facts
between the two formats? Five arms x several seeds, on identical budgets.

  python benchmarks/knowledge_study.py            # or `make study`

1. Writes the study's corpus, KG and aliases (ernie3_jax/data/knowledge_study_corpus.py)
   and trains a SentencePiece vocabulary on the corpus, under --out_dir/data.
2. Trains each arm x seed with the ordinary trainer (gin_configs/experiments/
   knowledge_study.gin; arms are mixtures of tasks/knowledge_study.py) and probes every
   checkpoint (ernie3_jax/evaluation/study_probes.py).
3. Appends one line per arm x seed to --results. A rerun skips the lines already there
   (same setup fingerprint) and resumes an interrupted training run from its checkpoint.
4. Prints the table (ernie3_jax/evaluation/study_report.py) and writes the learning
   curves to --figure.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The study's learning-rate schedule (docs/KNOWLEDGE_STUDY.md, "Recipe"): bound into every
# run from these flags, so it is part of each result line's setup.
PEAK_LR_DEFAULT = 4e-3
WARMUP_DEFAULT = 1000

_OUT_DIR = flags.DEFINE_string("out_dir", "runs/knowledge_study", "Data and training runs.")
_RESULTS = flags.DEFINE_string("results", "benchmarks/results/knowledge_study.jsonl",
                               "One line per arm x seed is appended here.")
_FIGURE = flags.DEFINE_string("figure", "benchmarks/results/knowledge_study.png",
                              "Learning curves (PNG); '' for none.")
_ARMS = flags.DEFINE_list("arms", ["text", "triples", "uktp", "misaligned", "uktp_bare"],
                          "Arms to run.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds per arm.")
_PEOPLE = flags.DEFINE_integer("num_people", 60, "People in the corpus (all groups).")
_PHRASINGS = flags.DEFINE_integer("phrasings", 5, "Biographies per A and T person.")
_VOCAB = flags.DEFINE_integer("vocab_pieces", 384,
                              "SentencePiece pieces of the study vocabulary.")
_STEPS = flags.DEFINE_integer("steps", 12000, "Training steps per run.")
_PROBE_EVERY = flags.DEFINE_integer("probe_every", 3000, "Steps between probed checkpoints.")
_TEXT_ROWS = flags.DEFINE_integer("text_rows", 16, "Text rows per step (every arm).")
_KNOWLEDGE_ROWS = flags.DEFINE_integer("knowledge_rows", 8, "Knowledge rows per step (arms "
                                       "2-4; the text-only arm has none).")
_PEAK_LR = flags.DEFINE_float("peak_lr", PEAK_LR_DEFAULT,
                              "Peak learning rate (learning_rate_schedule.peak).")
_WARMUP = flags.DEFINE_integer("warmup_steps", WARMUP_DEFAULT,
                               "Warm-up steps (learning_rate_schedule.warmup_steps).")
_GIN = flags.DEFINE_multi_string("gin", [], "Extra gin bindings for every run (NAME=VALUE).")
_LABEL = flags.DEFINE_string("label", "cpu", "Names the machine in the results.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only print the table and figure.")
_ERRORS = flags.DEFINE_bool("errors", False, "Also re-probe each finished run's last checkpoint "
                            "and print where its wrong tail answers go.")
_REPROBE = flags.DEFINE_bool("reprobe", False, "Probe the checkpoints of finished runs whose "
                             "result lines lack a probe (one added since) and rewrite the lines.")


def setup() -> dict:
  from ernie3_jax.data import knowledge_study_corpus as ksc  # pylint: disable=g-import-not-at-top
  return {"design": ksc.design_id(), "num_people": _PEOPLE.value, "phrasings": _PHRASINGS.value,
          "vocab_size": _VOCAB.value, "steps": _STEPS.value, "probe_every": _PROBE_EVERY.value,
          "text_rows": _TEXT_ROWS.value, "knowledge_rows": _KNOWLEDGE_ROWS.value,
          "peak_lr": _PEAK_LR.value, "warmup_steps": _WARMUP.value,
          "gin": list(_GIN.value), "label": _LABEL.value}


# Settings added after results were recorded, at the value those results used: a setting
# at that value stays out of the fingerprint, so the lines recorded before it still match.
SETTINGS_SINCE = {"peak_lr": 2e-3, "warmup_steps": 200}


def fingerprint(settings: dict) -> str:
  kept = {k: v for k, v in settings.items()
          if not (k in SETTINGS_SINCE and v == SETTINGS_SINCE[k])}
  return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def claim_run_dir(model_dir: str, settings: dict) -> None:
  """Marks `model_dir` as this setup's run, or fails if it holds another setup's: the
  trainer resumes whatever checkpoint it finds there, so a run of another recipe would
  be continued silently under this one's name."""
  stamp = model_dir + ".setup.json"
  mine = fingerprint(settings)
  if os.path.exists(stamp):
    with open(stamp, encoding="utf-8") as f:
      theirs = json.load(f)
    if theirs["fingerprint"] != mine:
      changed = sorted(k for k in set(theirs["settings"]) | set(settings)
                       if theirs["settings"].get(k) != settings.get(k))
      raise ValueError(f"{model_dir} holds a run of another setup (it differs in "
                       f"{', '.join(changed)}); choose another --out_dir or remove it")
    return
  if os.path.exists(model_dir):
    raise ValueError(f"{model_dir} holds a run of an unknown setup (no {stamp}); choose "
                     "another --out_dir or remove it")
  os.makedirs(os.path.dirname(model_dir), exist_ok=True)
  with open(stamp, "w", encoding="utf-8") as f:
    json.dump({"fingerprint": mine, "settings": settings}, f, sort_keys=True)


def prepare_data(data_dir: str, settings: dict) -> dict[str, str]:
  """The study's files and vocabulary, written unless already there for this setup."""
  from ernie3_jax.data import knowledge_study_corpus as ksc  # pylint: disable=g-import-not-at-top
  from ernie3_jax.tools import train_vocab  # pylint: disable=g-import-not-at-top
  stamp = os.path.join(data_dir, "SETUP")
  want = json.dumps({k: settings[k] for k in ("design", "num_people", "phrasings",
                                                "vocab_size")})
  paths = {k: os.path.join(data_dir, f) for k, f in (
      ("corpus", "corpus.jsonl"), ("kg", "kg.tsv"), ("aliases", "aliases.tsv"),
      ("study", "study.json"), ("vocabulary", "spm.model"))}
  if os.path.exists(stamp) and open(stamp).read() == want:
    return paths
  ksc.write_study(data_dir, ksc.StudyConfig(settings["num_people"], settings["phrasings"]))
  train_vocab.train(paths["corpus"], settings["vocab_size"], os.path.join(data_dir, "spm"),
                    symbols=ksc.vocabulary_symbols())
  with open(stamp, "w") as f:
    f.write(want)
  return paths


def training_rows(paths: dict):
  """The sentences the arms train A's triples beside (`study_probes.TrainingRows`), read
  through the arms' own task code, so the row probes ask exactly what was trained."""
  from ernie3_jax.data import data_config as dc  # pylint: disable=g-import-not-at-top
  from ernie3_jax.evaluation import study_probes  # pylint: disable=g-import-not-at-top
  from ernie3_jax.tasks import knowledge_study  # pylint: disable=g-import-not-at-top
  # As gin_configs/runs/knowledge_study.gin binds it: every biography trains.
  cfg = dc.DataConfig(corpus=paths["corpus"], kg=paths["kg"], aliases=paths["aliases"],
                      vocabulary=paths["vocabulary"], validation_every=0)
  return study_probes.training_rows({p: knowledge_study.knowledge_rows(cfg, "train", p)
                                     for p in ("uktp", "misaligned")})


def check_lengths(items, vocabulary: str) -> None:
  """Every item's candidates have one piece count under the study vocabulary."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  from ernie3_jax.evaluation import study_probes  # pylint: disable=g-import-not-at-top
  encode = spm.SentencePieceProcessor(model_file=vocabulary).encode
  bad = study_probes.length_mismatches(items, encode)
  if bad:
    pieces = {c: len(encode(c)) for c in bad[0].item.candidates}
    raise ValueError(f"{len(bad)} probe items have candidates of different piece counts "
                     f"under {vocabulary}, e.g. {bad[0].probe}: {pieces}")


def gin_flags(arm: str, seed: int, model_dir: str, paths: dict, settings: dict) -> list[str]:
  from ernie3_jax.tasks import knowledge_study  # pylint: disable=g-import-not-at-top
  # The mixture's rates are the rows per step, so every arm's text rows are the same.
  rates = {knowledge_study.TEXT_TASK: float(settings["text_rows"])}
  if arm != "text":
    rates[knowledge_study.KNOWLEDGE_TASKS[arm]] = float(settings["knowledge_rows"])
  batch = int(sum(rates.values()))
  bindings = [f"MODEL_DIR='{model_dir}'", f"STUDY_MIXTURE='{knowledge_study.ARMS[arm]}'",
              f"PretrainInput.stages=[(0, {rates!r})]",
              f"SEED={seed}", f"NLU_BATCH={batch}", f"NUM_STEPS={settings['steps']}",
              f"learning_rate_schedule.peak={settings['peak_lr']!r}",
              f"learning_rate_schedule.warmup_steps={settings['warmup_steps']}",
              f"train.checkpoint_every={settings['probe_every']}",
              f"Ernie3Config.vocab_size={settings['vocab_size']}"]
  bindings += [f"DataConfig.{k}='{paths[k]}'" for k in ("corpus", "kg", "aliases", "vocabulary")]
  return (["--gin_file=gin_configs/experiments/knowledge_study.gin"]
          + [f"--gin.{b}" for b in bindings + list(settings["gin"])])


def run_dir(arm: str, seed: int) -> str:
  return os.path.abspath(os.path.join(_OUT_DIR.value, f"{arm}_seed{seed}"))


def train(arm: str, seed: int, model_dir: str, paths: dict, settings: dict) -> float:
  """Trains (or resumes) one run in a subprocess; returns its wall-clock seconds."""
  from ernie3_jax.runtime import host_memory  # pylint: disable=g-import-not-at-top
  env = host_memory.environment(dict(os.environ))
  os.makedirs(os.path.dirname(model_dir), exist_ok=True)
  start = time.perf_counter()
  with open(model_dir + ".log", "a") as log:
    code = subprocess.call([sys.executable, "-m", "ernie3_jax.cli.main",
                            *gin_flags(arm, seed, model_dir, paths, settings)],
                           cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
  if code:
    raise RuntimeError(f"training {arm} seed {seed} failed (exit {code}); see {model_dir}.log")
  return time.perf_counter() - start


def probe(arm: str, model_dir: str, items, steps: list[int]) -> dict:
  """{step: the candidate ranked first per item} of the run's checkpoints at `steps`."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ernie3_jax.config import gin_utils  # pylint: disable=g-import-not-at-top
  from ernie3_jax.data import data_config as dc  # pylint: disable=g-import-not-at-top
  from ernie3_jax.evaluation import knowledge_probe, study_probes  # pylint: disable=g-import-not-at-top
  from ernie3_jax.model import Ernie3, Ernie3Config, init_memory  # pylint: disable=g-import-not-at-top
  from ernie3_jax.model import task_ids  # pylint: disable=g-import-not-at-top
  from ernie3_jax.training import checkpoint_files  # pylint: disable=g-import-not-at-top
  gin_utils.parse_gin([os.path.join(model_dir, "config.gin")])
  cfg = Ernie3Config()
  model = Ernie3(cfg)
  tokens = jnp.ones((1, 8), jnp.int32)
  abstract = nn.unbox(jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), tokens, jnp.zeros_like(tokens), jnp.zeros((1,), jnp.int32),
      init_memory(cfg, 1, 4)))["params"])
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shardings = jax.tree_util.tree_map(lambda _: one, abstract)
  vocab = dc.vocabulary(dc.current().vocabulary)
  # The triple layout is read with UKTP's embedding where the arm trained it.
  triple_task = task_ids.KNOWLEDGE_MASKED_LM if arm == "text" else task_ids.UKTP
  out = {}
  for step in steps:
    params, report = checkpoint_files.restore_params_into(abstract, shardings, model_dir, step)
    if report["fresh"]:
      raise ValueError(f"{model_dir} step {step} lacks parameters {report['fresh'][:3]}")
    scorer = lambda task: knowledge_probe.MaskedSlotScorer(
        model, params, vocab, max_length=128, batch_size=128, task_id=task)
    out[step] = study_probes.predictions(items, scorer(task_ids.KNOWLEDGE_MASKED_LM),
                                         scorer(triple_task))
  return out


def error_table(lines: list[dict], items, study: dict, settings: dict) -> str:
  """Wrong tail answers at the last step per arm (all seeds) and how many of them name
  another of the person's own values: stored but bound to the wrong relation."""
  from ernie3_jax.evaluation import study_probes  # pylint: disable=g-import-not-at-top
  cells = (("A", "text_recall"), ("T", "text_recall"), ("A", "triple_tail"),
           ("T", "triple_tail"), ("A", "paired_tail"))
  tails = [it for it in items if (it.group, it.probe) in cells]
  last = settings["steps"]
  totals: dict[str, dict] = {}  # arm -> cell -> [wrong, own values, items]
  for line in lines:
    predicted = probe(line["arm"], run_dir(line["arm"], line["seed"]), tails, [last])[last]
    arm = totals.setdefault(line["arm"], {c: [0, 0, 0] for c in cells})
    for cell, (wrong, own) in study_probes.own_value_errors(
        tails, predicted, study["people"]).items():
      arm[cell][0] += wrong
      arm[cell][1] += own
    for it in tails:
      arm[(it.group, it.probe)][2] += 1
  out = [f"Wrong tail answers at step {last}, all seeds: wrong/items "
         "(of the wrong, how many name another of the person's own values)",
         "| arm | " + " | ".join(f"{g}/{p}" for g, p in cells) + " |",
         "|" + " --- |" * (len(cells) + 1)]
  for arm, counts in totals.items():
    out.append(f"| {arm} | " + " | ".join(f"{w}/{n} ({o})" for w, o, n in counts.values())
               + " |")
  return "\n".join(out)


def reprobe(path: str, settings: dict, items) -> None:
  """Adds the cells of probes added since to the lines of `path` of this setup, from
  their runs' checkpoints. The cells already there are probed again too and must come
  out the same (the checkpoints and the scorer are deterministic); the file is
  rewritten in one step, other setups' lines as they were."""
  from ernie3_jax.evaluation import study_probes  # pylint: disable=g-import-not-at-top
  want = {f"{g}/{p}" for (g, p), idx in study_probes.cells(items).items() if idx}
  gold = [it.item.gold for it in items]
  with open(path, encoding="utf-8") as f:
    raw = [l for l in f if l.strip()]
  out = []
  for text in raw:
    line = json.loads(text)
    if line.get("fingerprint") != fingerprint(settings) or set(line["final_correct"]) >= want:
      out.append(text if text.endswith("\n") else text + "\n")
      continue
    steps = sorted(int(s) for s in line["curve"])
    added = sorted(want - set(line["final_correct"]))
    start = time.perf_counter()
    correct = {k: v == gold for k, v in probe(line["arm"], run_dir(line["arm"], line["seed"]),
                                               items, steps).items()}
    curve, final = item_results(items, correct)
    changed = [c for c, v in line["final_correct"].items() if final[c] != v]
    if changed:
      raise ValueError(f"{path}: {line['arm']} seed {line['seed']} probes differently now in "
                       f"{changed}; its checkpoints or the probes changed since it was written")
    line["curve"], line["final_correct"] = curve, final
    line["reprobe_seconds"] = round(time.perf_counter() - start, 1)
    print(f"{line['arm']} seed {line['seed']}: added {', '.join(added)}", flush=True)
    out.append(json.dumps(line) + "\n")
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(out)
  os.replace(path + ".tmp", path)


def result_line(arm: str, seed: int, settings: dict, items, correct: dict, train_s: float,
                probe_s: float, paths: dict) -> dict:
  import bench_common  # pylint: disable=g-import-not-at-top
  curve, final = item_results(items, correct)
  return {"study": "knowledge_study", "label": settings["label"],
          "fingerprint": fingerprint(settings), "arm": arm, "seed": seed, "settings": settings,
          "machine": bench_common.machine(), "train_seconds": round(train_s, 1),
          "probe_seconds": round(probe_s, 1), "exposures": exposures(arm, settings, paths),
          "curve": curve, "final_correct": final}


def item_results(items, correct: dict) -> tuple[dict, dict]:
  """({step: {cell: accuracy}}, {cell: "0"/"1" per item at the last step}) of
  `correct` ({step: bool [len(items)]})."""
  from ernie3_jax.evaluation import study_probes  # pylint: disable=g-import-not-at-top
  cells = study_probes.cells(items)
  last = max(correct)
  curve = {str(step): {f"{g}/{p}": float(c[idx].mean()) for (g, p), idx in cells.items() if idx}
           for step, c in sorted(correct.items())}
  final = {f"{g}/{p}": "".join("1" if correct[last][i] else "0" for i in idx)
           for (g, p), idx in cells.items() if idx}
  return curve, final


def exposures(arm: str, settings: dict, paths: dict) -> dict[str, float]:
  """Expected exposures per fact: rows of each kind over the run / rows per pass."""
  from ernie3_jax.data import knowledge_graph as kg_lib  # pylint: disable=g-import-not-at-top
  text_rows = settings["steps"] * settings["text_rows"]  # in expectation: rates = rows
  passes = text_rows / max(1, _text_rows_per_pass(
      *(paths[k] for k in ("corpus", "kg", "aliases", "vocabulary")), tuple(settings["gin"])))
  triples = len(kg_lib.load_triples(paths["kg"]))
  knowledge_rows = 0 if arm == "text" else settings["steps"] * settings["knowledge_rows"]
  return {"text_sentence_per_fact": round(passes * settings["phrasings"], 1),
          "knowledge_rows_per_triple": round(knowledge_rows / triples, 1),
          "text_passes": round(passes, 1)}


@functools.lru_cache(maxsize=2)
def _text_rows_per_pass(corpus: str, kg: str, aliases: str, vocabulary: str,
                        extra_gin: tuple[str, ...]) -> int:
  """Knowledge-masked-LM rows that one pass over the corpus makes."""
  import gin  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  import ernie3_jax.tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from ernie3_jax.config import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.parse_gin(["gin_configs/experiments/knowledge_study.gin"], [
      "MODEL_DIR='/unused'", f"DataConfig.corpus='{corpus}'", f"DataConfig.kg='{kg}'",
      f"DataConfig.aliases='{aliases}'", f"DataConfig.vocabulary='{vocabulary}'",
      *extra_gin])
  length = gin.query_parameter("train.sequence_length")
  ds = seqio.get_mixture_or_task("knowledge_masked_lm").get_dataset(
      {"tokens": length}, split="train", shuffle=False, num_epochs=1, use_cached=False,
      trim_output_features=False)
  return sum(1 for _ in ds.as_numpy_iterator())


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # the libraries' INFO and WARNING lines drown the study's own
  from ernie3_jax.data import knowledge_study_corpus as ksc  # pylint: disable=g-import-not-at-top
  from ernie3_jax.data import knowledge_graph  # pylint: disable=g-import-not-at-top
  from ernie3_jax.evaluation import study_probes, study_report  # pylint: disable=g-import-not-at-top
  settings = setup()
  paths = prepare_data(os.path.join(_OUT_DIR.value, "data"), settings)
  study = ksc.load_study(paths["study"])
  items = study_probes.build_items(study, rows=training_rows(paths))
  facts_a = sum(len(p.facts) for p in study["people"] if p.group == "A")
  donors = sum(it.probe == "donor_tail" for it in items)
  if donors < facts_a:
    print(f"donor_tail: {facts_a - donors} of {facts_a} A facts left out (their donor "
          "sentence names the answer)", flush=True)
  leaks = study_probes.answer_leaks(items)
  if leaks:
    raise ValueError(f"{len(leaks)} probe items show their answer, e.g. {leaks[0]}")
  check_lengths(items, paths["vocabulary"])
  by_cell = {(g, p): [items[i] for i in idx]
             for (g, p), idx in study_probes.cells(items).items() if idx}
  chance = {f"{g}/{p}": study_probes.chance(its) for (g, p), its in by_cell.items()}
  kg = knowledge_graph.load_triples(paths["kg"])
  kg_facts = [(r, t) for _, r, t in kg]
  text_facts = [(r, t) for person in study["people"] if person.group in ksc.TEXT_GROUPS
                for r, t in person.facts.items()]
  # The statistics a run could answer N from without any of N's facts (the leak check's
  # references): the KG's for the knowledge arms, the text's for every arm.
  priors = {f"{g}/{p}": (study_probes.tail_prior(its, kg, study["relations"])
                         if p in study_probes.RELATION_PROBES
                         else study_probes.value_prior(its, kg_facts))
            for (g, p), its in by_cell.items()}
  text_priors = {f"{g}/{p}": study_probes.value_prior(its, text_facts)
                 for (g, p), its in by_cell.items() if p not in study_probes.RELATION_PROBES}
  done = {(l["arm"], l["seed"]) for l in study_report.read_results(_RESULTS.value,
                                                                   fingerprint(settings))}
  steps = list(range(settings["probe_every"], settings["steps"] + 1, settings["probe_every"]))
  gold = [it.item.gold for it in items]
  if _REPROBE.value and os.path.exists(_RESULTS.value):
    reprobe(_RESULTS.value, settings, items)
  for arm in ([] if _REPORT_ONLY.value else _ARMS.value):
    for seed in [int(s) for s in _SEEDS.value]:
      if (arm, seed) in done:
        print(f"{arm} seed {seed}: in {_RESULTS.value} already", flush=True)
        continue
      model_dir = run_dir(arm, seed)
      claim_run_dir(model_dir, settings)
      train_s = train(arm, seed, model_dir, paths, settings)
      start = time.perf_counter()
      correct = {k: v == gold for k, v in probe(arm, model_dir, items, steps).items()}
      line = result_line(arm, seed, settings, items, correct, train_s,
                         time.perf_counter() - start, paths)
      os.makedirs(os.path.dirname(os.path.abspath(_RESULTS.value)), exist_ok=True)
      with open(_RESULTS.value, "a") as f:
        f.write(json.dumps(line) + "\n")
      recall = line["curve"][str(steps[-1])]["A/text_recall"]
      print(f"{arm} seed {seed}: trained in {train_s:.0f} s, A recall {recall:.3f}",
            flush=True)
  lines = study_report.read_results(_RESULTS.value, fingerprint(settings))
  if not lines:
    print("no results yet")
    return
  print(study_report.table(lines, chance, priors, text_priors))
  recall = study_probes.cells(items)[("A", "text_recall")]
  print(study_report.misses_by_relation(lines, [items[i].relation for i in recall]))
  print(study_report.markdown_summary(lines, chance))
  if _ERRORS.value:
    print(error_table(lines, items, study, settings))
  if _FIGURE.value:
    study_report.figure(lines, chance, _FIGURE.value, f"knowledge study ({settings['label']}, "
                        f"{settings['num_people']} people, {settings['steps']} steps)")
    print(f"wrote {_FIGURE.value}")


if __name__ == "__main__":
  app.run(main)
