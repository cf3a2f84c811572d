"""Damaged checkpoints (verified and fallen back past), one trainer per MODEL_DIR, a save
that fails mid-run, and bad input refused before MODEL_DIR is written."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ernie3_jax.cli import preflight
from ernie3_jax.config import gin_utils
from ernie3_jax.training import checkpoint_integrity, checkpointing, run_lock
from tests import training_testing as tt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------ the checksums


def _reference_lanes(array):
  """The module docstring's definition, one element at a time in Python integers."""
  width = {1: np.uint8, 2: np.uint16, 4: np.uint32}[array.dtype.itemsize]
  a, c = checkpoint_integrity.BASES
  lane0 = lane1 = 0
  for i, bits in enumerate(np.ascontiguousarray(array).view(width).reshape(-1).tolist()):
    lane0 = (lane0 + bits * pow(a, i, 1 << 32)) % (1 << 32)
    lane1 = (lane1 + bits * bits * pow(c, i, 1 << 32)) % (1 << 32)
  return [lane0, lane1]


def test_checksums_equal_an_independent_count_on_any_mesh():
  rng = np.random.default_rng(0)
  arrays = {"w": rng.standard_normal((6, 10)).astype(np.float32),
            "h": rng.standard_normal((4, 8)).astype(jax.numpy.bfloat16),
            "i": np.arange(12, dtype=np.int32).reshape(3, 4), "s": np.float32(2.5)}
  want = {k: _reference_lanes(np.asarray(v)) for k, v in arrays.items()}
  plain = checkpoint_integrity.record({k: jax.numpy.asarray(v) for k, v in arrays.items()})
  assert plain["arrays"] == want and plain["nonfinite"] == []
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("a", "b"))
  sharded = {"w": jax.device_put(arrays["w"], NamedSharding(mesh, P("a", None))),
             "h": jax.device_put(arrays["h"], NamedSharding(mesh, P(None, "b"))),  # replicated on a
             "i": jax.device_put(arrays["i"], NamedSharding(mesh, P())),
             "s": jax.device_put(arrays["s"], NamedSharding(mesh, P()))}
  assert checkpoint_integrity.record(sharded)["arrays"] == want
  # What each process of a multi-process run sums: the shards whose first replica it holds.
  for name, array in sharded.items():
    terms = checkpoint_integrity._shard_terms  # pylint: disable=protected-access
    pieces = [terms(np.asarray(s.data), s.index, array.shape)
              for s in array.addressable_shards if s.replica_id == 0]
    assert [sum(p[k] for p in pieces) % (1 << 32) for k in (0, 1)] == want[name], name
  flipped = arrays["w"].copy()
  flipped.reshape(-1).view(np.uint8)[9] ^= 0x10
  changed = checkpoint_integrity.record({**arrays, "w": flipped})
  assert checkpoint_integrity.differences(plain, changed) == ["w does not match its checksum"]
  with_nan = arrays["h"].copy()
  with_nan[1, 1] = np.nan
  assert checkpoint_integrity.record({**arrays, "h": with_nan})["nonfinite"] == ["h"]


def test_damage_that_cancels_in_lane_0_is_caught_by_lane_1():
  """Two changed elements whose lane-0 terms cancel (element 0's bits lowered by A, element
  1's raised by 1: -A * A**0 + 1 * A**1 = 0) leave lane 0 as it was; lane 1 must catch them."""
  a, _ = checkpoint_integrity.BASES
  w = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
  damaged = w.copy()
  bits = damaged.reshape(-1).view(np.uint32)
  bits[0] = (int(bits[0]) - a) % (1 << 32)
  bits[1] = (int(bits[1]) + 1) % (1 << 32)
  saved, restored = (checkpoint_integrity.record({"w": jax.numpy.asarray(x)}) for x in (w, damaged))
  assert restored["arrays"]["w"][0] == saved["arrays"]["w"][0], "lane 0 is blind to this damage"
  assert restored["arrays"]["w"][1] != saved["arrays"]["w"][1]
  assert checkpoint_integrity.differences(saved, restored) == ["w does not match its checksum"]
  # Either lane alone differing is a mismatch.
  for lane in (0, 1):
    forged = json.loads(json.dumps(saved))
    forged["arrays"]["w"][lane] ^= 1 << 7
    assert checkpoint_integrity.differences(forged, saved) == ["w does not match its checksum"]


