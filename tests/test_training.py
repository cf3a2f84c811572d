"""Training mechanics: resume equivalence, mesh change, accumulation, progressive, faults."""

import os

import jax
import numpy as np
import pytest

from ernie3_jax.training.progressive import ProgressiveSchedule
from tests import training_testing as tt


def _assert_same_params(a, b, atol=0.0):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def test_resume_equals_straight_run(tmp_path):
  straight = tt.run(tmp_path / "straight", 10)
  first = tt.run(tmp_path / "resumed", 5)
  assert first.final_step == 5 and first.resumed_from is None
  second = tt.run(tmp_path / "resumed", 10)
  assert second.resumed_from == 5 and second.final_step == 10
  _assert_same_params(tt.params_of(straight), tt.params_of(second))
  # The recurrence memory was checkpointed and restored too.
  _assert_same_params(jax.device_get(straight.state.memory), jax.device_get(second.state.memory))
  losses = [h["loss"] for h in straight.history]
  assert len(losses) == 2 and all(np.isfinite(losses))
  assert os.path.isfile(tmp_path / "straight" / "train_history.json")
  assert os.listdir(tmp_path / "straight" / "tensorboard")


def test_checkpoint_saved_on_4_devices_restores_on_2(tmp_path):
  four = tt.run(tmp_path / "run", 5, devices=4, data=2, fsdp=2)
  kernel = four.state.params["universal"]["layers"]["ffn"]["wi"]["kernel"]
  assert len(kernel.sharding.device_set) == 4
  two = tt.run(tmp_path / "run", 5, devices=2, data=1, fsdp=2)  # restore only, no new step
  assert two.resumed_from == 5
  kernel2 = two.state.params["universal"]["layers"]["ffn"]["wi"]["kernel"]
  assert len(kernel2.sharding.device_set) == 2
  _assert_same_params(tt.params_of(four), tt.params_of(two))
  continued = tt.run(tmp_path / "run", 7, devices=2, data=1, fsdp=2)
  assert continued.final_step == 7


def test_gradient_accumulation_matches_one_batch(tmp_path):
  no_dropout = ["Ernie3Config.dropout_rate=0.0", "Ernie3Config.attention_dropout_rate=0.0"]
  one = tt.run(tmp_path / "one", 2, extra_bindings=no_dropout, num_microbatches=1)
  two = tt.run(tmp_path / "two", 2, extra_bindings=no_dropout, num_microbatches=2)
  _assert_same_params(tt.params_of(one), tt.params_of(two), atol=2e-6)


def test_batch_not_divisible_by_data_parallel_size_is_named(tmp_path):
  with pytest.raises(ValueError, match="nlu_batch_size=6"):
    tt.run(tmp_path / "bad", 1, devices=4, data=4, nlu_batch_size=6)
  assert not os.path.exists(tmp_path / "bad" / "checkpoints")


def test_progressive_learning_grows_length_batch_and_dropout(tmp_path):
  sched = ProgressiveSchedule(steps=8, num_stages=2, start_length=8, start_batch_size=4,
                              start_dropout=0.2)
  assert sched.settings(0, 16, 8) == (8, 4, 0.2)
  length, batch, dropout = sched.settings(4, 16, 8)
  assert (length, batch) == (8, 6) and dropout == pytest.approx(0.6)
  assert sched.settings(8, 16, 8) == (16, 8, 1.0)
  result = tt.run(tmp_path / "prog", 10, progressive=sched, log_every=1, checkpoint_every=0)
  seen = [(h["sequence_length"], h["batch_size"]) for h in result.history]
  assert seen[0] == (8, 4) and seen[4] == (8, 6) and seen[-1] == (16, 8)
  drops = [h["dropout_multiplier"] for h in result.history]
  assert drops == sorted(drops) and drops[0] == pytest.approx(0.2) and drops[-1] == 1.0
  lrs = [h["learning_rate"] for h in result.history]
  assert lrs[0] < lrs[4]  # warm-up


