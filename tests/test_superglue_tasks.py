"""SuperGLUE input formats, seqio tasks and mixture, postprocessing and submissions."""

import json
import os

import gin
import numpy as np
import pytest

from ernie3_jax.superglue import submission
from ernie3_jax.superglue import formats
from ernie3_jax.superglue import sources

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "superglue")


def _split(name):
  return "test" if name.endswith(("_axb", "_axg")) else "validation"


def _rows(task, split):
  return [formats.format_example(task, ex) for ex in sources.read_split(task, split, FIXTURES)]


# --------------------------------------------------------------------------- formats


def test_wsc_marks_noun_and_pronoun_even_when_the_word_index_is_off():
  rows = [r for decisions in _rows("wsc", "validation") for d in decisions for r in d]
  assert rows[0].text_a == "Anna thanked * Beth * because # she # had helped her ."
  # The official index of "her" (8) points at "."; the nearest "her" is marked instead.
  assert rows[1].text_a == "* Anna * thanked Beth because she had helped # her # ."
  assert rows[2].text_a == "The dog chased * the old cat * until # it # got tired ."
  assert rows[2].text_b is None and [r.label for r in rows] == [1, 1, 0]


def test_wic_marks_the_word_in_both_sentences():
  (row,), = _rows("wic", "validation")[0]
  assert (row.text_a, row.text_b) == ("The room was * bright * and sunny.",
                                      "A * bright * student solved it.")
  assert row.label == 0 and row.idx == (0, -1, -1)


def test_copa_rows_per_choice_with_connective():
  decisions = _rows("copa", "validation") + _rows("copa", "test")
  first, lamp, _, _, dog = [d[0] for d in decisions]
  assert [(r.text_b, r.label, r.candidate) for r in first] == [
      ("so he drank a glass of water.", 1, "He drank a glass of water."),
      ("so he painted the fence.", 0, "He painted the fence.")]
  assert [r.text_b for r in lamp] == ["because I bought a new chair.",  # "I" keeps its case
                                      "because the bulb burned out."]
  assert [r.label for r in lamp] == [0, 1]
  assert dog[1].text_b == "because NASA launched a probe." and dog[1].label == -1
  lower = formats.lower_first_word
  assert [lower(s) for s in ("A tree fell.", "I'm late.", "Ann left.")] == [
      "a tree fell.", "I'm late.", "ann left."]


def test_multirc_rows_per_answer_grouped_by_question():
  paragraphs = _rows("multirc", "validation")
  questions = [d for p in paragraphs for d in p]
  assert [len(q) for q in questions] == [3, 2, 3]
  row = questions[2][2]
  assert row.text_b == "What did Tom bake? Cakes" and row.label == 1 and row.idx == (1, 2, 7)


def test_record_rows_per_candidate_entity():
  (query0, query1), (query2,) = _rows("record", "validation")
  assert [r.candidate for r in query0] == ["Northgate United", "Riverside Rovers", "Rovers",
                                           "Sam Hale"]
  assert [r.label for r in query0] == [0, 1, 1, 0] and [r.label for r in query1] == [0, 0, 0, 1]
  assert query0[1].text_b == "Fans of Riverside Rovers celebrated in the square."
  assert query0[0].text_a.endswith("defence.\n- Riverside Rovers win derby\n- Sam Hale pleased")
  assert query2[0].idx == (1, 2, -1) and query0[0].answers == ("Riverside Rovers", "Rovers")
  (test_query,), = _rows("record", "test")
  assert [r.label for r in test_query] == [-1, -1]


# --------------------------------------------------------------------------- tasks


@pytest.fixture(scope="module")
def superglue():
  import seqio

  import ernie3_jax.tasks  # noqa: F401  (registers the tasks)
  from ernie3_jax.tasks import superglue as sg
  return seqio, sg


LENGTH = 40


def _dataset(seqio, name, split, length=LENGTH):
  ds = seqio.get_mixture_or_task(name).get_dataset({"input_ids": length}, split=split,
                                                   shuffle=False)
  return list(ds.as_numpy_iterator())  # read to the end: closes the generators


