"""Fine-tuning: per-task heads, input, restore from pre-training, freezing, learning,
seqio evaluation and submission files (SuperGLUE CB over the fixture files)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ernie3_jax.config import gin_utils
from ernie3_jax.training import finetune
from ernie3_jax.training.finetune_heads import HeadLayout
from tests import finetune_testing as ft
from tests import training_testing as tt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_DIR = os.path.join(REPO, "tests", "fixtures", "superglue")
VOCAB = ["Ernie3Config.vocab_size=4000"]  # the embedded SentencePiece vocabulary


def _bindings(task="superglue_cb", freeze=False, extra=()):
  return tt.TINY_BINDINGS + VOCAB + [
      "import ernie3_jax.tasks", "import ernie3_jax.evaluation.seqio_eval",
      f"superglue_source.path='{FIXTURE_DIR}'",
      f"finetune_setup.mixture_or_task='{task}'",
      f"finetune_setup.freeze_universal={freeze}", "make_mesh.num_devices=1",
      "evaluate_checkpoint.batch_size=4", "evaluate_checkpoint.sequence_length=64",
      "infer_checkpoint.batch_size=4", "infer_checkpoint.sequence_length=64"] + list(extra)


def _run(model_dir, num_steps, init_from, **kwargs):
  args = dict(batch_size=4, sequence_length=64, log_every=5, checkpoint_every=0,
              progress_bar=False, init_from=init_from)
  args.update(kwargs)
  return finetune.finetune(str(model_dir), num_steps=num_steps, **args)


def _flat(params):
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in
          jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A 'pre-trained' tiny checkpoint: initialised and saved (step 0), vocabulary 4000."""
  path = tmp_path_factory.mktemp("pretrained")
  result = tt.run(path, 0, extra_bindings=VOCAB)
  return str(path), _flat(result.state.params)


# Learning from a random "pre-trained" backbone: its [CLS] features start almost
# identical across inputs, so dropout is off and the rate high enough to separate
# CB's three training rows within a few dozen steps.
FINETUNE_BINDINGS = ["learning_rate_schedule.peak=1e-2", "learning_rate_schedule.warmup_steps=3",
                     "Ernie3Config.dropout_rate=0.0", "Ernie3Config.attention_dropout_rate=0.0"]
STEPS = 60


@pytest.fixture(scope="module")
def initialised(tmp_path_factory, pretrained):
  """A CB fine-tuning run of 0 steps from the pre-trained checkpoint (saved as step 0)."""
  path = tmp_path_factory.mktemp("finetuned_cb")
  gin_utils.parse_gin([], _bindings(freeze=True, extra=FINETUNE_BINDINGS))
  result = _run(path, 0, pretrained[0], batch_size=12)
  return str(path), _flat(result.state.params)


@pytest.fixture(scope="module")
def finetuned(initialised):
  """The same run continued to STEPS steps with the universal module frozen."""
  path, _ = initialised
  gin_utils.parse_gin([], _bindings(freeze=True, extra=FINETUNE_BINDINGS))
  result = _run(path, STEPS, None, batch_size=12, log_every=10)
  return path, result


# -- heads and input ----------------------------------------------------------


def test_each_task_has_its_own_head_slice():
  layout = HeadLayout.for_tasks(["a", "b"], {"a": 3, "b": 2})
  assert (layout.total, layout.offsets) == (5, (0, 3))
  logits = jnp.asarray(np.random.RandomState(0).randn(2, 5), jnp.float32)
  task_index = jnp.asarray([0, 1])
  lp = np.asarray(layout.task_log_probs(logits, task_index))
  np.testing.assert_allclose(lp[0], jax.nn.log_softmax(logits[0, :3]), rtol=1e-6)
  np.testing.assert_allclose(lp[1, :2], jax.nn.log_softmax(logits[1, 3:]), rtol=1e-6)
  assert lp[1, 2] < -1e8  # task b has no third class
  # A row's loss never reaches another task's columns.
  grad = jax.grad(lambda x: -layout.task_log_probs(x, task_index)[:, 0].sum())(logits)
  assert np.all(np.asarray(grad)[0, 3:] == 0) and np.all(np.asarray(grad)[1, :3] == 0)
  with pytest.raises(ValueError, match=r"no class count for tasks \['c'\]"):
    HeadLayout.for_tasks(["a", "c"], {"a": 3})


