r"""What verifying a checkpoint costs next to restoring it.

  python benchmarks/restore_verification.py --gin_file=gin_configs/experiments/demo.gin

Saves one checkpoint of the experiment's freshly initialised train state, then times,
alternating over --repeats: the orbax restore of that checkpoint alone, and the
verification `Checkpointer.restore` adds to it (the state's per-array checksums and
finiteness, compared with the record saved beside the arrays). Prints one JSON line
with the medians and their ratio (verification / restore).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_GIN_FILE = flags.DEFINE_string("gin_file", "gin_configs/experiments/demo.gin",
                                "Experiment whose train state is checkpointed.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed restores (and verifications).")
_OUTPUT = flags.DEFINE_string("output", None, "Append the JSON line to this file.")


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  import bench_common  # pylint: disable=g-import-not-at-top
  from ernie3_jax.config import gin_utils  # pylint: disable=g-import-not-at-top
  from ernie3_jax.model import Ernie3, Ernie3Config  # pylint: disable=g-import-not-at-top
  from ernie3_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from ernie3_jax.training import (checkpoint_integrity, checkpointing,  # pylint: disable=g-import-not-at-top
                                   optimizer, partitioning)

  gin_utils.parse_gin([_GIN_FILE.value], ["MODEL_DIR = '/unused'"])
  model = Ernie3(Ernie3Config())
  mesh, rules = mesh_lib.make_mesh(), mesh_lib.logical_axis_rules()
  tx = optimizer.make_optimizer(optimizer.learning_rate_schedule())
  state, shardings, abstract = partitioning.create_train_state(model, tx, mesh, rules, 8, 0)
  nbytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(state))
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = checkpointing.Checkpointer(tmp, 1, async_save=False)
    ckpt.save(1, state, {"step": 1})
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    restore_s, verify_s = [], []
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      restored = ckpt.manager.restore(1, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), integrity=ocp.args.JsonRestore()))
      jax.block_until_ready(restored["state"])
      restore_s.append(time.perf_counter() - start)
      start = time.perf_counter()
      now = checkpoint_integrity.record(restored["state"])
      assert not checkpoint_integrity.differences(restored["integrity"], now)
      assert not now["nonfinite"]
      verify_s.append(time.perf_counter() - start)
    ckpt.close()
  restore, verify = statistics.median(restore_s), statistics.median(verify_s)
  bench_common.emit({
      "benchmark": "restore_verification", "experiment": _GIN_FILE.value,
      "machine": bench_common.machine(), "devices": jax.device_count(),
      "state_arrays": len(jax.tree_util.tree_leaves(state)), "state_bytes": nbytes,
      "repeats": _REPEATS.value, "restore_seconds": round(restore, 4),
      "verify_seconds": round(verify, 4), "verify_over_restore": round(verify / restore, 4),
  }, _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
