"""Zero-/few-shot SuperGLUE: prompts, left truncation, shots, NLG scoring, score metrics."""

import json
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ernie3_jax.runtime import tf_runtime  # noqa: F401
from ernie3_jax.superglue import prompts
from ernie3_jax.evaluation import zero_shot
from ernie3_jax.model import Ernie3
from ernie3_jax.model import task_ids
from tests import model_testing as mt

# The shared SuperGLUE sample beside the checkout (../shared), wherever it is cloned.
SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "shared", "superglue_sample")


# -- prompts ----------------------------------------------------------------------


def test_binary_tasks_verbalise_labels_in_every_accepted_form():
  for label, gold in ((True, 0), ("true", 0), (1, 0), (False, 1), ("False", 1), (0, 1)):
    q, = prompts.boolq({"question": "is it blue", "passage": "It is.", "idx": 3,
                        "label": label})
    assert q.candidates == (" yes", " no") and q.correct == (gold,), label
    assert q.prompt.endswith("Question: is it blue?\nAnswer:") and q.key == "3"
  q, = prompts.wic({"word": "bank", "sentence1": "a", "sentence2": "b", "label": False})
  assert q.candidates[q.correct[0]] == " different"
  q, = prompts.wsc({"text": "t", "target": {"span1_text": "Ann", "span2_text": "she"},
                    "label": True})
  assert q.candidates[q.correct[0]] == " yes" and "'she' refer to Ann" in q.prompt
  q, = prompts.boolq({"question": "q", "passage": "p"})  # test split: no label
  assert q.correct == ()
  with pytest.raises(ValueError, match="boolq: label 'maybe'"):
    prompts.boolq({"question": "q", "passage": "p", "label": "maybe"})
  with pytest.raises(KeyError, match="lacks the field 'passage'"):
    prompts.boolq({"question": "q", "idx": 1})


def test_class_tasks_map_official_strings_and_tfds_ids():
  for label, word in (("entailment", " true"), ("contradiction", " false"),
                      ("neutral", " neither"), (2, " neither")):
    q, = prompts.cb({"premise": "p", "hypothesis": "h", "label": label})
    assert q.candidates[q.correct[0]] == word
  for task in ("rte", "axg"):
    q, = prompts.BUILDERS[task]({"premise": "p", "hypothesis": "h.", "label": "not_entailment"})
    assert q.candidates[q.correct[0]] == " no"
  q, = prompts.axb({"sentence1": "s", "sentence2": "t", "label": "entailment"})
  assert q.candidates[q.correct[0]] == " yes"
  with pytest.raises(ValueError, match="cb: label 'yes'"):
    prompts.cb({"premise": "p", "hypothesis": "h", "label": "yes"})


def test_copa_continues_the_premise_with_a_connective():
  row = {"premise": "The man fell.", "choice1": "He slipped.", "choice2": "I laughed.",
         "question": "cause", "label": 0}
  q, = prompts.copa(row)
  assert q.prompt == "The man fell because"
  assert q.candidates == (" he slipped.", " I laughed.") and q.correct == (0,)
  q, = prompts.copa(dict(row, question="effect", label=1))
  assert q.prompt.endswith(" so") and q.correct == (1,)


def test_multirc_asks_one_true_false_question_per_answer():
  row = {"idx": 7, "passage": {"text": "<b>Sent 1: </b>Rain fell.<br>", "questions": [
      {"idx": 0, "question": "What fell?", "answers": [
          {"idx": 0, "text": "Rain", "label": True}, {"idx": 1, "text": "Snow", "label": 0}]},
      {"idx": 1, "question": "When?", "answers": [{"idx": 2, "text": "Today"}]}]}}
  qs = prompts.multirc(row)
  assert [q.key for q in qs] == ["7/0/0", "7/0/1", "7/1/2"]
  assert [q.correct for q in qs] == [(0,), (1,), ()]
  assert qs[0].prompt.startswith("Rain fell.\nQuestion: What fell?\nAnswer: Rain\n")
  assert "<b>" not in qs[0].prompt and qs[0].candidates == (" true", " false")