def test_num_labels_that_disagree_with_the_heads_is_named():
  gin_utils.parse_gin([], ["Ernie3Config.num_labels=7"])
  layout = HeadLayout.for_tasks(["a", "b"], {"a": 3, "b": 2})
  with pytest.raises(ValueError, match=r"Ernie3Config.num_labels=7.*need 5"):
    finetune.model_config(layout)


def test_input_pads_tags_samples_and_resumes():
  from ernie3_jax.training.finetune_input import FinetuneInput
  ft.register()
  names = [ft.TASK, ft.TASK_B]
  make = lambda: FinetuneInput(names, batch_size=6, sequence_length=14, seed=3,
                               rates={ft.TASK: 2.0, ft.TASK_B: 1.0})
  straight = make()
  batches = [straight.next_batch() for _ in range(3)]
  straight.close()
  b = batches[0]
  assert b["input_ids"].shape == (6, 14) and b["segment_ids"].shape == (6, 14)
  seen = np.concatenate([x["task_index"] for x in batches])
  assert set(seen) == {0, 1}
  for x in batches:
    for ids, segs, label, index in zip(x["input_ids"], x["segment_ids"], x["label"],
                                       x["task_index"]):
      n = int((ids != 0).sum())
      assert ids[0] == ft.CLS and ids[n - 1] == ft.SEP and not ids[n:].any()
      assert segs[n - 1] == 1 and not segs[n:].any()
      assert label == ids[1] % ft.NUM_CLASSES[names[index]]  # the row's own label
  assert straight.state() == {"step": 3}
  again = make()
  again.restore([{"step": 1}])
  second, third = again.next_batch(), again.next_batch()
  again.close()
  for k in b:
    np.testing.assert_array_equal(second[k], batches[1][k])
    np.testing.assert_array_equal(third[k], batches[2][k])


# -- restore, freeze, learn ---------------------------------------------------


def test_restore_keeps_pretrained_params_and_adds_fresh_heads(initialised, pretrained):
  pre_dir, pre = pretrained
  got = initialised[1]
  assert set(pre) < set(got)
  for key, value in pre.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  heads = sorted(set(got) - set(pre))
  assert heads == ["['classifier']['dense']['bias']", "['classifier']['dense']['kernel']"]
  assert got["['classifier']['dense']['kernel']"].shape[-1] == 3  # CB's classes
  # A checkpoint of another model config is refused, naming the parameter.
  from ernie3_jax.training import checkpoint_files, partitioning
  gin_utils.parse_gin([], _bindings(extra=["Ernie3Config.d_ff=96"]))
  setup = finetune.finetune_setup()
  abstract, _ = partitioning.state_shardings(setup.model, setup.tx, setup.mesh, setup.rules, 0)
  shardings = jax.tree_util.tree_map(lambda _: None, abstract.params)
  with pytest.raises(ValueError, match=r"\['universal'\].*\['wi'\]\['kernel'\] has shape"):
    checkpoint_files.restore_params_into(abstract.params, shardings, pre_dir)


def test_frozen_universal_stays_bit_identical_while_the_rest_learns(finetuned, initialised,
                                                                    pretrained):
  _, result = finetuned
  start, pre = initialised[1], pretrained[1]
  got = _flat(result.state.params)
  assert result.resumed_from == 0 and result.final_step == STEPS
  frozen = [k for k in got if k.startswith(("['embedder']", "['universal']"))]
  assert len(frozen) > 10
  for key in frozen:
    np.testing.assert_array_equal(got[key], pre[key], err_msg=key)
  trained = [k for k in got if k.startswith(("['nlu']", "['pooler']", "['classifier']"))]
  changed = [k for k in trained if not np.array_equal(got[k], start[k])]
  assert len(changed) == len(trained)
  # The loss on CB's three training rows, repeated, falls well below chance (log 3).
  losses = [h["loss"] for h in result.history]
  assert len(losses) == STEPS // 10
  assert losses[0] > 1.0 and np.mean(losses[-3:]) < 0.7 * losses[0], losses