@pytest.fixture(scope="module")
def task_rows(superglue):
  """Each task's validation rows (diagnostics: test) through seqio, read once, with the
  counts of rows and truncated rows they added to `STATS`."""
  seqio, sg = superglue
  gin.bind_parameter("superglue_source.path", FIXTURES)
  out = {}
  try:
    for name in sg.TASK_NAMES:
      before = sg.STATS[name].as_dict()
      rows = _dataset(seqio, name, _split(name))
      after = sg.STATS[name].as_dict()
      out[name] = (rows, {k: v - before.get(k, 0) for k, v in after.items()})
  finally:
    gin.clear_config()
  return out


def test_every_task_yields_the_contract_features(superglue, task_rows, vocab):
  _, sg = superglue
  expected_rows = {"superglue_boolq": 3, "superglue_cb": 4, "superglue_copa": 6,
                   "superglue_multirc": 8, "superglue_record": 12, "superglue_rte": 3,
                   "superglue_wic": 3, "superglue_wsc": 3, "superglue_axb": 4,
                   "superglue_axg": 4}
  for name in sg.TASK_NAMES:
    rows, counted = task_rows[name]
    assert len(rows) == expected_rows[name], name
    for row in rows:
      ids, segments = row["input_ids"], row["segment_ids"]
      assert ids.dtype == segments.dtype == row["idx"].dtype == np.int32
      assert row["label"].dtype == row["group"].dtype == np.int32 and row["idx"].shape == (3,)
      assert ids.shape == segments.shape and 3 <= len(ids) <= LENGTH
      assert ids[0] == vocab.cls_id and ids[-1] == vocab.sep_id
      seps = np.flatnonzero(ids == vocab.sep_id)
      assert len(seps) == (1 if name == "superglue_wsc" else 2), name
      # Segment 0 runs through the first [SEP]; segment 1 after it.
      np.testing.assert_array_equal(segments, (np.arange(len(ids)) > seps[0]).astype(np.int32))
      assert 0 <= row["label"] < sg.NUM_CLASSES[name]
    assert counted["rows"] == len(rows)
    assert counted.get("truncated_rows", 0) == sum(
        1 for r in rows if len(r["input_ids"]) == LENGTH), name
  assert task_rows["superglue_record"][1]["truncated_rows"] > 0  # passages exceed 40 pieces


def test_groups_and_idx_follow_the_decisions(superglue, task_rows):
  _, sg = superglue
  multirc, _ = task_rows["superglue_multirc"]
  assert [int(r["group"]) for r in multirc] == [0, 0, 0, 1, 1, 2, 2, 2]
  assert [tuple(r["idx"]) for r in multirc][5:] == [(1, 2, 5), (1, 2, 6), (1, 2, 7)]
  assert [int(r["label"]) for r in multirc] == [1, 0, 1, 1, 0, 1, 0, 1]
  copa, _ = task_rows["superglue_copa"]
  assert [int(r["group"]) for r in copa] == [0, 0, 1, 1, 2, 2]
  assert [int(r["candidate_index"]) for r in copa] == [0, 1] * 3
  assert [int(r["label"]) for r in copa] == [1, 0, 0, 1, 1, 0]
  cb_test = list(sg.text_rows("cb", "test", FIXTURES))
  assert [r["label"] for r in cb_test] == [-1] and [r["group"] for r in cb_test] == [0]


def test_truncation_cuts_the_longer_segment_and_counts_it(superglue, vocab):
  _, sg = superglue
  ids, segments, cut = sg.encode_pair(vocab, "one two", "three four five six seven " * 20, 12)
  assert len(ids) == 12 and cut > 0
  head = vocab.tokenizer.encode("one two")
  assert ids[1:1 + len(head)].tolist() == head  # the short segment is intact
  assert segments.tolist() == [0] * (len(head) + 2) + [1] * (10 - len(head))
  assert sg.fit_segments([[1] * 5, [2] * 9], 10) == ([[1] * 5, [2] * 5], 4)
  assert sg.fit_segments([[1] * 3, [2] * 3], 10) == ([[1] * 3, [2] * 3], 0)
  with pytest.raises(ValueError, match=">= 8"):
    sg.resolve_length({"input_ids": 4})


