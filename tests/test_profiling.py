"""Profiling hooks of the training loop: a trace of the chosen steps, data wait and step
time in the log, bad windows refused before anything is written."""

import glob
import os

import pytest

from ernie3_jax.training import profiling
from tests import training_testing


def test_a_profile_window_traces_those_steps_and_the_log_splits_step_time_from_data_wait(
    tmp_path, capsys):
  result = training_testing.run(tmp_path, 3, profile_steps=(2, 3), log_every=1)
  traces = glob.glob(os.path.join(tmp_path, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
  assert "profile of steps 2-3 written to" in capsys.readouterr().out
  for m in result.history:
    assert m["step_seconds"] > 0 and 0.0 <= m["data_wait_fraction"] <= 1.0


@pytest.mark.parametrize("window, message", [
    ((3, 2), "expected 1 <= first <= last"), ((0, 1), "expected 1 <= first <= last"),
    ((5, 6), "starts after the run's last step"), ("2-3", "expected two step numbers")])
def test_a_bad_profile_window_is_refused_before_model_dir_is_made(tmp_path, window, message):
  with pytest.raises(ValueError, match=message):
    profiling.check_profile_steps(window, 4)
  model_dir = tmp_path / "run"
  with pytest.raises(ValueError, match="train.profile_steps"):
    training_testing.run(model_dir, 4, profile_steps=window)
  assert not model_dir.exists()