def test_record_fills_each_entity_into_the_query():
  text = "Ada met Bo in Rome.\n@highlight\nAda wins"
  row = {"idx": 1, "passage": {"text": text, "entities": ["Ada", "Bo", "Rome", "Ada"]},
         "qas": [{"idx": 5, "query": "@placeholder was in Rome", "answers": ["Ada", "Bo"]}]}
  q, = prompts.record(row)
  assert q.names == ("Ada", "Bo", "Rome")
  assert q.candidates[1] == " Bo was in Rome" and q.correct == (0, 1)
  assert "- Ada wins" in q.prompt and "@highlight" not in q.prompt
  spans = dict(row, passage={"text": text, "entities": [{"start": 8, "end": 9}]})
  assert prompts.record(spans)[0].names == ("Bo",)  # raw official inclusive spans
  with pytest.raises(ValueError, match="no @placeholder"):
    prompts.record(dict(row, qas=[{"idx": 1, "query": "no slot"}]))


# -- truncation and shots -----------------------------------------------------------


def test_fit_prompt_cuts_from_the_left_and_reports_it():
  assert zero_shot.fit_prompt([1, 2, 3], [9], 8) == ([1, 2, 3], False)
  assert zero_shot.fit_prompt(list(range(10, 20)), [7, 8], 6) == ([16, 17, 18, 19], True)
  with pytest.raises(ValueError, match="raise max_length"):
    zero_shot.fit_prompt([1], [1, 2, 3], 3)
  with pytest.raises(ValueError, match="no pieces"):
    zero_shot.fit_prompt([1], [], 3)


def _labelled(n):
  return [prompts.Question(f"p{i}", (" a", " b"), (i % 2,), str(i)) for i in range(n)]


def test_shots_are_seeded_distinct_labelled_and_never_the_question_itself():
  pool = _labelled(12) + [prompts.Question("unlabelled", (" a",), (), "u")]
  draw = lambda seed, pos, key=None: [q.key for q in prompts.choose_shots(pool, 4, seed, pos,
                                                                            key)]
  assert draw(0, 3) == draw(0, 3)
  assert len({tuple(draw(s, p)) for s in range(3) for p in range(3)}) > 1
  for pos in range(20):
    keys = draw(1, pos, "5")
    assert len(set(keys)) == 4 and "5" not in keys and "u" not in keys
  with pytest.raises(ValueError, match="num_shots=13"):
    prompts.choose_shots(pool, 13, 0, 0)
  q = prompts.with_shots(pool[0], prompts.choose_shots(pool, 2, 0, 0, "0"))
  demos = q.prompt.split(prompts.SHOT_SEPARATOR)
  assert len(demos) == 3 and demos[-1] == "p0"
  assert all(d.endswith(" a") or d.endswith(" b") for d in demos[:2])


# -- the NLG scorer -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
  """(model, params, a scorer): one compiled scoring program serves every test."""
  cfg = mt.config()
  model, params = Ernie3(cfg), nn.unbox(mt.init_params(cfg)["params"])
  return model, params, zero_shot.NlgScorer(model, params, max_length=12, batch_size=2)


def _reference_logprob(model, params, ids, first_target):
  tokens = jnp.asarray([ids], jnp.int32)
  out, _ = model.apply({"params": params}, tokens, jnp.zeros_like(tokens),
                       jnp.asarray([task_ids.DOCUMENT_LM]), method=Ernie3.nlg_pretrain)
  logp = jax.nn.log_softmax(out["lm_logits"][0])
  return float(sum(logp[j - 1, ids[j]] for j in range(first_target, len(ids))))