def test_eval_writes_seqio_metrics_that_match_the_predictions(finetuned):
  from ernie3_jax.evaluation import seqio_eval
  from ernie3_jax.superglue.sources import read_split
  path, _ = finetuned
  gin_utils.parse_gin([], _bindings(freeze=True))
  out = seqio_eval.evaluate_checkpoint(path)
  with open(os.path.join(path, "eval_metrics.json")) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(out))
  assert saved["step"] == STEPS and saved["split"] == "validation"
  metrics = saved["tasks"]["superglue_cb"]
  assert set(metrics) == {"accuracy", "f1_macro"}
  # The accuracy seqio computed is the argmax of the model's own predictions.
  _, predictor, _ = seqio_eval.load_finetuned(path, 4)  # its forward pass is compiled once
  rows = _cb_rows("validation")
  predicted = predictor.log_probs(rows, 0, 64).argmax(-1)
  gold = [("entailment", "contradiction", "neutral").index(e["label"])
          for e in read_split("cb", "validation", FIXTURE_DIR)]
  assert metrics["accuracy"] == pytest.approx(np.mean(predicted == np.asarray(gold)))
  assert os.listdir(os.path.join(path, "tensorboard", "eval"))
  assert saved["complete"] is True and saved["skipped"] == {}
  # Every row's prediction, at full precision, beside the metrics.
  with open(os.path.join(path, "eval_predictions", "superglue_cb.validation.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == len(gold)
  assert np.mean([np.argmax(r["prediction"]) == g for r, g in zip(rows, gold)]) == \
      pytest.approx(metrics["accuracy"])
  logp = predictor.log_probs(_cb_rows("validation"), 0, 64)
  np.testing.assert_allclose([r["prediction"] for r in rows], logp, rtol=1e-6, atol=1e-6)


def test_an_empty_split_is_named_before_model_work_and_stale_results_go(finetuned, tmp_path):
  import shutil
  from ernie3_jax.evaluation import seqio_eval
  path, _ = finetuned
  data = tmp_path / "superglue"
  shutil.copytree(FIXTURE_DIR, data)
  (data / "CB" / "val.jsonl").write_text("")
  run = tmp_path / "run"
  shutil.copytree(path, run)
  (run / "eval_metrics.json").write_text('{"from": "another data directory"}')
  gin_utils.parse_gin([], _bindings(freeze=True, extra=[f"superglue_source.path='{data}'"]))
  with pytest.raises(ValueError, match=rf"superglue_cb: the 'validation' split is empty "
                                       rf"\({data}/CB/val.jsonl\)"):
    seqio_eval.evaluate_checkpoint(str(run))
  assert not (run / "eval_metrics.json").exists()  # no stale result survives a failed eval


def _data_with(tmp_path, folder, name, edit):
  """A copy of the fixture directory with `folder/name`'s text passed through `edit`."""
  import shutil
  data = tmp_path / "superglue"
  shutil.copytree(FIXTURE_DIR, data)
  path = data / folder / name
  path.write_text(edit(path.read_text()))
  return data


def _truncate_last_line(text):
  return text.rstrip("\n")[:-20] + "\n"


def _no_model(*args, **kwargs):
  raise AssertionError("the model was loaded before the data was checked")


@pytest.mark.parametrize("run_mode, file_name, line", [("eval", "val.jsonl", 4),
                                                       ("infer", "test.jsonl", 1)])
def test_a_bad_row_anywhere_is_named_before_the_model_loads(tmp_path, monkeypatch, run_mode,
                                                            file_name, line):
  from ernie3_jax.cli import console
  from ernie3_jax.evaluation import seqio_eval
  from ernie3_jax.superglue.sources import SuperGlueDataError
  # The last row is cut short: its split has good rows before it.
  data = _data_with(tmp_path, "CB", file_name, _truncate_last_line)
  gin_utils.parse_gin([], _bindings(extra=[f"superglue_source.path='{data}'"]))
  monkeypatch.setattr(seqio_eval, "load_finetuned", _no_model)
  run = seqio_eval.evaluate_checkpoint if run_mode == "eval" else seqio_eval.infer_checkpoint
  with pytest.raises(SuperGlueDataError, match=rf"^{data}/CB/{file_name}:{line}: invalid JSON"
                     ) as caught:
    run(str(tmp_path / "run"))
  # The entrypoint prints it as a user error, itself and not TensorFlow's wrapping of it.
  message = console.error_line(caught.value)
  assert console.is_user_error(caught.value) and "Traceback" not in message
  assert message.startswith(f"error: SuperGlueDataError: {data}/CB/{file_name}:{line}:")


class _ConstantPredictor:
  """Log-probabilities 0 for every class of every row (no model)."""

  def log_probs(self, examples, task_index, length):
    del task_index, length
    return np.zeros((len(examples), 3), np.float32)


def test_infer_refuses_an_incomplete_submission_naming_the_empty_file(tmp_path, monkeypatch):
  from ernie3_jax.evaluation import seqio_eval
  loads = []

  def load(model_dir, batch_size, checkpoint="latest"):
    loads.append(model_dir)
    return finetune.finetune_setup(), _ConstantPredictor(), 0

  monkeypatch.setattr(seqio_eval, "load_finetuned", load)
  out = tmp_path / "submission"
  gin_utils.parse_gin([], _bindings(task="superglue"))
  written = seqio_eval.infer_checkpoint(str(tmp_path / "run"), output_dir=str(out))
  assert sorted(os.listdir(out)) == sorted(
      f"{d}.jsonl" for d in ("BoolQ", "CB", "COPA", "MultiRC", "ReCoRD", "RTE", "WiC", "WSC",
                             "AX-b", "AX-g"))
  assert len(written) == 10 and len(loads) == 1
  # The same run with CB's test file empty: an error naming it, before the model loads,
  # not a submission folder without CB.jsonl.
  data = _data_with(tmp_path, "CB", "test.jsonl", lambda text: "")
  gin_utils.parse_gin([], _bindings(task="superglue", extra=[f"superglue_source.path='{data}'"]))
  with pytest.raises(ValueError, match=rf"superglue_cb: the 'test' split is empty "
                                       rf"\({data}/CB/test.jsonl\); the submission would lack"):
    seqio_eval.infer_checkpoint(str(tmp_path / "run"), output_dir=str(tmp_path / "incomplete"))
  assert len(loads) == 1 and not (tmp_path / "incomplete").exists()


def test_a_row_the_formatter_rejects_is_named_with_its_file_and_line(tmp_path, monkeypatch):
  from ernie3_jax.evaluation import seqio_eval
  from ernie3_jax.superglue.sources import SuperGlueDataError

  def bad_span(text):  # the second row's word span lies past the end of its sentence
    lines = text.splitlines()
    row = json.loads(lines[1])
    row["end1"] = len(row["sentence1"]) + 5
    lines[1] = json.dumps(row)
    return "\n".join(lines) + "\n"

  data = _data_with(tmp_path, "WiC", "val.jsonl", bad_span)
  gin_utils.parse_gin([], _bindings(task="superglue_wic",
                                    extra=[f"superglue_source.path='{data}'"]))
  monkeypatch.setattr(seqio_eval, "load_finetuned", _no_model)
  with pytest.raises(SuperGlueDataError, match=rf"^{data}/WiC/val.jsonl:2: span .* is outside"):
    seqio_eval.evaluate_checkpoint(str(tmp_path / "run"))


def test_a_missing_training_file_is_named_before_model_dir_exists(tmp_path, pretrained):
  import shutil
  from ernie3_jax.cli import preflight
  data = tmp_path / "superglue"
  shutil.copytree(FIXTURE_DIR, data)
  os.remove(data / "CB" / "train.jsonl")
  gin_utils.parse_gin(["gin_configs/experiments/finetune_demo.gin"], [
      f"MODEL_DIR='{tmp_path / 'run'}'", f"PRETRAINED_DIR='{pretrained[0]}'",
      f"SUPERGLUE_DATA='{data}'", "TASK='superglue_cb'",
      "make_mesh.num_devices=1"] + tt.TINY_BINDINGS + VOCAB)
  with pytest.raises(FileNotFoundError, match=rf"superglue_cb: its training file "
                                              rf"{data}/CB/train.jsonl does not exist"):
    preflight.check("train", str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_float16_finetuning_is_refused_before_model_dir_exists(tmp_path, pretrained):
  from ernie3_jax.cli import preflight
  gin_utils.parse_gin(["gin_configs/experiments/finetune_demo.gin"], [
      f"MODEL_DIR='{tmp_path / 'run'}'", f"PRETRAINED_DIR='{pretrained[0]}'",
      f"SUPERGLUE_DATA='{FIXTURE_DIR}'", "make_mesh.num_devices=1"] + tt.TINY_BINDINGS +
      VOCAB + ["Ernie3Config.dtype='float16'"])
  with pytest.raises(ValueError, match=r"Ernie3Config.dtype='float16': fine-tuning has no "
                                       r"loss scaling"):
    preflight.check("train", str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_infer_writes_the_cb_submission_file(finetuned, tmp_path):
  from ernie3_jax.evaluation import seqio_eval
  from ernie3_jax.superglue.sources import read_split
  path, _ = finetuned
  gin_utils.parse_gin([], _bindings(freeze=True))
  written = seqio_eval.infer_checkpoint(path, output_dir=str(tmp_path), diagnostics=())
  assert written == {"superglue_cb": str(tmp_path / "CB.jsonl")}
  with open(written["superglue_cb"]) as f:
    lines = [json.loads(line) for line in f]
  test_idx = [e["idx"] for e in read_split("cb", "test", FIXTURE_DIR)]
  assert [line["idx"] for line in lines] == sorted(test_idx)
  _, predictor, _ = seqio_eval.load_finetuned(path, 4)
  predicted = predictor.log_probs(_cb_rows("test"), 0, 64).argmax(-1)
  names = ("entailment", "contradiction", "neutral")
  assert [line["label"] for line in lines] == [names[p] for p in predicted]


def _cb_rows(split):
  import seqio
  task = seqio.get_mixture_or_task("superglue_cb")
  ds = task.get_dataset({"input_ids": 64, "segment_ids": 64}, split=split, shuffle=False,
                        num_epochs=1, use_cached=False)
  return list(ds.as_numpy_iterator())


# -- slow: mixture, resume, the entrypoint -------------------------------------


@pytest.mark.slow
def test_mixture_resume_equals_straight_run(tmp_path, pretrained):
  ft.register()
  bindings = _bindings(task=ft.MIXTURE, extra=[f"finetune_setup.num_classes={ft.NUM_CLASSES}",
                                               "Ernie3Config.dropout_rate=0.0",
                                               "Ernie3Config.attention_dropout_rate=0.0",
                                               "learning_rate_schedule.warmup_steps=2"])
  # One 8-step schedule for all three runs: the first stops halfway through it.
  gin_utils.parse_gin([], bindings)
  straight = _run(tmp_path / "straight", 8, pretrained[0], sequence_length=16, schedule_steps=8)
  gin_utils.parse_gin([], bindings)
  first = _run(tmp_path / "resumed", 4, pretrained[0], sequence_length=16, checkpoint_every=4,
               schedule_steps=8)
  gin_utils.parse_gin([], bindings)
  second = _run(tmp_path / "resumed", 8, pretrained[0], sequence_length=16, schedule_steps=8)
  assert first.final_step == 4 and second.resumed_from == 4
  a, b = _flat(straight.state.params), _flat(second.state.params)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  kernel = a["['classifier']['dense']['kernel']"]
  assert kernel.shape[-1] == 5  # 3 + 2 packed heads


@pytest.mark.slow
def test_entrypoint_trains_evaluates_and_infers(tmp_path, pretrained):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  common = [sys.executable, "-m", "ernie3_jax.cli.main",
            "--gin_file=gin_configs/experiments/finetune_demo.gin",
            f"--gin.MODEL_DIR='{tmp_path / 'run'}'", f"--gin.PRETRAINED_DIR='{pretrained[0]}'",
            "--gin.finetune.num_steps=4", "--gin.BATCH=4", "--gin.SEQUENCE_LENGTH=64",
            f"--gin.SUPERGLUE_DATA='{FIXTURE_DIR}'"] + [f"--gin.{b}" for b in
                                                        tt.TINY_BINDINGS + VOCAB]
  for mode in ("train", "eval", "infer"):
    proc = subprocess.run(common + [f"--run_mode={mode}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "run" / "eval_metrics.json") as f:
    tasks = json.load(f)["tasks"]
  # RTE's validation metrics, and the diagnostics through the RTE head.
  assert set(tasks) == {"superglue_rte", "superglue_axb", "superglue_axg"}
  assert set(tasks["superglue_axg"]) == {"accuracy", "gender_parity"}
  for name in ("RTE.jsonl", "AX-b.jsonl", "AX-g.jsonl"):
    assert os.path.getsize(tmp_path / "run" / "submission" / name) > 0
