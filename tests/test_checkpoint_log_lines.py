"""Reading a checkpoint prints no orbax false alarm: neither "Metadata file does not exist"
for the item directories (the file is the step's, one level up), which
`python -m ernie3_jax.inference.generate` printed twice per checkpoint, nor "Failed to get
item metadata" for an item whose `_METADATA` is gone (the project's own report names it)."""

import logging
import os

from absl import logging as absl_logging
import jax
import jax.numpy as jnp
import pytest

from ernie3_jax.training import checkpoint_files, checkpointing

PROBES = ("Metadata file does not exist", "Failed to get item metadata")


@pytest.fixture(name="model_dir")
def fixture_model_dir(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), 1, async_save=False)
  ckpt.save(1, {"params": {"w": jnp.ones((4, 4))}}, {"step": 1}, force=True)
  ckpt.close()
  return tmp_path


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _read_params(model_dir):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  params, _ = checkpoint_files.restore_params_into({"w": jnp.zeros((4, 4))},
                                                   {"w": sharding}, str(model_dir))
  return params


def test_reading_a_checkpoint_logs_no_item_metadata_warning(model_dir, caplog):
  item = str(model_dir / "checkpoints" / "1" / "state")
  with caplog.at_level(logging.INFO):
    assert checkpoint_files.saved_shapes(item) == {"params['w']": (4, 4)}
    assert float(_read_params(model_dir)["w"].sum()) == 16.0
  assert not [m for m in _warnings(caplog) if m.startswith(PROBES)], _warnings(caplog)


def test_orbax_still_warns_without_the_filter(model_dir, caplog, monkeypatch):
  """The filter is not dead code: orbax does log the false alarm on such a read."""
  logger = absl_logging.get_absl_logger()
  monkeypatch.setattr(logger, "filters", [f for f in logger.filters
                                          if type(f).__name__ != "_DropItemMetadataProbe"])
  with caplog.at_level(logging.INFO):
    _read_params(model_dir)
  probes = [m for m in _warnings(caplog) if m.startswith("Metadata file does not exist")]
  assert probes and probes[0].endswith(
      os.path.join("1", "state", "_CHECKPOINT_METADATA")), _warnings(caplog)


def test_a_missing_item_metadata_file_is_reported_by_the_project_alone(model_dir, caplog):
  item = model_dir / "checkpoints" / "1" / "state"
  os.remove(item / "_METADATA")
  with caplog.at_level(logging.INFO):
    with pytest.raises(checkpoint_files.CheckpointCorruptError, match="_METADATA"):
      checkpoint_files.saved_shapes(str(item), step=1)
  assert not [m for m in _warnings(caplog) if m.startswith(PROBES)], _warnings(caplog)