def test_scorer_matches_the_unpadded_log_likelihood_and_ignores_batching(tiny):
  model, params, scorer = tiny
  pairs = [([5, 6, 7, 8], [9, 10]), ([11, 12], [13]), ([20, 21, 22], [23, 24, 25])]
  sums, counts, truncated = scorer.score_pairs(pairs)
  assert counts.tolist() == [2, 1, 3] and truncated == 0
  for (p, t), s in zip(pairs, sums):
    np.testing.assert_allclose(s, _reference_logprob(model, params, p + t, len(p)), rtol=1e-4,
                               atol=1e-4)
  # The same row batched with other neighbours (and padding) scores the same.
  again, _, _ = scorer.score_pairs([pairs[2], pairs[1], pairs[0]])
  np.testing.assert_allclose(again[::-1], sums, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(zero_shot.normalize(sums, counts, "mean"), sums / counts)
  with pytest.raises(ValueError, match="normalization='max'"):
    zero_shot.normalize(sums, counts, "max")


def test_rank_questions_truncates_long_prompts_and_counts_them(tiny):
  _, _, scorer = tiny
  encode = lambda text: [3 + (ord(ch) % 90) for ch in text]
  qs = [prompts.Question("x" * 30, (" ab", " cd"), (0,), "0"),
        prompts.Question("short", (" ab", " c"), (1,), "1")]
  result = zero_shot.rank_questions(qs, encode, scorer)
  assert result.truncated_prompts == 1 and len(result.predictions) == 2
  sums, counts, _ = scorer.score_pairs([(encode(q.prompt), encode(c)) for q in qs
                                        for c in q.candidates])
  best = [int(np.argmax(sums[i:i + 2])) for i in (0, 2)]
  assert result.predictions == best
  assert result.accuracy == np.mean([best[0] == 0, best[1] == 1])


class _PreferTargetScorer:
  """Scores a (prompt, target) pair 1 when the target is the preferred one, else 0."""

  max_length = 128

  def __init__(self, preferred_ids):
    self.preferred = list(preferred_ids)

  def score_pairs(self, pairs):
    sums = np.asarray([float(list(t) == self.preferred) for _, t in pairs])
    return sums, np.ones(len(pairs)), 0


def test_rank_accuracy_never_counts_a_question_without_a_correct_candidate_as_right():
  encode = lambda text: [3 + (ord(ch) % 90) for ch in text]
  scorer = _PreferTargetScorer(encode(" b"))  # always picks " b"
  wrong = prompts.Question("p", (" a", " b"), (0,), "0")
  right = prompts.Question("q", (" a", " b"), (1,), "1")
  no_correct = prompts.Question("r", (" a", " b"), (), "2")
  result = zero_shot.rank_questions([wrong, no_correct], encode, scorer)
  assert result.predictions == [1, 1]
  assert result.accuracy == 0.0
  # Whether such a question is left out (an unlabelled row) or counted wrong, the
  # accuracy of the others can only stay or fall.
  result = zero_shot.rank_questions([right, wrong, no_correct], encode, scorer)
  assert result.accuracy in (1 / 2, 1 / 3)
  # A labelled question (ReCoRD: its gold answers) that no candidate answers counts, wrong.
  unanswerable = prompts.Question("s", (" a", " b"), (), "3", label=("Zed",))
  assert unanswerable.labelled and not no_correct.labelled
  result = zero_shot.rank_questions([right, wrong, unanswerable], encode, scorer)
  assert result.accuracy == pytest.approx(1 / 3)


# -- seqio score metrics --------------------------------------------------------------


def _rows(golds, num_candidates, key=lambda g: str(g)):
  return [{"group": g, "candidate": c, "is_correct": c == gold, "labelled": True,
           "key": key(g), "choice": f"c{c}", "gold": [], "truncated": g == 0}
          for g, gold in enumerate(golds) for c in range(num_candidates)]


def test_score_metrics_pick_the_argmax_of_each_group():
  from ernie3_jax.tasks import superglue_zero_shot as zs
  golds = [0, 2, 1, 1]
  targets = _rows(golds, 3)
  picks = [0, 2, 2, 0]  # right, right, wrong, wrong
  scores = [1.0 if c == picks[g] else -1.0 for g in range(4) for c in range(3)]
  out = zs.metric_fn("cb")(targets, scores)
  assert out["accuracy"] == 0.5 and out["num_questions"] == 4 and out["truncated_prompts"] == 1
  # per class F1: class 0: tp1 fp1 fn0 -> 2/3; class 1: tp0 fn2 -> 0; class 2: tp1 fp1 -> 2/3
  assert out["f1_macro"] == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
  with pytest.raises(ValueError, match="12 rows but 11 scores"):
    zs.metric_fn("rte")(targets, scores[:-1])


def test_multirc_and_record_metrics():
  from ernie3_jax.tasks import superglue_zero_shot as zs
  # Two questions of one paragraph: answers 0,1 (question a) and 2 (question b).
  targets = _rows([0, 1, 0], 2, key=lambda g: ["p/a/0", "p/a/1", "p/b/2"][g])
  scores = [1, 0, 0, 1, 0, 1]  # picks true, false, false -> right, right, wrong
  out = zs.metric_fn("multirc")(targets, scores)
  assert out["accuracy"] == pytest.approx(2 / 3) and out["exact_match"] == 0.5
  assert out["f1a"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))
  # Three answer options (decisions) of two questions.
  assert out["num_questions"] == 2 and out["num_decisions"] == 3
  rec = [{"group": 0, "candidate": c, "is_correct": c == 1, "labelled": True, "key": "q",
          "choice": name, "gold": ["The Bo"], "truncated": False}
         for c, name in enumerate(["Ada", "Bo"])]
  assert zs.metric_fn("record")(rec, [0.0, 1.0])["exact_match"] == 1.0
  assert zs.metric_fn("record")(rec, [1.0, 0.0])["f1"] == 0.0
  copa = zs.metric_fn("copa")(_rows([1, 0, 1], 2), [0, 1, 0, 1, 1, 0])
  assert copa["accuracy"] == pytest.approx(1 / 3)


