"""Helpers of the Beam runner tests: which processes ran a pipeline."""

import os
import threading

SDK_WORKER = "apache_beam.runners.worker.sdk_worker_main"


class WorkerProcesses:
  """Collects, while active, the pids of Beam SDK worker processes below this process."""

  def __init__(self):
    self.pids: set[int] = set()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._watch, daemon=True)

  @staticmethod
  def _descendants(root: int) -> set[int]:
    parents = {}
    for name in os.listdir("/proc"):
      if name.isdigit():
        try:
          with open(f"/proc/{name}/stat") as f:
            parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
          pass
    found, frontier = set(), {root}
    while frontier:
      frontier = {p for p, parent in parents.items() if parent in frontier} - found
      found |= frontier
    return found

  def _watch(self):
    while not self._stop.wait(0.05):
      for pid in self._descendants(os.getpid()):
        try:
          with open(f"/proc/{pid}/cmdline", "rb") as f:
            if SDK_WORKER.encode() in f.read():
              self.pids.add(pid)
        except OSError:
          pass

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


DASK_RUNNER = "ernie3_jax.tools.dask_runner.DaskRunner"
BEAM_DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def dask_cluster():
  """A localhost dask.distributed cluster of 2 worker processes, 1 thread each (a
  generator for module-scoped fixtures); skips where dask.distributed is not installed."""
  import pytest  # pylint: disable=g-import-not-at-top
  pytest.importorskip("dask.bag", reason="dask is not installed (the Dask runner's tests)")
  distributed = pytest.importorskip(
      "distributed", reason="dask.distributed is not installed (the Dask runner's tests)")
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                dashboard_address=None) as cluster:
    yield cluster


def dask_args(cluster, runner=DASK_RUNNER):
  return [f"--runner={runner}", f"--dask_client_address={cluster.scheduler_address}"]