def test_wsc_truncation_cuts_around_the_marked_spans(superglue, vocab):
  _, sg = superglue
  assert sg.fit_around([1] * 6, [2] * 3, [3] * 2, 7) == ([1, 1, 2, 2, 2, 3, 3], 4)
  assert sg.fit_around([1] * 6, [2] * 3, [3] * 2, 3) == ([2, 2, 2], 8)
  assert sg.fit_around([1] * 6, [2] * 3, [3] * 2, 2) == ([2, 2], 9)
  rows = [r for decisions in _rows("wsc", "validation") for d in decisions for r in d]
  for row in rows:
    whole, _, _ = sg.encode_pair(vocab, row.text_a, None, None)
    kept, _, cut = sg.encode_pair(vocab, row.text_a, None, None, row.keep)
    # Encoding the three parts apart gives the same pieces as the whole text.
    assert kept.tolist() == whole.tolist() and cut == 0
  row = rows[2]  # "The dog chased * the old cat * until # it # got tired ."
  focus = vocab.tokenizer.encode(row.text_a[row.keep[0]:row.keep[1]])
  ids, _, cut = sg.encode_pair(vocab, row.text_a, None, len(focus) + 4, row.keep)
  assert cut > 0 and len(ids) == len(focus) + 4
  ids = ids.tolist()
  # Both marked spans survive, whole and in one piece, with context on either side.
  starts = [i for i in range(len(ids)) if ids[i:i + len(focus)] == focus]
  assert starts and 1 < starts[0] and starts[0] + len(focus) < len(ids) - 1


def test_mixture_rows_have_only_the_output_features(superglue):
  seqio, sg = superglue
  gin.bind_parameter("superglue_source.path", FIXTURES)
  mixture = seqio.get_mixture_or_task("superglue")
  assert sorted(t.name for t in mixture.tasks) == sorted(sg.MIXTURE_TASKS)
  assert mixture.get_rate(seqio.get_mixture_or_task("superglue_record")) == 100730
  gin.bind_parameter("superglue_mixing_rate.maximum", 1000)
  assert mixture.get_rate(seqio.get_mixture_or_task("superglue_record")) == 1000
  assert mixture.get_rate(seqio.get_mixture_or_task("superglue_cb")) == 250
  gin.bind_parameter("superglue_mixing_rate.equal", True)
  assert {mixture.get_rate(t) for t in mixture.tasks} == {1.0}
  ds = mixture.get_dataset({"input_ids": 48}, split="train", shuffle=False, num_epochs=1)
  rows = list(ds.as_numpy_iterator())
  assert rows  # sampling stops when the first task runs out
  assert all(set(r) == set(sg.OUTPUT_FEATURES) for r in rows)


def test_postprocessed_targets_score_perfectly_with_gold_predictions(superglue, task_rows):
  seqio, sg = superglue
  for name in sg.TASK_NAMES:
    task = seqio.get_mixture_or_task(name)
    targets = [task.postprocess_fn(b"", example=r, is_target=True) for r in task_rows[name][0]]
    predictions = [int(t["label"]) for t in targets]
    for metric_fn in task.metric_fns:
      scores = metric_fn(targets, [task.postprocess_fn(p) for p in predictions])
      assert all(v == pytest.approx(1.0) for v in scores.values()), (name, scores)


def _expected_with_first_choice(task):
  """The official metrics, counted by hand from the fixture rows, of a model that predicts
  class 0 for every row and the first candidate of every COPA/ReCoRD question."""
  from ernie3_jax.superglue.metrics import token_f1
  examples = list(sources.read_split(task, "validation", FIXTURES))
  if task == "multirc":
    questions = [q for e in examples for q in e["passage"]["questions"]]
    return {"f1a": 0.0,  # no answer predicted true: no true positive
            "exact_match": np.mean([not any(a["label"] for a in q["answers"])
                                    for q in questions])}
  if task == "record":
    firsts = [(e["passage"]["entities"][0], qa["answers"]) for e in examples for qa in e["qas"]]
    return {"f1": np.mean([max(token_f1(c, a) for a in answers) for c, answers in firsts]),
            "exact_match": np.mean([c in answers for c, answers in firsts])}
  names = sources.STRING_LABELS.get(task)
  gold = [names.index(e["label"]) if names else int(e["label"]) for e in examples]
  out = {"accuracy": np.mean([g == 0 for g in gold])}
  if task == "cb":  # F1 of class 0 (every prediction); classes 1 and 2 have none
    n, n0 = len(gold), gold.count(0)
    out["f1_macro"] = (2 * n0 / (n + n0)) / 3
  return out


