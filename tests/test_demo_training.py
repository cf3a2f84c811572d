"""The demo configuration trains on the embedded data and every task's loss falls."""

import numpy as np

from ernie3_jax.config import gin_utils
from ernie3_jax.training import train as train_lib


def test_demo_config_losses_fall(tmp_path):
  gin_utils.parse_gin(["gin_configs/experiments/demo.gin"], [
      f"MODEL_DIR = '{tmp_path}'", "NLU_BATCH = 16", "NLG_BATCH = 4",
      "SEQUENCE_LENGTH = 64", "NLG_SEGMENT_LENGTH = 32", "NUM_STEPS = 80",
      "train.log_every = 20", "train.checkpoint_every = 0", "train.progress_bar = False",
      "ProgressiveSchedule.steps = 0", "learning_rate_schedule.warmup_steps = 20",
      "learning_rate_schedule.peak = 2e-3", "make_mesh.num_devices = 1"])
  result = train_lib.train(str(tmp_path))
  first, last = result.history[0], result.history[-1]
  for task in ("document_lm", "knowledge_masked_lm", "uktp"):
    assert last[f"{task}/loss"] < first[f"{task}/loss"] - 0.5, (task, first, last)
  assert np.isfinite(last["loss"]) and last["nonfinite_skipped"] == 0