def test_a_run_resumed_mid_ramp_equals_a_straight_one(tmp_path):
  sched = ProgressiveSchedule(steps=8, num_stages=2, start_length=8, start_batch_size=4,
                              start_dropout=0.2)
  straight = tt.run(tmp_path / "straight", 10, progressive=sched, log_every=1,
                    checkpoint_every=0)
  tt.run(tmp_path / "resumed", 3, progressive=sched, log_every=1, checkpoint_every=3,
         schedule_steps=10)
  resumed = tt.run(tmp_path / "resumed", 10, progressive=sched, log_every=1)
  assert resumed.resumed_from == 3
  _assert_same_params(tt.params_of(straight), tt.params_of(resumed))
  # The ramp's four quantities grow together (the rate through its 5-step warm-up, then
  # it decays), and the resumed run logs the straight run's values.
  history = resumed.history  # the earlier start's steps are carried over
  assert [h["step"] for h in history] == list(range(1, 11))
  for key, rising in (("sequence_length", 10), ("batch_size", 10), ("dropout_multiplier", 10),
                      ("learning_rate", 5)):
    values = [h[key] for h in history]
    assert values[:rising] == sorted(values[:rising]) and values[0] < values[rising - 1], key
    assert values == [h[key] for h in straight.history], key


def test_nonfinite_step_is_skipped_or_stops(tmp_path):
  # A learning rate of inf makes the first update non-finite.
  bindings = ["learning_rate_schedule.peak=1e38", "learning_rate_schedule.warmup_steps=1",
              "learning_rate_schedule.initial=1e38", "make_optimizer.clip_norm=None"]
  skipped = tt.run(tmp_path / "skip", 3, extra_bindings=bindings, log_every=1)
  assert skipped.stopped_by == "num_steps"
  assert skipped.history[-1]["nonfinite_skipped"] >= 1
  stopped = tt.run(tmp_path / "stop", 3, extra_bindings=bindings, log_every=1,
                   on_nonfinite="stop")
  assert stopped.stopped_by == "nonfinite"
  assert all(np.isfinite(np.asarray(x)).all() for x in
             jax.tree_util.tree_leaves(tt.params_of(stopped)))


def test_rows_of_other_tasks_never_poison_a_loss():
  import jax.numpy as jnp
  from ernie3_jax.model import task_ids
  from ernie3_jax.training import losses
  outputs = {"mlm_logits": jnp.zeros((2, 3, 5)), "reorder_logits": jnp.zeros((2, 9)),
             "distance_logits": jnp.zeros((2, 3))}
  batch = {"task_id": jnp.asarray([task_ids.SENTENCE_REORDERING, task_ids.SENTENCE_DISTANCE]),
           "label": jnp.asarray([8, 2]), "label_weight": jnp.ones((2,)),
           "mlm_targets": jnp.zeros((2, 3), jnp.int32), "mlm_weights": jnp.zeros((2, 3))}
  sums = losses.nlu_loss_sums(outputs, batch)
  assert all(np.isfinite(float(v)) for v in sums.values())
  assert float(sums["sentence_distance/loss_sum"]) == pytest.approx(np.log(3), rel=1e-5)
  assert float(sums["sentence_reordering/loss_sum"]) == pytest.approx(np.log(9), rel=1e-5)


def test_init_from_restores_parameters_only(tmp_path):
  pre = tt.run(tmp_path / "pre", 3)
  # A fine-tuning-like model: same backbone plus a fresh classification head.
  fine = tt.run(tmp_path / "fine", 0, extra_bindings=["Ernie3Config.num_labels=3"],
                init_from=str(tmp_path / "pre"))
  assert fine.resumed_from is None
  src, dst = tt.params_of(pre), tt.params_of(fine)
  np.testing.assert_array_equal(dst["universal"]["layers"]["ffn"]["wi"]["kernel"],
                                src["universal"]["layers"]["ffn"]["wi"]["kernel"])
  assert "classifier" in dst and "classifier" not in src
  assert int(jax.device_get(fine.state.opt_state[1][0].count)) == 0  # fresh optimizer
  with pytest.raises(ValueError, match=r"\['embedder'\]\['token'\]\['embedding'\].*shape"):
    tt.run(tmp_path / "bad", 0, extra_bindings=["Ernie3Config.vocab_size=128"],
           init_from=str(tmp_path / "pre"))


