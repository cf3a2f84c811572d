"""Evaluation while training: pre-training's held-out figures every N steps, and
fine-tuning's validation metrics with the best checkpoint kept, read by eval/infer, and
early stopping, all surviving a crash and resume exactly."""

import glob
import json
import os

import jax
import numpy as np
import pytest

from ernie3_jax.config import gin_utils
from ernie3_jax.evaluation import seqio_eval
from ernie3_jax.runtime.tf_runtime import tf
from ernie3_jax.training import finetune
from tests import finetune_testing as ft
from tests import training_testing as tt

EVAL_BINDINGS = ["evaluate.input_builder=@SyntheticInput", "evaluate.num_batches=2",
                 "evaluate.nlu_batch_size=8", "evaluate.nlg_batch_size=4",
                 "evaluate.sequence_length=16", "evaluate.nlg_segment_length=8"]


def _flat(params):
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in
          jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]}


def _scalars(model_dir, subdir="tensorboard"):
  """{tag: {step: value}} of every scalar in MODEL_DIR/`subdir`'s event files."""
  out = {}
  for path in glob.glob(os.path.join(model_dir, subdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                  else value.simple_value)
        out.setdefault(value.tag, {})[event.step] = number
  return out


# -- pre-training ---------------------------------------------------------------


def test_pretraining_evaluates_every_n_steps_into_history_tensorboard_and_console(
    tmp_path, capsys):
  result = tt.run(tmp_path, 7, extra_bindings=EVAL_BINDINGS, eval_every=3)
  steps = [e["step"] for e in result.evaluations]
  assert steps == [3, 6, 7]  # every 3 steps and the last
  tasks = {"knowledge_masked_lm", "document_lm", "sentence_reordering", "sentence_distance",
           "uktp"}
  for record in result.evaluations:
    for task in tasks:
      assert np.isfinite(record[f"eval/{task}/loss"]), (record, task)
      assert 0.0 <= record[f"eval/{task}/accuracy"] <= 1.0
  # The same held-out rows each time: the figures move only with the parameters, which
  # train on other rows; the NLG task learns its pattern, so its held-out loss falls.
  assert (result.evaluations[-1]["eval/document_lm/loss"]
          < result.evaluations[0]["eval/document_lm/loss"])
  with open(tmp_path / "train_history.json") as f:
    saved = json.load(f)["evaluations"]
  assert [e["step"] for e in saved] == steps
  scalars = _scalars(str(tmp_path))
  assert sorted(scalars["eval/document_lm/loss"]) == steps
  np.testing.assert_allclose(scalars["eval/uktp/accuracy"][6],
                             result.evaluations[1]["eval/uktp/accuracy"], rtol=1e-6)
  assert "loss" in scalars  # the training scalars are beside them
  assert "eval step 6: document_lm=" in capsys.readouterr().out


def test_pretraining_evaluation_equals_run_mode_eval_on_the_same_checkpoint(tmp_path):
  from ernie3_jax.training import evaluate
  # What `--run_mode=eval` reads from gin: the NLG batch trained with, and the mesh.
  bindings = EVAL_BINDINGS + ["train.nlg_batch_size=4", "make_mesh.num_devices=1"]
  result = tt.run(tmp_path, 5, extra_bindings=bindings, eval_every=5, async_checkpoints=False)
  offline = evaluate.evaluate(str(tmp_path))
  assert offline["step"] == 5
  online = result.evaluations[-1]
  for key, value in offline.items():
    if key != "step":
      np.testing.assert_allclose(online[f"eval/{key}"], value, rtol=1e-6, err_msg=key)


@pytest.mark.slow  # three runs
def test_pretraining_resume_keeps_the_earlier_evaluations(tmp_path):
  straight = tt.run(tmp_path / "straight", 8, extra_bindings=EVAL_BINDINGS, eval_every=2,
                    checkpoint_every=4, schedule_steps=8)
  tt.run(tmp_path / "resumed", 4, extra_bindings=EVAL_BINDINGS, eval_every=2,
         checkpoint_every=4, schedule_steps=8)
  resumed = tt.run(tmp_path / "resumed", 8, extra_bindings=EVAL_BINDINGS, eval_every=2,
                   checkpoint_every=4, schedule_steps=8)
  assert resumed.resumed_from == 4
  strip = lambda es: [{k: v for k, v in e.items() if k != "eval_seconds"} for e in es]
  assert strip(resumed.evaluations) == strip(straight.evaluations)
  assert [e["step"] for e in resumed.evaluations] == [2, 4, 6, 8]


def test_an_unbound_evaluation_input_is_named_before_model_dir_exists(tmp_path):
  with pytest.raises(ValueError, match="evaluate.input_builder"):
    tt.run(tmp_path / "run", 4, eval_every=2)
  assert not os.path.exists(tmp_path / "run")


# -- fine-tuning ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  path = tmp_path_factory.mktemp("pretrained")
  tt.run(path, 0, extra_bindings=["Ernie3Config.vocab_size=96"])
  return str(path)


def _bindings():
  ft.register()
  return tt.TINY_BINDINGS + [
      f"finetune_setup.mixture_or_task='{ft.TASK}'",
      f"finetune_setup.num_classes={ft.NUM_CLASSES}", "make_mesh.num_devices=1",
      "Ernie3Config.dropout_rate=0.0", "Ernie3Config.attention_dropout_rate=0.0",
      "learning_rate_schedule.warmup_steps=2"]


class ScriptedEvaluator:
  """An evaluator whose "average" follows a script by step, keeping a copy of the
  parameters it was given (a metric that peaks mid-run, whatever the model learns);
  `fail_at` raises there, as a process killed mid-run would stop."""

  def __init__(self, scores, fail_at=None):
    self.scores, self.fail_at, self.seen = scores, fail_at, {}

  def factory(self, setup, batch_size, sequence_length):
    del setup, batch_size, sequence_length
    return self

  def metric_names(self):
    return ["average", f"{ft.TASK}/"]

  def __call__(self, params, step):
    if step == self.fail_at:
      raise RuntimeError(f"killed at step {step}")
    self.seen[step] = _flat(params)
    score = self.scores[step]
    return {f"{ft.TASK}/accuracy": score, "average": score}


def _finetune(model_dir, pretrained, evaluator, num_steps=12, **kwargs):
  gin_utils.parse_gin([], _bindings())
  args = dict(batch_size=4, sequence_length=16, log_every=4, checkpoint_every=2,
              keep_checkpoints=1, async_checkpoints=False, progress_bar=False,
              init_from=pretrained, eval_every=2, schedule_steps=12,
              evaluator_factory=evaluator.factory)
  args.update(kwargs)
  return finetune.finetune(str(model_dir), num_steps=num_steps, **args)


PEAK_MID_RUN = {2: 0.5, 4: 0.7, 6: 0.9, 8: 0.6, 10: 0.4, 12: 0.3}


def test_the_best_checkpoint_is_the_peak_survives_rotation_and_is_what_eval_reads(
    tmp_path, pretrained):
  evaluator = ScriptedEvaluator(PEAK_MID_RUN)
  result = _finetune(tmp_path, pretrained, evaluator)
  assert result.stopped_by == "num_steps"
  assert [e["step"] for e in result.evaluations] == [2, 4, 6, 8, 10, 12]
  with open(tmp_path / "finetune_history.json") as f:
    saved = json.load(f)
  assert saved["best"] == {"metric": "average", "mode": "max", "step": 6, "value": 0.9,
                           "evaluations_since": 3}
  # keep_checkpoints=1 rotated every regular checkpoint but the last; the best stays.
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["12"]
  assert sorted(os.listdir(tmp_path / "best_checkpoint")) == ["6"]
  gin_utils.parse_gin([], _bindings())
  _, best, step = seqio_eval.load_finetuned(str(tmp_path), 4, "best")
  assert step == 6
  for key, value in evaluator.seen[6].items():
    np.testing.assert_array_equal(_flat(best.params)[key], value, err_msg=key)
  _, latest, step = seqio_eval.load_finetuned(str(tmp_path), 4, "latest")
  assert step == 12
  assert any(not np.array_equal(_flat(latest.params)[k], v)
             for k, v in evaluator.seen[6].items())
  scalars = _scalars(str(tmp_path))
  assert scalars["eval/average"] == pytest.approx({s: v for s, v in PEAK_MID_RUN.items()})


def test_the_best_checkpoint_is_verified_like_any_other(tmp_path, pretrained):
  _finetune(tmp_path, pretrained, ScriptedEvaluator(PEAK_MID_RUN), num_steps=8)
  array_files = [p for p in glob.glob(str(tmp_path / "best_checkpoint" / "6" / "state" / "**"),
                                      recursive=True)
                 if os.path.isfile(p) and "/d/" in p]
  assert array_files
  for path in array_files:  # one flipped byte in every data file
    with open(path, "r+b") as f:
      f.seek(os.path.getsize(path) // 2)
      byte = f.read(1)
      f.seek(-1, 1)
      f.write(bytes([byte[0] ^ 0xFF]))
  gin_utils.parse_gin([], _bindings())
  from ernie3_jax.training.checkpoint_files import CheckpointCorruptError
  with pytest.raises(CheckpointCorruptError, match="best_checkpoint"):
    seqio_eval.load_finetuned(str(tmp_path), 4, "best")


def test_early_stopping_stops_after_patience_evaluations_without_improvement(
    tmp_path, pretrained):
  result = _finetune(tmp_path, pretrained, ScriptedEvaluator(PEAK_MID_RUN),
                     early_stopping_patience=2)
  # Best at 6; 8 and 10 do not improve on it: two evaluations, so it stops at 10.
  assert (result.final_step, result.stopped_by) == (10, "early_stopping")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]
  with open(tmp_path / "finetune_history.json") as f:
    assert json.load(f)["best"]["evaluations_since"] == 2


@pytest.mark.slow  # three runs
def test_a_crash_and_resume_continue_the_evaluations_best_and_patience_exactly(
    tmp_path, pretrained):
  # Best at 4; 6, 8 and 10 do not improve on it, so patience 3 stops both runs at 10.
  # The crash comes after step 10's update, before its save: the resumed run restarts
  # from 8 with two evaluations already without improvement; one that forgot them
  # would go on to 16.
  scores = {2: 0.5, 4: 0.8, 6: 0.6, 8: 0.7, 10: 0.7, 12: 0.1, 14: 0.1, 16: 0.1, 18: 0.1}
  straight = _finetune(tmp_path / "straight", pretrained, ScriptedEvaluator(scores),
                       num_steps=18, schedule_steps=18, early_stopping_patience=3)
  crashed = ScriptedEvaluator(scores, fail_at=10)
  with pytest.raises(RuntimeError, match="killed at step 10"):
    _finetune(tmp_path / "resumed", pretrained, crashed, num_steps=18, schedule_steps=18,
              early_stopping_patience=3)
  resumed = _finetune(tmp_path / "resumed", pretrained, ScriptedEvaluator(scores),
                      num_steps=18, schedule_steps=18, early_stopping_patience=3)
  assert resumed.resumed_from == 8
  strip = lambda es: [{k: v for k, v in e.items() if k != "eval_seconds"} for e in es]
  assert strip(resumed.evaluations) == strip(straight.evaluations)
  assert (resumed.final_step, resumed.stopped_by) == (10, "early_stopping")
  assert (straight.final_step, straight.stopped_by) == (10, "early_stopping")
  for run in ("straight", "resumed"):
    with open(tmp_path / run / "finetune_history.json") as f:
      assert json.load(f)["best"] == {"metric": "average", "mode": "max", "step": 4,
                                      "value": 0.8, "evaluations_since": 3}
    assert sorted(os.listdir(tmp_path / run / "best_checkpoint")) == ["4"]
  a, b = _flat(straight.state.params), _flat(resumed.state.params)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_settings_that_cannot_work_are_named(tmp_path, pretrained):
  evaluator = ScriptedEvaluator(PEAK_MID_RUN)
  with pytest.raises(ValueError, match="finetune.best_metric='superglue_rte/accuracy'"):
    _finetune(tmp_path / "a", pretrained, evaluator, best_metric="superglue_rte/accuracy")
  with pytest.raises(ValueError, match="finetune.best_mode='highest'"):
    _finetune(tmp_path / "b", pretrained, evaluator, best_mode="highest")
  with pytest.raises(ValueError, match="early_stopping_patience=2 needs finetune.eval_every"):
    _finetune(tmp_path / "c", pretrained, evaluator, eval_every=0, early_stopping_patience=2)
  with pytest.raises(ValueError, match="no evaluator was given"):
    _finetune(tmp_path / "d", pretrained, evaluator, evaluator_factory=None)
  for name in "abcd":
    assert not os.path.exists(tmp_path / name)


def test_mixture_score_is_the_superglue_average_of_the_tasks_present():
  results = {"superglue_cb": {"f1_macro": 0.5, "accuracy": 0.7},
             "superglue_rte": {"accuracy": 0.8}}
  assert seqio_eval.mixture_score(results) == pytest.approx((0.6 + 0.8) / 2)
  assert seqio_eval.mixture_score({"my_task": {"a": 0.2, "b": 0.4}}) == pytest.approx(0.3)


# -- two processes ------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_evaluate_their_shares_and_write_one_set_of_results(tmp_path):
  """The demo's real input on 2 processes x 2 devices: every process evaluates its share
  of each held-out batch; the figures are the 1-process run's (to float32 rounding: the
  sums go through gloo) and are written once, by process 0."""
  # pylint: disable-next=g-import-not-at-top
  from tests.test_multiprocess_resume import LOSS_RTOL, Cluster
  extra = ["--gin.train.eval_every=6", "--gin.evaluate.num_batches=2"]
  runs = {}
  for processes in (1, 2):
    model_dir = str(tmp_path / f"{processes}p")
    cluster = Cluster(model_dir, processes, extra)
    assert cluster.wait() == [0] * processes, cluster.tails()
    with open(os.path.join(model_dir, "train_history.json")) as f:
      runs[processes] = json.load(f)["evaluations"]
    assert [e["step"] for e in runs[processes]] == [6, 12]
    assert cluster.output(0).count("eval step ") == 2
    if processes == 2:
      assert "eval step " not in cluster.output(1)
      events = glob.glob(os.path.join(model_dir, "tensorboard", "events.out.tfevents.*"))
      assert len(events) == 1, events  # process 0's
      assert sorted(_scalars(model_dir)["eval/document_lm/loss"]) == [6, 12]
  for one, two in zip(runs[1], runs[2]):
    for key, value in one.items():
      if key.startswith("eval/") and key.endswith("/loss"):
        np.testing.assert_allclose(two[key], value, rtol=LOSS_RTOL, err_msg=key)
