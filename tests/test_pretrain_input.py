"""The seqio registrations and the trainer's pre-training input on the embedded data."""

import numpy as np
import pytest
import seqio

import ernie3_jax.tasks  # noqa: F401  (registers everything)
from ernie3_jax.model import task_ids
from ernie3_jax.training.pretrain_input import PretrainInput, mixture_rates


def _input(**kw):
  args = dict(nlu_batch_size=8, nlg_batch_size=2, sequence_length=64, nlg_segment_length=32,
              seed=3)
  args.update(kw)
  return PretrainInput(**args)


def test_mixture_yields_every_task_at_its_rate():
  rates = mixture_rates("ernie3_pretrain")
  assert set(rates) == {"knowledge_masked_lm", "uktp", "sentence_reordering",
                        "sentence_distance", "document_lm"}
  ds = seqio.get_mixture_or_task("ernie3_pretrain").get_dataset(
      {"tokens": 64}, split="train", shuffle=True, seed=0, num_epochs=None,
      trim_output_features=False, use_cached=False)
  n = 1200
  ids = np.array([ex["task_id"] for ex in ds.take(n).as_numpy_iterator()])
  total = sum(rates.values())
  by_id = {task_ids.KNOWLEDGE_MASKED_LM: "knowledge_masked_lm", task_ids.UKTP: "uktp",
           task_ids.SENTENCE_REORDERING: "sentence_reordering",
           task_ids.SENTENCE_DISTANCE: "sentence_distance", task_ids.DOCUMENT_LM: "document_lm"}
  for tid, name in by_id.items():
    p = rates[name] / total
    count = int((ids == tid).sum())
    sigma = np.sqrt(n * p * (1 - p))
    assert abs(count - n * p) < 4 * sigma, (name, count, n * p)


def test_batches_are_well_formed():
  data = _input()
  nlu, nlg = data.next_batch(8, 48)
  assert nlu["tokens"].shape == (8, 48) and nlu["mlm_weights"].shape == (8, 48)
  assert set(np.unique(nlu["task_id"])) <= set(task_ids.NLU_TASKS)
  assert nlu["tokens"].min() >= 0 and nlu["tokens"].max() < 4000
  # Targets only where masked.
  assert (nlu["mlm_targets"][nlu["mlm_weights"] == 0] == 0).all()
  assert nlg["tokens"].shape == (2, 32) and nlg["reset"].shape == (2,)
  assert nlg["reset"].all()  # the first segment of every stream starts a document
  assert (nlg["task_id"] == task_ids.DOCUMENT_LM).all()


def test_resume_continues_exactly():
  straight = _input()
  for _ in range(3):
    straight.next_batch(8, 64)
  state = straight.state()
  want = straight.next_batch(8, 64)
  resumed = _input()
  resumed.restore([state])
  got = resumed.next_batch(8, 64)
  for part in (0, 1):
    for key in want[part]:
      np.testing.assert_array_equal(got[part][key], want[part][key], err_msg=key)


def _concat(parts):
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _assert_same(got, want):
  for part in (0, 1):
    for key in want[part]:
      np.testing.assert_array_equal(got[part][key], want[part][key], err_msg=key)


def test_data_shards_make_batches_and_positions_independent_of_the_process_count():
  """Two data shards read by one process or by two give the same global batches, and a
  position saved by either resumes on the other (elastic resume)."""
  one = _input(nlu_batch_size=8, nlg_batch_size=4, num_data_shards=2)
  two = [_input(nlu_batch_size=4, nlg_batch_size=2, shard_index=i, num_shards=2)
         for i in range(2)]
  assert one.shards == [0, 1] and [p.shards for p in two] == [[0], [1]]
  for _ in range(2):
    want = one.next_batch(8, 64)
    halves = [p.next_batch(4, 64) for p in two]
    _assert_same((_concat([h[0] for h in halves]), _concat([h[1] for h in halves])), want)
  # 2 processes -> 1 process.
  resumed = _input(nlu_batch_size=8, nlg_batch_size=4)
  resumed.restore([p.state() for p in two])
  assert resumed.num_data_shards == 2 and resumed.shards == [0, 1]
  # 1 process -> 2 processes.
  states = [one.state()]
  split = [_input(nlu_batch_size=4, nlg_batch_size=2, shard_index=i, num_shards=2)
           for i in range(2)]
  for p in split:
    p.restore(states)
  want = one.next_batch(8, 64)
  _assert_same(resumed.next_batch(8, 64), want)
  halves = [p.next_batch(4, 64) for p in split]
  _assert_same((_concat([h[0] for h in halves]), _concat([h[1] for h in halves])), want)
  # A shard count the process count does not divide is refused, naming the binding.
  with pytest.raises(ValueError, match=r"PretrainInput.num_data_shards=3 must be a positive "
                                       r"multiple of the process count 2"):
    _input(nlu_batch_size=4, nlg_batch_size=2, shard_index=0, num_shards=2, num_data_shards=3)
  for p in [one, resumed] + two + split:
    p.close()


def test_position_of_an_earlier_version_resumes_a_one_process_run():
  straight = _input()
  straight.next_batch(8, 64)
  state = straight.state()
  old = {"step": state["step"], "stage": state["stage"],
         "consumed": state["consumed_per_shard"], "streams": state["streams"]["0"]}
  want = straight.next_batch(8, 64)
  resumed = _input()
  resumed.restore([old])
  _assert_same(resumed.next_batch(8, 64), want)
  old["streams"] = dict(old["streams"], num_shards=2)
  with pytest.raises(ValueError, match="saved only process 0's data position"):
    _input().restore([old])


def test_stages_switch_and_keep_earlier_tasks():
  data = _input(stages=[(2, {"knowledge_masked_lm": 1.0}),
                        (0, {"knowledge_masked_lm": 1.0, "sentence_distance": 1.0,
                             "document_lm": 1.0})])
  for _ in range(2):
    nlu, nlg = data.next_batch(8, 64)
    assert (nlu["task_id"] == task_ids.KNOWLEDGE_MASKED_LM).all()
  seen = set()
  for _ in range(3):
    nlu, nlg = data.next_batch(8, 64)
    seen |= set(nlu["task_id"].tolist())
    assert nlg is not None
  assert seen == {task_ids.KNOWLEDGE_MASKED_LM, task_ids.SENTENCE_DISTANCE}
  with pytest.raises(ValueError, match=r"stages\[1\] drops tasks"):
    _input(stages=[(2, {"uktp": 1.0}), (2, {"knowledge_masked_lm": 1.0})])


def test_unregistered_name_lists_close_matches():
  with pytest.raises(ValueError, match="did you mean.*ernie3_pretrain"):
    _input(mixture="ernie3_pretrian")