def test_every_task_is_wired_to_its_official_metrics(superglue, task_rows):
  """Imperfect predictions, so a task wired to the wrong metric function would show."""
  seqio, sg = superglue
  for name in [n for n in sg.TASK_NAMES if not n.endswith(("_axb", "_axg"))]:
    task = seqio.get_mixture_or_task(name)
    targets = [task.postprocess_fn(b"", example=r, is_target=True) for r in task_rows[name][0]]
    if name in ("superglue_copa", "superglue_record"):
      firsts = {}  # score each question's first row highest
      predictions = [1.0 if firsts.setdefault(int(t["group"]), i) == i else 0.0
                     for i, t in enumerate(targets)]
    else:
      predictions = [task.postprocess_fn(0) for _ in targets]
    got = {}
    for metric_fn in task.metric_fns:
      got.update(metric_fn(targets, predictions))
    want = _expected_with_first_choice(name.removeprefix("superglue_"))
    assert set(got) == set(want), name
    for key, value in want.items():
      assert got[key] == pytest.approx(value), (name, key)
    assert any(v < 1.0 for v in want.values()), f"{name}: the fixture cannot tell metrics apart"


# --------------------------------------------------------------------------- submissions


def _test_targets(sg, name):
  """Postprocessed test-split targets, from the untokenised rows (the same pass-through
  features the task's examples carry)."""
  return [sg.postprocess(b"", example=r, is_target=True)
          for r in sg.text_rows(name, "test", FIXTURES)]


def test_submission_files_use_official_names_and_labels(superglue, tmp_path):
  _, sg = superglue
  out = str(tmp_path)

  def written(name, predictions):
    rows = _test_targets(sg, name)
    path = submission.write_submission(name, rows, predictions(len(rows)), out)
    with open(path) as f:
      return os.path.basename(path), [json.loads(line) for line in f]

  assert written("superglue_boolq", lambda n: [1, 0][:n]) == (
      "BoolQ.jsonl", [{"idx": 0, "label": "true"}, {"idx": 1, "label": "false"}])
  assert written("superglue_cb", lambda n: [np.array([0.1, 0.2, 0.7])]) == (
      "CB.jsonl", [{"idx": 0, "label": "neutral"}])
  # COPA: the higher-scoring row of each example; the label is its choice index.
  assert written("superglue_copa", lambda n: [0.1, 0.9, 0.8, 0.2]) == (
      "COPA.jsonl", [{"idx": 0, "label": 1}, {"idx": 1, "label": 0}])
  assert written("superglue_record", lambda n: [0.3, 0.1]) == (
      "ReCoRD.jsonl", [{"idx": 0, "label": "Mira Stone"}])
  assert written("superglue_multirc", lambda n: [0, 1]) == ("MultiRC.jsonl", [
      {"idx": 0, "passage": {"questions": [{"idx": 0, "answers": [{"idx": 0, "label": 0},
                                                                  {"idx": 1, "label": 1}]}]}}])
  # WSC capitalises its booleans in the benchmark's own writer (jiant); BoolQ and WiC do not.
  assert written("superglue_wsc", lambda n: [0]) == ("WSC.jsonl", [{"idx": 0, "label": "False"}])
  assert written("superglue_axb", lambda n: [0, 1, 1, 0])[1][1] == {"idx": 1,
                                                                    "label": "not_entailment"}
  names = sorted(os.listdir(out))
  assert names == sorted(["BoolQ.jsonl", "CB.jsonl", "COPA.jsonl", "ReCoRD.jsonl",
                          "MultiRC.jsonl", "WSC.jsonl", "AX-b.jsonl"])
  with pytest.raises(ValueError, match="appear in more than one row"):
    rows = _test_targets(sg, "superglue_boolq")
    submission.submission_lines("boolq", rows + rows, [0] * 4)
  with pytest.raises(ValueError, match="predicted class 3"):
    submission.submission_lines("rte", _test_targets(sg, "superglue_rte"), [3])