def test_bf16_compute_keeps_fp32_master_weights(tmp_path):
  result = tt.run(tmp_path / "bf16", 3, extra_bindings=["Ernie3Config.dtype='bfloat16'"],
                  log_every=3, checkpoint_every=0)
  leaves = jax.tree_util.tree_leaves(result.state.params)
  assert all(x.dtype == np.float32 for x in leaves)
  assert result.state.memory["universal"].dtype == jax.numpy.bfloat16
  assert np.isfinite(result.history[-1]["loss"])


FP16 = ["Ernie3Config.dtype='float16'"]


def test_fp16_overflowing_steps_are_skipped_counted_and_lower_the_scale(tmp_path, monkeypatch):
  from ernie3_jax.training import train_step
  init = tt.params_of(tt.run(tmp_path / "init", 0, extra_bindings=FP16))
  # A scale of 2**40 overflows float16 gradients: every step is skipped and halves it.
  monkeypatch.setattr(train_step, "INITIAL_LOSS_SCALE", 2.0**40)
  skipped = tt.run(tmp_path / "overflow", 3, extra_bindings=FP16, log_every=1,
                   checkpoint_every=0, on_nonfinite="stop")
  assert skipped.stopped_by == "num_steps"  # an overflow is not a failure of the run
  _assert_same_params(init, tt.params_of(skipped))  # no update was applied
  scale = jax.device_get(skipped.state.loss_scale)
  assert (int(scale["overflows"]), float(scale["scale"])) == (3, 2.0**37)
  assert int(skipped.state.nonfinite_skipped) == 3
  assert [h["overflow_skipped"] for h in skipped.history] == [1, 2, 3]
  assert all(np.isfinite(h["loss"]) for h in skipped.history)
  # Resumed from its checkpoint (the scale travels with it), the run walks the scale
  # down to where the gradients fit, then trains: the same as one straight run.
  straight = tt.run(tmp_path / "straight", 40, extra_bindings=FP16, log_every=10)
  tt.run(tmp_path / "resumed", 20, extra_bindings=FP16, log_every=10, checkpoint_every=20)
  resumed = tt.run(tmp_path / "resumed", 40, extra_bindings=FP16, log_every=10)
  assert resumed.resumed_from == 20
  _assert_same_params(tt.params_of(straight), tt.params_of(resumed))
  final = jax.device_get(straight.state.loss_scale)
  assert 20 <= int(final["overflows"]) < 40 and float(final["scale"]) < 2.0**16
  assert straight.history[-1]["loss"] < straight.history[0]["loss"]
  assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(straight.state.params))
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(tt.params_of(straight)))


def test_float32_and_bfloat16_runs_carry_no_loss_scale(tmp_path):
  assert tt.run(tmp_path / "f32", 1, log_every=1, checkpoint_every=0).state.loss_scale is None


def _mlm_batch(rows, length, masked_per_row, vocab, seed=0):
  """Knowledge-masked-LM and UKTP rows with `masked_per_row[i]` masked positions."""
  import jax.numpy as jnp
  from ernie3_jax.model import task_ids
  rng = np.random.RandomState(seed)
  weights = np.zeros((rows, length), np.float32)
  for i, n in enumerate(masked_per_row):
    weights[i, rng.choice(length, n, replace=False)] = 1.0
  tasks = [task_ids.KNOWLEDGE_MASKED_LM, task_ids.UKTP, task_ids.SENTENCE_DISTANCE]
  return {"tokens": jnp.asarray(rng.randint(1, vocab, (rows, length)), jnp.int32),
          "segment_ids": jnp.zeros((rows, length), jnp.int32),
          "task_id": jnp.asarray([tasks[i % 3] for i in range(rows)], jnp.int32),
          "mlm_targets": jnp.asarray(rng.randint(1, vocab, (rows, length)), jnp.int32),
          "mlm_weights": jnp.asarray(weights),
          "label": jnp.asarray(rng.randint(0, 3, rows), jnp.int32),
          "label_weight": jnp.ones((rows,), jnp.float32)}


