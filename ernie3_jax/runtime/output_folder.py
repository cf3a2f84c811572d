"""Output folders that hold one complete run's files, never a mix of two runs.

A tool writes into a fresh staging folder beside its target (`.NAME.partial-XXXXXXXX` in
the same parent, so that a rename can move it) and `publish` puts it in the target's
place only once everything in it is written. A run that fails or is killed leaves the
target as it was. Replacing an existing target moves it aside first, then moves the
staging folder in, then deletes the old one: on local disk each step is a rename, so a
reader sees the old folder or the new one; on an object store a rename copies every
object, so during the swap the target may be briefly absent (never mixed).

All I/O goes through `storage`, so targets may be local or `gs://`.
"""

from __future__ import annotations

import uuid
from typing import Callable

from ernie3_jax.runtime import storage


class OutputFolderError(RuntimeError):
  """A target folder that a run may not write into (names the folder and the flag)."""


def _split(target: str) -> tuple[str, str]:
  target = target.rstrip("/")
  parent, name = target.rsplit("/", 1) if "/" in target else ("", target)
  if not name or (storage.is_uri(target) and parent.endswith(":/")):
    raise OutputFolderError(f"{target!r} names no folder inside a parent (a bucket's root "
                            "cannot be replaced; name a folder in it)")
  return parent, name


def sibling(target: str, kind: str) -> str:
  """A fresh name beside `target`: `.NAME.KIND-XXXXXXXX`."""
  parent, name = _split(target)
  return storage.join(parent, f".{name}.{kind}-{uuid.uuid4().hex[:8]}")


def entries(target: str) -> list[str]:
  """Names directly in `target` (none when it does not exist)."""
  if not storage.exists(target):
    return []
  if not storage.isdir(target):
    raise OutputFolderError(f"{target!r} is a file, not a folder")
  return storage.listdir(target)


def check_target(target: str, overwrite: bool, flag: str = "--output_dir",
                 own_file: Callable[[str], bool] | None = None,
                 overwrite_flag: str = "--overwrite") -> None:
  """Refuses a non-empty `target` unless `overwrite`; even then refuses a folder holding
  names `own_file` does not recognise (a folder the tool did not write: a typo'd path
  must not delete someone's files)."""
  names = entries(target)
  if not names:
    return
  shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
  if not overwrite:
    raise OutputFolderError(
        f"{flag}={target!r} is not empty ({shown}); choose an empty or new folder, or pass "
        f"{overwrite_flag} to replace it once the new run has completed")
  foreign = [n for n in names if own_file is not None and not own_file(n)]
  if foreign:
    raise OutputFolderError(
        f"{flag}={target!r} holds files this tool does not write ({', '.join(foreign[:5])}); "
        f"{overwrite_flag} replaces only a folder of this tool's own outputs")


def publish(staging: str, target: str) -> None:
  """Puts the complete folder `staging` in `target`'s place (replacing what was there)."""
  if not storage.isdir(staging):
    raise OutputFolderError(f"nothing to publish: {staging!r} is not a folder")
  parent, _ = _split(target)
  if parent:
    storage.makedirs(parent)
  if storage.exists(target):
    aside = sibling(target, "replaced")
    storage.rename(target, aside)
    storage.rename(staging, target)
    storage.rmtree(aside)
  else:
    storage.rename(staging, target)


def new_staging(target: str) -> str:
  """Creates and returns a fresh staging folder beside `target`."""
  staging = sibling(target, "partial")
  parent, _ = _split(target)
  if parent:
    storage.makedirs(parent)
  storage.makedirs(staging)
  return staging
