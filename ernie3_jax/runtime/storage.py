"""One path layer for everything the project reads and writes: local disk and object stores.

A path is either local (`/data/run`, `~/run`, `runs/demo`) or a URI of an object store
that `etils.epath` serves (`gs://bucket/run`; `s3://`, `az://` with their fsspec
packages installed). Local paths go straight to `os` and `open`, exactly as before this
module existed; URIs go through fsspec's filesystem for their scheme (gcsfs for
gs://), the same client `etils.epath` hands orbax for its checkpoints, so MODEL_DIR, its
contents and every data input can live on GCS. (epath's Path API itself is not used:
it has no conditional create, and it caches listings.)

Object stores have no directories, renames or exclusive opens. What replaces each
local-disk primitive here:
- `write_atomic` (local: a temporary file, then `os.replace`): one object write; an
  object store publishes an object whole or not at all.
- `create_exclusive` (local: `O_CREAT | O_EXCL`): a write with the precondition "no
  object of this name exists" (GCS `ifGenerationMatch=0`), refused by the store itself
  when another writer got there first.
- `rename` of a directory: a copy of every object, then their deletion (not atomic;
  used only to move a rejected checkpoint aside, which a retry completes).
- `makedirs`: nothing to create; prefixes exist when objects do.

`gs://` goes through gcsfs, never TensorFlow's gfile: `EPATH_USE_TF=false` is set here
(unless the environment says otherwise), so orbax and this module use one GCS client,
the one the tests run against an emulator.
"""

from __future__ import annotations

import builtins
import os
import re
import shutil
from typing import IO, Any

# Before epath picks a backend (it reads this at call time): gcsfs, not TF's gfile.
os.environ.setdefault("EPATH_USE_TF", "false")
# gcsfs otherwise probes every bucket over gRPC for hierarchical namespaces (about 60 s
# per bucket where that endpoint is unreachable); the project uses flat buckets.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _no_listing_cache() -> None:
  """Object listings are never cached: another process (or host) of the run may have
  written since, and a stale listing hides a checkpoint or a lock. Applies to every
  fsspec filesystem of these schemes, orbax's (through epath) included."""
  import fsspec.config  # pylint: disable=g-import-not-at-top
  for protocol in ("gcs", "gs", "s3", "az"):
    fsspec.config.conf.setdefault(protocol, {})["use_listings_cache"] = False


_no_listing_cache()

# Schemes epath serves; each needs its fsspec package (gcsfs for gs://).
URI_SCHEMES = ("gs", "s3", "az", "hf")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# `gs:/x`, `gs:x`, `s3:bucket`: a scheme with its slashes lost (a shell or a join ate
# one). As a local path it would create a folder named `gs:`.
_BROKEN_URI = re.compile(r"^(?:\./)?(" + "|".join(URI_SCHEMES) + r"):(?!//)", re.IGNORECASE)


class StoragePathError(ValueError):
  """A path that names no usable location (a mangled URI, an unsupported scheme)."""


def is_uri(path: str | os.PathLike) -> bool:
  """Whether `path` names an object-store location (`gs://...`), not a local file."""
  return bool(_URI.match(os.fspath(path)))


def check(path: str | os.PathLike, what: str = "path") -> str:
  """`path` as a string, or StoragePathError naming `what` when it cannot be meant.

  Refused: a URI whose scheme epath does not serve, and a mangled URI (`gs:/bucket`,
  `gs:bucket`) or any local path with a `gs:` component, which would otherwise be
  created as a local folder named `gs:`.
  """
  path = os.fspath(path)
  match = _URI.match(path)
  if match:
    scheme = match.group(1).lower()
    if scheme not in URI_SCHEMES:
      raise StoragePathError(f"{what}={path!r}: the scheme {scheme}:// is not supported "
                             f"(supported: local paths and {', '.join(s + '://' for s in URI_SCHEMES)})")
    if not path[match.end():].split("/", 1)[0]:
      raise StoragePathError(f"{what}={path!r} names no bucket")
    return path
  broken = _BROKEN_URI.match(path)
  component = broken.group(1) + ":" if broken else next(
      (c for c in path.split(os.sep) if c.lower() in {s + ":" for s in URI_SCHEMES}), None)
  if component:
    scheme = component[:-1].lower()
    raise StoragePathError(
        f"{what}={path!r} looks like an object-store URI with its slashes lost (write "
        f"{scheme}://bucket/path); as a local path it would create a folder named "
        f"{component!r}")
  return path