@pytest.mark.parametrize("masked_per_row,full_head", [((3, 4, 0, 1), 0.0),
                                                     ((3, 9, 0, 6), 1.0)])
def test_masked_positions_head_equals_every_position_head(masked_per_row, full_head):
  """Logits at the gathered masked positions give the every-position losses and
  update; a batch with a row masking more than the slots (4 of 20) takes every
  position, so its update is the same too."""
  import jax.numpy as jnp
  from ernie3_jax.model import Ernie3, Ernie3Config, init_memory
  from ernie3_jax.training import losses, optimizer
  from ernie3_jax.training.train_step import TrainState, make_train_step
  cfg = Ernie3Config(vocab_size=50, d_model=16, num_heads=2, head_dim=8, d_ff=32,
                     task_d_model=16, task_num_heads=2, task_head_dim=8, task_d_ff=32,
                     num_layers=1, nlu_layers=1, nlg_layers=1, dropout_rate=0.0,
                     attention_dropout_rate=0.0)
  model = Ernie3(cfg)
  tokens = jnp.ones((1, 8), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), tokens, jnp.zeros_like(tokens),
                      jnp.zeros((1,), jnp.int32), init_memory(cfg, 1, 4))["params"]
  tx = optimizer.make_optimizer(optimizer.learning_rate_schedule(peak=1e-2, warmup_steps=1))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     memory=None, nonfinite_skipped=jnp.zeros((), jnp.int32))
  assert losses.prediction_slots(20, 0.2) == 4 and losses.prediction_slots(20, None) is None
  assert losses.prediction_slots(4, 1.0) is None
  batch = _mlm_batch(4, 20, masked_per_row, cfg.vocab_size)
  (slotted, m_slotted), (full, m_full) = (
      jax.jit(make_train_step(model, tx, {}, mlm_prediction_fraction=f))(
          state, batch, None, jnp.float32(1.0), jax.random.PRNGKey(1)) for f in (0.2, None))
  assert float(m_slotted["mlm_full_head_batches"]) == full_head
  assert float(m_full["mlm_full_head_batches"]) == 1.0
  for key in ("knowledge_masked_lm/loss", "uktp/loss", "sentence_distance/loss", "loss"):
    assert float(m_slotted[key]) == pytest.approx(float(m_full[key]), rel=1e-5), key
  assert float(m_slotted["knowledge_masked_lm/weight"]) == masked_per_row[0] + masked_per_row[3]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6),
                         slotted.params, full.params)


def test_trainer_counts_batches_that_take_every_position(tmp_path):
  """With one slot per row nearly every masked-LM batch overflows; the trainer logs
  how many took every position, and trains as without slots."""
  slotted = tt.run(tmp_path / "slots", 2, log_every=2, checkpoint_every=0,
                   mlm_prediction_fraction=1 / 16)
  assert slotted.history[-1]["mlm_full_head_batches"] == 2
  everywhere = tt.run(tmp_path / "all", 2, log_every=2, checkpoint_every=0,
                      mlm_prediction_fraction=None)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         tt.params_of(slotted), tt.params_of(everywhere))
  with pytest.raises(ValueError, match=r"train.mlm_prediction_fraction=1.5"):
    tt.run(tmp_path / "bad", 1, mlm_prediction_fraction=1.5)


def test_log_lines_and_the_summary_show_an_absent_task_as_a_dash():
  from ernie3_jax.cli import runs
  from ernie3_jax.training import loop_hooks
  m = {"loss": 1.0, "uktp/loss": float("nan"), "knowledge_masked_lm/loss": 2.5,
       "learning_rate": 1e-3, "sequence_length": 64, "batch_size": 8,
       "tokens_per_second": 10.0, "mfu": 0.1, "step_seconds": 0.25, "data_wait_fraction": 0.1}
  line = loop_hooks.format_line(m)
  assert "uktp=-]" in line and "knowledge_masked_lm=2.500" in line and "nan" not in line
  assert "step=0.250s data_wait=10%" in line
  table = runs.summarize_training([dict(m, step=1), dict(m, step=2, **{"uktp/loss": 0.5})])
  assert "nan" not in table
  assert table.splitlines()[-1].split() == ["uktp", "-", "0.500"]