def test_a_labelled_question_whose_candidates_are_all_wrong_scores_zero():
  from ernie3_jax.tasks import superglue_zero_shot as zs
  row = lambda g, c, name, correct, gold: {
      "group": g, "candidate": c, "is_correct": correct, "labelled": True, "key": str(g),
      "choice": name, "gold": gold, "truncated": False}
  # Query 0: "Ada" is right and picked. Query 1: its gold "Zed" is no candidate, so
  # whichever is picked is wrong.
  rec = [row(0, 0, "Ada", True, ["Ada"]), row(0, 1, "Bo", False, ["Ada"]),
         row(1, 0, "Cy", False, ["Zed"]), row(1, 1, "Di", False, ["Zed"])]
  out = zs.metric_fn("record")(rec, [1.0, 0.0, 1.0, 0.0])
  assert out["accuracy"] == 0.5 and out["num_questions"] == 2
  assert out["exact_match"] == 0.5 and out["f1"] == 0.5
  # The same in a task scored by accuracy alone.
  copa = [dict(r, choice=f"c{r['candidate']}", gold=[]) for r in rec]
  assert zs.metric_fn("copa")(copa, [1.0, 0.0, 1.0, 0.0])["accuracy"] == 0.5


# -- the registered seqio tasks on the sample rows ------------------------------------


class _PreferScorer:
  """Scores a row by whether its target pieces are those of a preferred word."""

  max_length = 128

  def __init__(self, preferred_ids):
    self.preferred = list(preferred_ids)

  def score_rows(self, tokens, masks):
    hits = [float(list(np.asarray(t)[np.asarray(m) > 0]) == self.preferred)
            for t, m in zip(tokens, masks)]
    return np.asarray(hits), np.ones(len(hits))


def _sample_labels(folder):
  with open(os.path.join(SAMPLE_DIR, folder, "val.jsonl")) as f:
    return [json.loads(line)["label"] for line in f]