def test_a_nonfinite_state_is_never_saved(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), 1, async_save=False)
  ckpt.save(1, {"w": np.ones((4, 4), np.float32)}, {"step": 1})
  with pytest.raises(checkpointing.NonFiniteStateError,
                     match=r"state of step 2 holds non-finite values in w; it was not saved, "
                           r"and the checkpoint of step 1 there is intact"):
    ckpt.save(2, {"w": np.full((4, 4), np.inf, np.float32)}, {"step": 2})
  ckpt.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]


# ------------------------------------------------------------ damaged checkpoints


@pytest.fixture(scope="module", name="trained_once")
def fixture_trained_once(tmp_path_factory):
  """A MODEL_DIR with the checkpoints of steps 2 and 4 of the tiny synthetic run."""
  model_dir = tmp_path_factory.mktemp("trained") / "run"
  tt.run(model_dir, 4, checkpoint_every=2, async_checkpoints=False)
  return model_dir


@pytest.fixture(name="trained")
def fixture_trained(trained_once, tmp_path):
  model_dir = tmp_path / "run"
  shutil.copytree(trained_once, model_dir)
  return model_dir


def _largest_array_file(model_dir, step):
  files = [os.path.join(d, f) for d, _, fs in os.walk(model_dir / "checkpoints" / str(step)
                                                       / "state") for f in fs
           if os.sep + "d" + os.sep in os.path.join(d, f)]
  return max(files, key=os.path.getsize)


def _flip(model_dir, step):
  path = _largest_array_file(model_dir, step)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    chunk = bytearray(f.read(16))
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0xFF for b in chunk))


def _truncate(model_dir, step):
  path = _largest_array_file(model_dir, step)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _forge_checksum(model_dir, step, lane=0):
  path = model_dir / "checkpoints" / str(step) / "integrity" / "metadata"
  record = json.loads(path.read_text())
  name = "params['universal']['layers']['ffn']['wi']['kernel']"
  record["arrays"][name][lane] ^= 1
  path.write_text(json.dumps(record))
  return name


def _forge_lane_1(model_dir, step):
  """Damage only the second lane sees (the first lane still matches)."""
  return _forge_checksum(model_dir, step, lane=1)


def _resume(model_dir, **kwargs):
  return tt.run(model_dir, 6, checkpoint_every=2, async_checkpoints=False, **kwargs)


@pytest.mark.parametrize("damage, reason", [
    (_flip, r"cannot be read|differ from the checksums"),
    # The array is named, not a TensorStore object's bound method.
    (_truncate, r"cannot be read \(the array (params|opt_state)\['[^ ]*\]: OUT_OF_RANGE"),
    (lambda d, s: shutil.rmtree(d / "checkpoints" / str(s) / "integrity"),
     r"its integrity/ record .* is missing, so its arrays cannot be verified; .*"
     r"Checkpointer.accept_unverified=True"),
    (lambda d, s: os.remove(d / "checkpoints" / str(s) / "state" / "_METADATA"),
     r"metadata lists no arrays \(state/_METADATA is missing\)"),
    (_forge_checksum, r"differ from the checksums saved with them: "
                      r"params\['universal'\]\['layers'\]\['ffn'\]\['wi'\]\['kernel'\] does "
                      r"not match its checksum"),
    (_forge_lane_1, r"differ from the checksums saved with them: "
                    r"params\['universal'\]\['layers'\]\['ffn'\]\['wi'\]\['kernel'\] does "
                    r"not match its checksum"),
])
def test_damaged_latest_checkpoint_is_reported_moved_aside_and_the_previous_restored(
    trained, capsys, damage, reason):
  damage(trained, 4)
  result = _resume(trained)
  assert result.resumed_from == 2 and result.final_step == 6
  report = [l for l in capsys.readouterr().out.splitlines()
            if l.startswith("The checkpoint of step 4 (")]
  assert len(report) == 1, "one paragraph, no dump"
  assert "failed verification: " in report[0]
  assert re.search(reason, report[0]), report[0]
  assert "restored the checkpoint of step 2 instead" in report[0]
  rejected = trained / "rejected_checkpoints" / "4"
  assert (rejected / "REJECTED.txt").read_text().startswith("The checkpoint of step 4 (")
  assert sorted(os.listdir(trained / "checkpoints")) == ["2", "4", "6"]  # 4 retrained
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(tt.params_of(result)))


