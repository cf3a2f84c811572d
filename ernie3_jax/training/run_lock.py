"""One trainer per MODEL_DIR: a lock file naming its holder (host, pid, start time).

Two trainers writing one checkpoint directory corrupt each other's saves, so the
second is refused. The lock is a file created exclusively (`storage.create_exclusive`:
O_EXCL on local and network filesystems; on GCS a write with the precondition "no
such object", which the store refuses for the second writer). A trainer killed
without cleaning up leaves its lock behind; on the same host a lock whose process is
gone (or whose pid now belongs to a younger process) is taken over, and the takeover
is reported. On an object store the stale lock is deleted and created anew: two
starters racing for one stale lock in the same instant could both succeed there,
which local disk's rename excludes. A lock from another host cannot be checked from
here and is never taken over silently.
"""

from __future__ import annotations

import json
import os
import socket
import time

from ernie3_jax.runtime import storage

LOCK_NAME = "trainer.lock"


class RunLockError(RuntimeError):
  """MODEL_DIR is held by another trainer."""


def _process_start_ticks(pid: int) -> int | None:
  """Start time of `pid` in clock ticks since boot (Linux), or None if unknown/gone."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[19])  # field 22 of proc(5); the first two precede the ")"
  except (OSError, IndexError, ValueError):
    return None


def _alive(pid: int, start_ticks: int | None) -> bool:
  """Whether the process that wrote the lock still runs on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # exists, owned by someone else
  if start_ticks is not None:
    now = _process_start_ticks(pid)
    if now is not None and now != start_ticks:
      return False  # the pid was reused by a process that started later
  return True


def describe(holder: dict) -> str:
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
  return f"pid {holder.get('pid')} on host {holder.get('host')!r}, started {started}"


class RunLock:
  """Held while a trainer writes to `model_dir`; `acquire()` then `release()`."""

  def __init__(self, model_dir: str):
    self.path = os.path.join(model_dir, LOCK_NAME)
    self.held = False
    self.took_over: dict | None = None  # the stale holder replaced, if any

  def _write(self) -> bool:
    """Creates the lock file exclusively; False if it already exists."""
    pid = os.getpid()
    holder = {"host": socket.gethostname(), "pid": pid, "started": time.time(),
              "start_ticks": _process_start_ticks(pid)}
    return storage.create_exclusive(self.path, json.dumps(holder))

  def _holder(self) -> dict | None:
    try:
      return json.loads(storage.read_text(self.path))
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}  # being written, or damaged: treated as held by an unknown trainer

  def acquire(self) -> "RunLock":
    """Takes the lock or raises RunLockError naming the trainer that holds it."""
    for _ in range(3):  # a lock removed or replaced between our steps: look again
      if self._write():
        self.held = True
        return self
      holder = self._holder()
      if holder is None:
        continue
      if self._is_stale(holder):
        # Stale: rename it away first, so two starters cannot both take it over.
        stale = f"{self.path}.stale.{os.getpid()}"
        try:
          if storage.is_uri(self.path):
            storage.remove(self.path)  # no atomic rename on object stores
          else:
            os.rename(self.path, stale)
            os.remove(stale)
        except FileNotFoundError:
          continue
        self.took_over = holder
        continue
      raise self._held_by(holder)
    raise RunLockError(f"could not take the lock {self.path}: it changed hands repeatedly")

  def check(self) -> None:
    """Raises RunLockError if a live trainer holds the lock; takes nothing. (A stale lock
    passes: `acquire` will take it over.)"""
    holder = self._holder()
    if holder is not None and not self._is_stale(holder):
      raise self._held_by(holder)

  @staticmethod
  def _is_stale(holder: dict) -> bool:
    """A holder on this host whose process is gone (other hosts cannot be checked)."""
    return (holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int)
            and not _alive(holder["pid"], holder.get("start_ticks")))

  def _held_by(self, holder: dict) -> RunLockError:
    where = ("" if holder.get("host") == socket.gethostname() else
             " (another host: this one cannot tell whether it still runs; if it does "
             "not, delete the lock file)")
    return RunLockError(
        f"another trainer holds {os.path.dirname(self.path)!r}: "
        f"{describe(holder) if holder else 'a lock file being written or damaged'}"
        f"{where}. Two trainers in one MODEL_DIR overwrite each other's checkpoints; "
        f"wait for it to finish, stop it, or use another MODEL_DIR. Lock file: {self.path}")

  def release(self) -> None:
    if self.held:
      self.held = False
      try:
        storage.remove(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
