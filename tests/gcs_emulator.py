"""A GCS JSON-API emulator on localhost for tests that put MODEL_DIR and data on `gs://`.

`python -m tests.gcs_emulator PORT BUCKET` serves one in-memory bucket with the
`gcp-storage-emulator` package, plus two behaviours of GCS that the emulator lacks and
the project depends on:
- upload preconditions: GCS refuses an upload carrying `ifGenerationMatch=G` with HTTP
  412 unless the object's generation is G (G = 0: unless no object exists). The trainer
  lock relies on that, so a client that forgot the precondition fails the lock tests,
  as it would against GCS.
- the `x-goog-generation` header on downloads, from which TensorStore (orbax's array
  writer, OCDBT) reads the generation it then writes against.

`GcsEmulator` (a context manager) starts it in a subprocess and gives the environment
every process of a test needs: gcsfs and TensorStore (orbax's array writer) pointed at
it, epath on gcsfs.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def emulator_available() -> bool:
  try:
    import gcp_storage_emulator  # noqa: F401  pylint: disable=unused-import
    import gcsfs  # noqa: F401  pylint: disable=unused-import
  except ImportError:
    return False
  return True


def require() -> None:
  """Skips the calling test where the emulator's packages are missing, with the reason;
  fails it in CI (`CI` set), which installs them and must run every object-store test."""
  import pytest  # pylint: disable=g-import-not-at-top
  if emulator_available():
    return
  if os.environ.get("CI"):
    pytest.fail("the GCS emulator (gcp-storage-emulator, gcsfs; the [dev] extra) is not "
                "installed, and CI must run the object-store tests")
  pytest.skip("gcp-storage-emulator or gcsfs is not installed (pip install -e '.[dev]')")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


class GcsEmulator:
  """An emulator process serving `bucket`; `env` points clients at it."""

  def __init__(self, bucket: str = "ernie3-test"):
    self.bucket = bucket
    self.port = _free_port()
    self.url = f"http://localhost:{self.port}"
    self.env = {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "EPATH_USE_TF": "false", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    self.process: subprocess.Popen | None = None
    self.log = None

  def __enter__(self) -> "GcsEmulator":
    import tempfile  # pylint: disable=g-import-not-at-top
    # Its log goes to a file: the server blocks once an unread pipe fills up.
    self.log = tempfile.NamedTemporaryFile(prefix="gcs_emulator_", suffix=".log")
    self.process = subprocess.Popen(
        [sys.executable, "-m", "tests.gcs_emulator", str(self.port), self.bucket], cwd=REPO,
        stdout=self.log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
      if self.process.poll() is not None:
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
          raise RuntimeError("the GCS emulator exited: " + f.read()[-3000:])
      try:
        socket.create_connection(("localhost", self.port), 0.2).close()
        return self
      except OSError:
        time.sleep(0.1)
    self.process.kill()
    raise RuntimeError(f"the GCS emulator did not listen on port {self.port} within 30 s")

  def __exit__(self, *exc) -> None:
    if self.process is not None:
      self.process.terminate()
      self.process.wait(timeout=30)
    if self.log is not None:
      self.log.close()

  @contextlib.contextmanager
  def applied(self):
    """This process's environment pointed at the emulator (to read the bucket through
    `storage` in a test), restored afterwards; gcsfs instances made for another endpoint
    are dropped on the way in and out."""
    import gcsfs  # pylint: disable=g-import-not-at-top
    saved = {k: os.environ.get(k) for k in self.env}
    os.environ.update(self.env)
    gcsfs.GCSFileSystem.clear_instance_cache()
    try:
      yield self
    finally:
      gcsfs.GCSFileSystem.clear_instance_cache()
      for key, value in saved.items():
        if value is None:
          os.environ.pop(key, None)
        else:
          os.environ[key] = value

  def objects(self, prefix: str = "") -> list[str]:
    """Names of every object in the bucket under `prefix` (read through the JSON API)."""
    import json  # pylint: disable=g-import-not-at-top
    import urllib.parse  # pylint: disable=g-import-not-at-top
    import urllib.request  # pylint: disable=g-import-not-at-top
    names, token = [], None
    while True:
      query = {"prefix": prefix, **({"pageToken": token} if token else {})}
      url = (f"{self.url}/storage/v1/b/{self.bucket}/o?" + urllib.parse.urlencode(query))
      with urllib.request.urlopen(url, timeout=30) as response:
        page = json.load(response)
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return sorted(names)


def _serve(port: int, bucket: str) -> None:
  from http import HTTPStatus  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=g-import-not-at-top

  insert, download = objects.insert, objects.download

  def generation_of(storage, bucket_name, name) -> str:
    try:
      return str(storage.get_file_obj(bucket_name, name).get("generation") or "0")
    except NotFound:
      return "0"

  def insert_with_precondition(request, response, storage, *args, **kwargs):
    """GCS's rule for `ifGenerationMatch`: refuse unless the generation matches."""
    wanted = request.query.get("ifGenerationMatch", [None])[0]
    if wanted is not None:
      name = (request.query.get("name") or [None])[0]
      if name is None and isinstance(request.data, dict):
        name = (request.data.get("meta") or request.data).get("name")
      if generation_of(storage, request.params["bucket_name"], name) != wanted:
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": "conditionNotMet",
                                 "errors": [{"reason": "conditionNotMet"}]}})
        return None
    return insert(request, response, storage, *args, **kwargs)

  def download_with_generation(request, response, storage, *args, **kwargs):
    name = request.params.get("object_id")
    if name is not None:
      response["x-goog-generation"] = generation_of(storage, request.params["bucket_name"],
                                                    name)
      response["x-goog-metageneration"] = "1"
    return download(request, response, storage, *args, **kwargs)

  # Before the server module builds its routing table from these functions.
  objects.insert, objects.download = insert_with_precondition, download_with_generation
  from gcp_storage_emulator.server import create_server  # pylint: disable=g-import-not-at-top
  server = create_server("localhost", port, in_memory=True, default_bucket=bucket)
  server.run()


if __name__ == "__main__":
  _serve(int(sys.argv[1]), sys.argv[2])