def test_a_checkpoint_without_checksums_restores_only_when_accepted_and_loudly(trained, capsys):
  shutil.rmtree(trained / "checkpoints" / "4" / "integrity")
  result = _resume(trained, extra_bindings=["Checkpointer.accept_unverified = True"])
  assert result.resumed_from == 4 and result.final_step == 6
  out = capsys.readouterr().out
  assert "restoring the checkpoint of step 4" in out and "UNVERIFIED" in out
  assert not (trained / "rejected_checkpoints").exists()


def test_without_fallback_damage_is_fatal_and_nothing_moves(trained):
  _truncate(trained, 4)
  with pytest.raises(checkpointing.CheckpointCorruptError,
                     match=r"step 4 .* train.allow_fallback=False: not falling back"):
    _resume(trained, allow_fallback=False)
  assert sorted(os.listdir(trained / "checkpoints")) == ["2", "4"]
  assert not (trained / "rejected_checkpoints").exists()


def test_no_intact_checkpoint_stops_the_run_and_moves_nothing(trained):
  _truncate(trained, 4)
  _forge_checksum(trained, 2)
  with pytest.raises(checkpointing.CheckpointCorruptError,
                     match=r"step 4 .*no older checkpoint verifies either \(step 2: its arrays "
                           r"differ.*Nothing was moved"):
    _resume(trained)
  assert sorted(os.listdir(trained / "checkpoints")) == ["2", "4"]


# ------------------------------------------------------------ one trainer per MODEL_DIR


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _train_command(model_dir, num_steps):
  bindings = ["import tests.synthetic_input"] + tt.TINY_BINDINGS + [
      f"model_dir.path = '{model_dir}'", "train.input_builder = @SyntheticInput",
      f"train.num_steps = {num_steps}", "train.nlu_batch_size = 8", "train.nlg_batch_size = 4",
      "train.sequence_length = 16", "train.nlg_segment_length = 8", "train.log_every = 1",
      "train.checkpoint_every = 2", "train.progress_bar = False"]
  return ([sys.executable, "-m", "ernie3_jax.cli.main", "--gin_file=gin_configs/runs/pretrain.gin"]
          + [f"--gin_bindings={b}" for b in bindings])


def test_a_second_trainer_is_refused_naming_the_holder(tmp_path):
  model_dir = tmp_path / "run"
  model_dir.mkdir()
  holder = subprocess.Popen([sys.executable, "-c", (
      "import sys, time\nfrom ernie3_jax.training import run_lock\n"
      f"run_lock.RunLock({str(model_dir)!r}).acquire()\nprint('HELD', flush=True)\n"
      "time.sleep(600)\n")], cwd=REPO, env=_env(), stdout=subprocess.PIPE)
  try:
    assert holder.stdout.readline().decode().strip() == "HELD"
    # The lock is looked at first: this config's own error (a profile window after the
    # last step) would only come from the checks that follow.
    bad_config = ["--gin_bindings=train.profile_steps = (5, 9)"]
    out = subprocess.run(_train_command(model_dir, 2) + bad_config, cwd=REPO, env=_env(),
                         capture_output=True, timeout=600)
    text = out.stdout.decode() + out.stderr.decode()
    assert out.returncode != 0
    assert (f"another trainer holds {str(model_dir)!r}: pid {holder.pid} on host "
            f"{socket.gethostname()!r}") in text, text[-3000:]
    assert sorted(os.listdir(model_dir)) == [run_lock.LOCK_NAME]  # nothing else written
  finally:
    holder.kill()
    holder.wait()
  # The holder was killed without releasing: the next trainer takes the stale lock over.
  out = subprocess.run(_train_command(model_dir, 2), cwd=REPO, env=_env(), capture_output=True,
                       timeout=600)
  text = out.stdout.decode()
  assert out.returncode == 0, text[-3000:] + out.stderr.decode()[-3000:]
  assert f"took over the trainer lock of {model_dir} from a process that no longer runs " \
         f"(pid {holder.pid} on host" in text
  assert not (model_dir / run_lock.LOCK_NAME).exists()  # released at the end


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
  (tmp_path / run_lock.LOCK_NAME).write_text(json.dumps(
      {"host": "elsewhere", "pid": 1, "started": time.time()}))
  with pytest.raises(run_lock.RunLockError, match=r"pid 1 on host 'elsewhere'.*another host: "
                                                   r"this one cannot tell"):
    run_lock.RunLock(str(tmp_path)).acquire()


