"""The official SuperGLUE metrics on hand-computed cases."""

import numpy as np
import pytest

from ernie3_jax.superglue import metrics as m


def _t(label, group=0, idx=(0, -1, -1), candidate="", answers=()):
  return {"label": label, "group": group, "idx": idx, "candidate": candidate,
          "answers": list(answers)}


def test_accuracy_from_class_indices_and_from_logits():
  targets = [_t(1), _t(0), _t(1), _t(1)]
  assert m.accuracy(targets, [1, 1, 1, 0]) == {"accuracy": 0.5}
  logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 3.0], [1.0, 0.0]])
  assert m.accuracy(targets, list(logits)) == {"accuracy": 0.75}
  assert m.accuracy([1, 0], [1, 0]) == {"accuracy": 1.0}  # plain int targets


def test_cb_accuracy_and_macro_f1():
  # class 0: tp 1, fp 1, fn 1 -> F1 1/2; class 1: tp 2, fp 1 -> 4/5; class 2: tp 1, fn 1 -> 2/3.
  out = m.cb_metrics([_t(y) for y in [0, 0, 1, 2, 2, 1]], [0, 1, 1, 2, 0, 1])
  assert out["accuracy"] == pytest.approx(4 / 6)
  assert out["f1_macro"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
  # A class never predicted nor gold scores 0 in the macro average.
  assert m.cb_metrics([_t(0), _t(0)], [0, 0])["f1_macro"] == pytest.approx(1 / 3)


def test_copa_argmax_per_group_first_row_on_ties():
  targets = [_t(1, 0), _t(0, 0), _t(0, 1), _t(1, 1), _t(1, 2), _t(0, 2)]
  scores = [0.2, 0.7, 0.1, 0.3, 0.5, 0.5]
  assert m.copa_metrics(targets, scores) == {"accuracy": pytest.approx(2 / 3)}
  # Rows of a group need not be adjacent.
  order = [0, 2, 4, 1, 3, 5]
  assert m.copa_metrics([targets[i] for i in order], [scores[i] for i in order]) == {
      "accuracy": pytest.approx(2 / 3)}


def test_multirc_f1a_over_answers_and_exact_match_per_question():
  targets = [_t(1, 0), _t(0, 0), _t(1, 0), _t(0, 1), _t(1, 1)]
  out = m.multirc_metrics(targets, [1, 0, 0, 0, 1])
  assert out["f1a"] == pytest.approx(0.8)  # tp 2, fp 0, fn 1
  assert out["exact_match"] == 0.5


def test_record_normalisation_and_max_over_gold():
  assert m.normalize_answer("The  Cat, an a-b!") == "cat ab"
  assert m.token_f1("Rovers FC", "Riverside Rovers") == pytest.approx(0.5)
  assert m.token_f1("Rovers FC", "Rovers") == pytest.approx(2 / 3)
  gold0, gold1 = ["Riverside Rovers", "Rovers"], ["Sam Hale"]
  targets = [_t(0, 0, candidate="Rovers FC", answers=gold0),
             _t(0, 0, candidate="Northgate United", answers=gold0),
             _t(1, 1, candidate="The Sam Hale!", answers=gold1),
             _t(0, 1, candidate="Port Ellis", answers=gold1)]
  out = m.record_metrics(targets, [2.0, 1.0, 0.5, -1.0])
  assert out["f1"] == pytest.approx((2 / 3 + 1) / 2)
  assert out["exact_match"] == 0.5


def test_matthews_correlation():
  out = m.matthews_corrcoef([_t(y) for y in [1, 1, 0, 0, 1]], [1, 0, 0, 1, 1])
  assert out["matthews_corrcoef"] == pytest.approx(1 / 6)  # (2*1 - 1*1) / sqrt(3*3*2*2)
  assert m.matthews_corrcoef([_t(1), _t(0)], [1, 1])["matthews_corrcoef"] == 0.0
  assert m.matthews_corrcoef([_t(1), _t(0)], [1, 0])["matthews_corrcoef"] == pytest.approx(1.0)


def test_axg_gender_parity_pairs_rows_2k_and_2k_plus_1():
  targets = [_t(y, i, (i, -1, -1)) for i, y in enumerate([1, 0, 0, 1, 0, 0])]
  out = m.axg_metrics(targets, [1, 1, 0, 1, 0, 0])
  assert out["gender_parity"] == pytest.approx(2 / 3)
  assert out["accuracy"] == pytest.approx(5 / 6)
  with pytest.raises(ValueError, match="idx \\[4\\]"):
    m.axg_metrics(targets[:5], [1, 1, 0, 1, 0])


def test_superglue_average_averages_two_metric_tasks_first_and_skips_diagnostics():
  scores = {"superglue_boolq": {"accuracy": 0.8}, "cb": {"accuracy": 0.9, "f1_macro": 0.7},
            "copa": {"accuracy": 0.6}, "multirc": {"f1a": 0.7, "exact_match": 0.3},
            "record": {"f1": 0.5, "exact_match": 0.4}, "rte": {"accuracy": 0.7},
            "wic": {"accuracy": 0.6}, "wsc": {"accuracy": 0.65},
            "axb": {"matthews_corrcoef": -1.0}, "axg": {"gender_parity": 0.0, "accuracy": 0.0}}
  expected = (0.8 + 0.8 + 0.6 + 0.5 + 0.45 + 0.7 + 0.6 + 0.65) / 8
  assert m.superglue_average(scores) == pytest.approx(expected)
  del scores["wsc"]
  with pytest.raises(ValueError, match="missing \\['wsc'\\]"):
    m.superglue_average(scores)
  assert m.superglue_average(scores, partial=True) == pytest.approx((expected * 8 - 0.65) / 7)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="unlabeled"):
    m.accuracy([_t(-1)], [0])
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    m.accuracy([_t(0), _t(1)], [0])
  with pytest.raises(ValueError, match="neither a class index"):
    m.accuracy([_t(0)], [0.3])
  with pytest.raises(ValueError, match="'group'"):
    m.copa_metrics([0, 1], [0.1, 0.2])
  with pytest.raises(ValueError, match="no gold answers"):
    m.record_metrics([_t(-1, 0, candidate="x")], [1.0])


def test_record_query_without_candidates_scores_zero_not_dropped():
  from ernie3_jax.superglue import formats as superglue_formats
  example = {"idx": 4, "passage": {"text": "A passage naming nobody.", "entities": []},
             "qas": [{"idx": 9, "query": "@placeholder won.", "answers": ["Sam Hale"]}]}
  (rows,) = superglue_formats.format_example("record", example)
  assert [(r.candidate, r.label, r.idx) for r in rows] == [("", 0, (4, 9, -1))]
  gold = ["Sam Hale"]
  targets = [_t(1, 0, candidate="Sam Hale", answers=gold),
             _t(0, 1, candidate=rows[0].candidate, answers=gold)]
  out = m.record_metrics(targets, [1.0, 0.3])
  assert out["f1"] == out["exact_match"] == 0.5  # the unanswerable query counts as 0