def resolve(path: str | os.PathLike, what: str = "path") -> str:
  """A checked, absolute form of `path`: URIs unchanged, local paths made absolute
  with `~` expanded (what MODEL_DIR and output folders are stored as)."""
  path = check(path, what)
  if is_uri(path):
    return path.rstrip("/")
  return os.path.abspath(os.path.expanduser(path))


def join(path: str, *parts: str) -> str:
  """`os.path.join` for both kinds (URIs keep their `scheme://`)."""
  return os.path.join(os.fspath(path), *parts)


def exists(path: str) -> bool:
  return _fs(path).exists(path) if is_uri(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return _fs(path).isdir(path) if is_uri(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
  return _fs(path).isfile(path) if is_uri(path) else os.path.isfile(path)


def listdir(path: str) -> list[str]:
  """Names directly under `path` (FileNotFoundError when there is nothing)."""
  if not is_uri(path):
    return os.listdir(path)
  if not isdir(path):
    raise FileNotFoundError(f"{path!r} does not exist")
  return sorted({p.rstrip("/").rsplit("/", 1)[-1] for p in _fs(path).ls(path, detail=False)})


def glob(pattern: str) -> list[str]:
  """Sorted matches of a glob pattern (`*`, `?`, `[...]`; `**` within one store)."""
  if not is_uri(pattern):
    import glob as glob_lib  # pylint: disable=g-import-not-at-top
    return sorted(glob_lib.glob(pattern))
  scheme = _URI.match(pattern).group(0)
  fs = _fs(pattern)
  return sorted(p if p.startswith(scheme) else scheme + p for p in fs.glob(pattern))


def makedirs(path: str) -> None:
  """Creates `path` and its parents (object stores: nothing to create)."""
  check(path)
  if not is_uri(path):
    os.makedirs(path, exist_ok=True)


def open(path: str, mode: str = "r", encoding: str | None = None) -> IO[Any]:  # pylint: disable=redefined-builtin
  """Opens a file or object. Text modes default to UTF-8 on object stores."""
  if not is_uri(path):
    if set(mode) & set("wax+"):
      check(path)
    return builtins.open(path, mode, encoding=encoding)
  if "b" in mode:
    return _fs(path).open(path, mode)
  return _fs(path).open(path, mode, encoding=encoding or "utf-8")


def open_decompressed(path: str, mode: str = "rb", encoding: str | None = None) -> IO[Any]:
  """Opens a file for reading, decompressing `.bz2` and `.gz` by their suffix."""
  import bz2  # pylint: disable=g-import-not-at-top
  import gzip  # pylint: disable=g-import-not-at-top
  opener = bz2.open if path.endswith(".bz2") else gzip.open if path.endswith(".gz") else None
  if opener is None:
    return open(path, mode, encoding=encoding)
  # Local files by name, so that closing the stream closes the file as well.
  return opener(path if not is_uri(path) else open(path, "rb"), mode, encoding=encoding)


def read_text(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def read_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def write_atomic(path: str, data: str | bytes) -> None:
  """Replaces `path` with `data` so that a reader sees the old or the new content,
  never a part (local: temporary file + rename; object store: one object write)."""
  raw = data.encode("utf-8") if isinstance(data, str) else data
  if is_uri(check(path)):
    _fs(path).pipe_file(path, raw)
    return
  with builtins.open(path + ".tmp", "wb") as f:
    f.write(raw)
  os.replace(path + ".tmp", path)


def create_exclusive(path: str, data: str | bytes) -> bool:
  """Creates `path` holding `data` only if nothing of that name exists; False if
  something does. Two callers racing for one name: exactly one gets True.

  Local: `O_CREAT | O_EXCL`. GCS: an upload with `ifGenerationMatch=0`, which the
  store refuses (HTTP 412) when the object exists.
  """
  raw = data.encode("utf-8") if isinstance(data, str) else data
  if not is_uri(check(path)):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "wb") as f:
      f.write(raw)
    return True
  if not path.startswith("gs://"):
    raise StoragePathError(f"{path!r}: an exclusive create is implemented for local "
                           "paths and gs:// only")
  if exists(path):
    return False
  try:
    _fs(path).pipe_file(path, raw, mode="create")
  except Exception as e:  # pylint: disable=broad-except
    if _precondition_failed(e):
      return False
    raise
  return True


def _precondition_failed(error: BaseException) -> bool:
  """Whether a store refused a conditional write because the object exists."""
  if isinstance(error, FileExistsError):
    return True
  code = getattr(error, "code", None) or getattr(error, "status", None)
  return code == 412 or "412" in str(error) or "conditionNotMet" in str(error)


def remove(path: str) -> None:
  """Deletes one file or object (FileNotFoundError if absent)."""
  if is_uri(path):
    if not exists(path):
      raise FileNotFoundError(path)
    _fs(path).rm_file(path)
  else:
    os.remove(path)


def rmtree(path: str) -> None:
  """Deletes `path` and everything under it; nothing there is not an error."""
  if is_uri(path):
    if exists(path):
      _fs(path).rm(path, recursive=True)
  else:
    shutil.rmtree(path, ignore_errors=True)


def rename(src: str, dst: str) -> None:
  """Moves a file or directory to a name that does not exist yet (object stores: copy,
  then delete)."""
  if is_uri(src) != is_uri(dst):
    raise StoragePathError(f"cannot move {src!r} to {dst!r}: one store to another")
  if not is_uri(src):
    os.rename(src, dst)
    return
  if exists(dst):
    raise FileExistsError(f"{dst!r} already exists")
  fs = _fs(src)
  if isdir(src):
    fs.copy(src.rstrip("/") + "/", dst.rstrip("/") + "/", recursive=True)
    fs.rm(src, recursive=True)
  else:
    fs.mv(src, dst)


def local_copy(path: str, cache_dir: str | None = None) -> str:
  """A local file with `path`'s content: `path` itself when local, else a copy in
  `cache_dir` (default: a per-process temporary folder) for libraries that read only
  local files (SentencePiece)."""
  if not is_uri(path):
    return path
  import hashlib  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), f"ernie3_jax_{os.getpid()}")
  os.makedirs(cache_dir, exist_ok=True)
  digest = hashlib.sha1(path.encode("utf-8")).hexdigest()[:12]
  target = os.path.join(cache_dir, f"{digest}_{os.path.basename(path)}")
  write_atomic(target, read_bytes(path))
  return target


def upload_tree(local_dir: str, remote_dir: str) -> None:
  """Copies every file under `local_dir` to the same relative name under `remote_dir`
  (for writers that only know local files: TensorBoard's event files, profiles)."""
  for root, _, files in os.walk(local_dir):
    for name in files:
      source = os.path.join(root, name)
      target = join(remote_dir, os.path.relpath(source, local_dir))
      with builtins.open(source, "rb") as f:
        write_atomic(target, f.read())


def _fs(path: str):
  """The fsspec filesystem behind a URI (one per scheme, cached by fsspec)."""
  import fsspec  # pylint: disable=g-import-not-at-top
  scheme = _URI.match(check(path)).group(1).lower()
  try:
    return fsspec.filesystem("gcs" if scheme == "gs" else scheme)
  except ImportError as e:
    package = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}[scheme]
    raise StoragePathError(f"{path!r}: {scheme}:// needs the package {package}") from e