def test_a_lock_whose_pid_was_reused_is_stale(tmp_path):
  # This very process, but "started" at another time: the pid belongs to someone else now.
  (tmp_path / run_lock.LOCK_NAME).write_text(json.dumps(
      {"host": socket.gethostname(), "pid": os.getpid(), "started": 0, "start_ticks": 1}))
  lock = run_lock.RunLock(str(tmp_path)).acquire()
  assert lock.took_over["pid"] == os.getpid()
  lock.release()
  assert not (tmp_path / run_lock.LOCK_NAME).exists()


# ------------------------------------------------------------ a save that fails mid-run

# Trains with checkpoints every 2 steps; when the save of step 4 begins, the process may
# no longer write files over 1 KB (as with a full disk). Runs in its own process:
# orbax's background threads linger after a failed save.
_DISK_FULL_AT_STEP_4 = r"""
import os, resource, signal, sys
from ernie3_jax.training import checkpointing
from tests import training_testing as tt

original = checkpointing.Checkpointer.save

def save(self, step, *args, **kwargs):
  if step == 4:
    self.wait()  # the save of step 2 completes first
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
  return original(self, step, *args, **kwargs)

checkpointing.Checkpointer.save = save
try:
  tt.run(sys.argv[1], 20, checkpoint_every=2, log_every=1)
  print("NO ERROR", flush=True)
except checkpointing.CheckpointSaveError as e:
  print("ERROR", e, flush=True)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
sys.stdout.flush()
os._exit(0)
"""


def test_a_failed_save_names_its_step_stops_training_and_leaves_no_partial_files(tmp_path):
  model_dir = tmp_path / "run"
  out = subprocess.run([sys.executable, "-c", _DISK_FULL_AT_STEP_4, str(model_dir)], cwd=REPO,
                       env=_env(), capture_output=True, timeout=600)
  text = out.stdout.decode()
  errors = [l for l in text.splitlines() if l.startswith("ERROR ")]
  assert errors, text[-3000:] + out.stderr.decode()[-3000:]
  assert "saving the checkpoint of step 4 into" in errors[0]
  assert "File too large" in errors[0]
  assert "the checkpoint of step 2 there is intact" in errors[0]
  # Training stopped at the next step's check, before the next save was due.
  with open(model_dir / "train_history.json") as f:
    assert [m["step"] for m in json.load(f)["history"]] == [1, 2]  # written with step 2
  assert sorted(os.listdir(model_dir / "checkpoints")) == ["2"]


# ------------------------------------------------------------ bad input, nothing written


def _preflight_pretrain_input(model_dir, extra):
  gin_utils.parse_gin(["gin_configs/runs/pretrain.gin"], tt.TINY_BINDINGS + [
      f"MODEL_DIR = '{model_dir}'", "Ernie3Config.vocab_size = 4000",
      "train.nlu_batch_size = 8", "train.nlg_batch_size = 4", "train.sequence_length = 64",
      "train.nlg_segment_length = 16", "make_mesh.num_devices = 1", *extra])
  preflight.check("train", str(model_dir))


def test_a_bad_kg_line_is_named_before_model_dir_exists(tmp_path):
  from ernie3_jax.data.knowledge_graph import EMBEDDED_KG, KnowledgeGraphError
  bad = tmp_path / "kg.tsv"
  lines = open(EMBEDDED_KG).read().splitlines()[:50]
  lines.insert(30, "Only\ttwo columns")
  bad.write_text("\n".join(lines) + "\n")
  with pytest.raises(KnowledgeGraphError, match=rf"{bad}:31: expected 3 tab-separated fields"):
    _preflight_pretrain_input(tmp_path / "run", [f"DataConfig.kg = '{bad}'"])
  assert not (tmp_path / "run").exists()


def test_a_bad_corpus_line_is_named_before_model_dir_exists(tmp_path):
  from ernie3_jax.data.corpus_readers import CorpusError
  bad = tmp_path / "corpus.jsonl"
  bad.write_text('{"title": "A", "text": "One sentence here."}\n{"title": "B", "text": \n')
  with pytest.raises(CorpusError, match=rf"{bad}:2: invalid JSON"):
    _preflight_pretrain_input(tmp_path / "run", [
        f"DataConfig.corpus = '{bad}'",
        "PretrainInput.stages = [(0, {'sentence_distance': 1.0})]"])
  assert not (tmp_path / "run").exists()