@pytest.mark.skipif(not os.path.isdir(SAMPLE_DIR), reason="no SuperGLUE sample rows")
def test_seqio_task_rows_and_score_path_on_the_sample(vocab, tmp_path):
  from ernie3_jax.tasks import superglue_zero_shot as zs
  gin.bind_parameter("ZeroShotConfig.source", SAMPLE_DIR)
  gin.bind_parameter("ZeroShotConfig.max_length", 64)
  import seqio
  task = seqio.get_mixture_or_task(zs.task_name("rte"))
  rows = list(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
  labels = _sample_labels("RTE")
  assert len(rows) == 2 * len(labels)
  assert [int(r["group"]) for r in rows] == [g for g in range(len(labels)) for _ in range(2)]
  assert all(len(r["inputs"]) + len(r["targets"]) <= 64 for r in rows)
  truncated = {int(r["group"]) for r in rows if r["truncated"]}
  assert truncated and all(r["inputs_pretokenized"].decode().endswith("Yes or no?\nAnswer:")
                           for r in rows)
  for r in rows:  # the cut prompt is the end of the full one
    full = vocab.encode(r["inputs_pretokenized"].decode())
    assert list(r["inputs"]) == full[len(full) - len(r["inputs"]):]
  yes_ids = vocab.encode(" yes")
  predictions = tmp_path / "rte.jsonl"
  metrics = zero_shot.score_task(zs.task_name("rte"), _PreferScorer(yes_ids), "validation",
                                 predictions_path=str(predictions))
  assert metrics["accuracy"] == pytest.approx(np.mean([lab == "entailment" for lab in labels]))
  scored = [json.loads(l) for l in predictions.read_text().splitlines()]
  assert [(r["group"], r["candidate_index"]) for r in scored] == [
      (int(r["group"]), int(r["candidate"])) for r in rows]
  assert {r["score"] for r in scored} == {0.0, 1.0}  # the preferred word scores 1
  assert metrics["truncated_prompts"] == len(truncated)
  assert metrics["num_questions"] == len(labels)


@pytest.mark.skipif(not os.path.isdir(SAMPLE_DIR), reason="no SuperGLUE sample rows")
def test_few_shot_rows_prepend_seeded_demonstrations():
  from ernie3_jax.tasks import superglue_zero_shot as zs
  import seqio
  gin.bind_parameter("ZeroShotConfig.source", SAMPLE_DIR)
  gin.bind_parameter("ZeroShotConfig.num_shots", 2)
  gin.bind_parameter("ZeroShotConfig.shot_split", "validation")  # the sample has no train
  task = seqio.get_mixture_or_task(zs.task_name("boolq"))

  def prompts_of():
    ds = task.source.get_dataset("validation")
    return [r["inputs"].decode() for r in ds.as_numpy_iterator()]

  first = prompts_of()
  assert first == prompts_of()
  assert all(p.count(prompts.SHOT_SEPARATOR) == 2 for p in first)
  assert all(p.split(prompts.SHOT_SEPARATOR)[0].endswith((" yes", " no")) for p in first)
  gin.bind_parameter("ZeroShotConfig.shot_seed", 1)
  assert prompts_of() != first


# -- ReCoRD through the registered task, beside the fine-tuning rows ------------------


class _ConstantScorer:
  """Scores every row alike: each question picks its first candidate (ties: the first)."""

  max_length = 128

  def score_rows(self, tokens, masks):
    del masks
    return np.zeros(len(tokens)), np.ones(len(tokens))


def _superglue_dir(tmp_path, folder, rows, split_file="val.jsonl"):
  """An official-layout directory holding one file of `rows` (dicts or raw lines)."""
  (tmp_path / folder).mkdir(parents=True, exist_ok=True)
  (tmp_path / folder / split_file).write_text("".join(
      (r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return str(tmp_path)


def _zero_shot_record(data_dir, tmp_path, scorer=None):
  """(metrics, per-row predictions) of the zero-shot ReCoRD task on `data_dir`."""
  from ernie3_jax.tasks import superglue_zero_shot as zs
  gin.bind_parameter("ZeroShotConfig.source", data_dir)
  path = tmp_path / "record.validation.jsonl"
  metrics = zero_shot.score_task(zs.task_name("record"), scorer or _ConstantScorer(),
                                 "validation", predictions_path=str(path))
  return metrics, [json.loads(line) for line in path.read_text().splitlines()]


def _finetune_record(data_dir):
  """The official ReCoRD metrics of the fine-tuning rows when every row scores alike."""
  from ernie3_jax.superglue import metrics as superglue_metrics
  from ernie3_jax.tasks import superglue
  targets = [superglue.postprocess(None, example=row, is_target=True)
             for row in superglue.text_rows("record", "validation", data_dir)]
  return superglue_metrics.record_metrics(targets, [0.0] * len(targets))


def test_zero_shot_record_counts_a_query_whose_gold_is_no_candidate_as_wrong(tmp_path):
  passage = {"text": "Ada met Bo in Rome.", "entities": ["Ada", "Bo"]}
  data = _superglue_dir(tmp_path / "data", "ReCoRD", [{"idx": 0, "passage": passage, "qas": [
      {"idx": 0, "query": "@placeholder smiled.", "answers": ["Ada"]},  # picked "Ada": right
      {"idx": 1, "query": "@placeholder waved.", "answers": ["Bo"]},
      {"idx": 2, "query": "@placeholder left.", "answers": ["Bo"]},
      {"idx": 3, "query": "@placeholder stayed.", "answers": ["Zed"]}]}])  # no candidate
  metrics, _ = _zero_shot_record(data, tmp_path)
  assert metrics["num_questions"] == 4
  assert metrics["f1"] == pytest.approx(0.25) and metrics["exact_match"] == pytest.approx(0.25)
  assert metrics["accuracy"] == pytest.approx(0.25)
  # The fine-tuning path scores the same rows the same way (the official rule).
  assert _finetune_record(data) == pytest.approx({"f1": 0.25, "exact_match": 0.25})


def test_zero_shot_record_scores_a_passage_without_entities_zero_not_a_crash(tmp_path):
  data = _superglue_dir(tmp_path / "data", "ReCoRD", [
      {"idx": 0, "passage": {"text": "Ada met Bo.", "entities": ["Ada", "Bo"]},
       "qas": [{"idx": 0, "query": "@placeholder smiled.", "answers": ["Ada"]}]},
      {"idx": 1, "passage": {"text": "Nobody came.", "entities": []},
       "qas": [{"idx": 1, "query": "@placeholder waved.", "answers": ["Cy"]}]}])
  metrics, scored = _zero_shot_record(data, tmp_path)
  # Answered with the empty candidate, as fine-tuning answers it: counted, and wrong.
  assert metrics["num_questions"] == 2
  assert metrics["f1"] == pytest.approx(0.5) and metrics["exact_match"] == pytest.approx(0.5)
  assert _finetune_record(data) == pytest.approx({"f1": 0.5, "exact_match": 0.5})
  assert len(scored) == 3


def test_zero_shot_prompt_errors_name_the_file_and_line(tmp_path, monkeypatch):
  from ernie3_jax.tasks import superglue_zero_shot as zs
  data = _superglue_dir(tmp_path / "data", "ReCoRD", [
      {"idx": 0, "passage": {"text": "Ada met Bo.", "entities": ["Ada"]},
       "qas": [{"idx": 0, "query": "@placeholder smiled.", "answers": ["Ada"]}]}] * 2)

  def broken(row):
    raise ValueError(f"cannot build a prompt for passage {row['idx']}")

  monkeypatch.setitem(prompts.BUILDERS, "record", broken)
  gin.bind_parameter("ZeroShotConfig.source", data)
  with pytest.raises(ValueError, match=r"ReCoRD/val.jsonl:1: cannot build a prompt for "
                                       r"passage 0"):
    zs.read_questions("record", "validation", data)


def _fixture_copy(tmp_path):
  import shutil
  data = tmp_path / "superglue"
  shutil.copytree(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                               "superglue"), data)
  return data


def _no_model(*args, **kwargs):
  raise AssertionError("the model was loaded before the data was checked")


@pytest.mark.parametrize("folder, name, flags, line", [
    ("WSC", "val.jsonl", [], 3),  # the last row of the last task's split
    ("WSC", "train.jsonl", ["--num_shots=1"], 2)])  # the demonstrations' split
def test_zero_shot_command_reads_every_row_before_the_model_loads(tmp_path, monkeypatch,
                                                                  folder, name, flags, line):
  from ernie3_jax.evaluation import zero_shot_command
  from ernie3_jax.superglue.sources import SuperGlueDataError
  data = _fixture_copy(tmp_path)
  path = data / folder / name
  path.write_text(path.read_text().rstrip("\n")[:-20] + "\n")
  monkeypatch.setattr(zero_shot_command, "load_scorer", _no_model)
  argv = [f"--model_dir={tmp_path}", f"--source={data}", "--tasks=cb,wsc",
          f"--output_dir={tmp_path / 'out'}"] + flags
  with pytest.raises(SuperGlueDataError, match=rf"^{path}:{line}: invalid JSON"):
    zero_shot_command.main(argv)
  path.write_text("")
  with pytest.raises(ValueError, match=rf"superglue_wsc_zero_shot: the '\w+' split is empty "
                                       rf"\({path}\)"):
    zero_shot_command.main(argv)
  assert not (tmp_path / "out").exists()


# -- per-row files: fine-tuning's and zero-shot's, row for row -------------------------

FIXTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "superglue")


class _RisingLogProbs:
  """A fine-tuned predictor's stand-in: row i's candidate score is i (the last row of each
  group wins), its class scores (0, i)."""

  def log_probs(self, examples, task_index, length):
    del task_index, length
    n = len(examples)
    return np.stack([np.zeros(n), np.arange(n)], axis=1).astype(np.float32)


def _finetune_rows(task, split, tmp_path, candidate):
  """The eval_predictions lines of fine-tuning's `superglue_<task>` over the fixture."""
  import seqio
  from ernie3_jax.evaluation import seqio_eval
  path = tmp_path / f"superglue_{task}.{split}.jsonl"
  evaluate = seqio_eval._evaluate_task  # pylint: disable=protected-access
  evaluate(seqio.get_mixture_or_task(f"superglue_{task}"), split, _RisingLogProbs(), (0, 2),
           candidate, 64, 0, str(path))
  return [json.loads(line) for line in path.read_text().splitlines()]


def _chosen_is_the_best(rows, score):
  for g in {r["group"] for r in rows}:
    group = [r for r in rows if r["group"] == g]
    best = max(group, key=score)  # the first on ties
    assert [r["chosen"] for r in group] == [r is best for r in group], group


def test_per_row_files_name_candidates_and_official_idx_alike_in_both_paths(tmp_path):
  from ernie3_jax.superglue import sources
  from ernie3_jax.tasks import superglue_zero_shot as zs
  gin.bind_parameter("superglue_source.path", FIXTURE_DIR)
  tuned = _finetune_rows("record", "validation", tmp_path, True)
  _, zero = _zero_shot_record(FIXTURE_DIR, tmp_path)
  # The same candidates, by text, in the same order and numbering, under the same idx.
  same = lambda r: (r["idx"], r["group"], r["candidate_index"], r["candidate"])
  assert [same(r) for r in tuned] == [same(r) for r in zero]
  passages = list(sources.read_split("record", "validation", FIXTURE_DIR))
  assert [r["candidate"] for r in tuned] == [
      e for p in passages for _ in p["qas"] for e in sorted(p["passage"]["entities"])]
  assert tuned[0]["idx"] == {"passage": 0, "query": 0}
  # Each file marks its chosen answer: the best-scoring row of each query.
  _chosen_is_the_best(tuned, lambda r: r["prediction"][0])
  _chosen_is_the_best(zero, lambda r: r["score"])
  assert sum(r["chosen"] for r in tuned) == sum(r["chosen"] for r in zero) == 3
  # AX-b's idx as its official file writes them (strings), in both paths.
  axb_idx = [str(e["idx"]) for e in sources.read_split("axb", "test", FIXTURE_DIR)]
  assert [r["idx"] for r in _finetune_rows("axb", "test", tmp_path, False)] == axb_idx
  gin.bind_parameter("ZeroShotConfig.source", FIXTURE_DIR)
  path = tmp_path / "axb.test.jsonl"
  zero_shot.score_task(zs.task_name("axb"), _ConstantScorer(), "test",
                       predictions_path=str(path))
  assert [json.loads(line)["idx"] for line in path.read_text().splitlines()][::2] == axb_idx
