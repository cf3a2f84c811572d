"""The path layer (`ernie3_jax.runtime.storage`): local paths as before, gs:// against a
GCS JSON-API emulator that enforces upload preconditions as GCS does."""

import json
import os
import threading

import pytest

from ernie3_jax.runtime import storage
from tests import gcs_emulator


@pytest.fixture(scope="module")
def bucket():
  """gs://<bucket>/<unique prefix> on an emulator shared by this module's tests."""
  gcs_emulator.require()
  with gcs_emulator.GcsEmulator() as emulator, emulator.applied():
    yield emulator


@pytest.fixture
def root(bucket, request):
  return f"gs://{bucket.bucket}/{request.node.name}"


@pytest.mark.parametrize("path", ["gs:/bucket/run", "gs:bucket/run", "./gs:/bucket/run",
                                  "/tmp/gs:/bucket/run", "runs/GS:/x", "s3:bucket"])
def test_a_uri_that_lost_its_slashes_is_refused_before_a_gs_folder_exists(path, tmp_path):
  with pytest.raises(storage.StoragePathError, match="model_dir.path.*folder named '(gs|GS|s3):'"):
    storage.resolve(path, "model_dir.path")
  with pytest.raises(storage.StoragePathError):
    storage.makedirs(path)
  assert not os.path.exists("gs:") and not os.path.exists(tmp_path / "gs:")


def test_unsupported_schemes_and_bucketless_uris_are_named():
  with pytest.raises(storage.StoragePathError, match=r"ftp:// is not supported"):
    storage.check("ftp://host/file", "DataConfig.kg")
  with pytest.raises(storage.StoragePathError, match="names no bucket"):
    storage.check("gs:///run")


def test_local_paths_resolve_and_behave_as_the_os_does(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert storage.resolve("runs/demo") == str(tmp_path / "runs" / "demo")
  assert storage.resolve("~/x") == os.path.expanduser("~/x")
  assert storage.resolve("gs://bucket/run/") == "gs://bucket/run"
  storage.makedirs("a/b")
  storage.write_atomic("a/b/f.json", "{}")
  assert not os.path.exists("a/b/f.json.tmp")
  assert storage.create_exclusive("a/lock", "one") and not storage.create_exclusive("a/lock", "2")
  assert storage.read_text("a/lock") == "one"
  assert storage.glob(str(tmp_path / "a" / "*")) == [str(tmp_path / "a" / n) for n in ("b", "lock")]
  storage.rename("a/b", "a/c")
  assert sorted(storage.listdir("a")) == ["c", "lock"] and storage.isfile("a/c/f.json")
  storage.rmtree("a/c")
  storage.remove("a/lock")
  assert storage.listdir("a") == []


def test_objects_round_trip_list_glob_move_and_delete(root, bucket):
  storage.makedirs(root)  # nothing to create on an object store
  storage.write_atomic(f"{root}/run/config.gin", "x = 1\n")
  with storage.open(f"{root}/run/history.json", "w") as f:
    json.dump({"é": 1}, f)
  storage.write_atomic(f"{root}/run/checkpoints/2/state/a", b"\x00\x01")
  assert storage.isdir(f"{root}/run") and storage.isfile(f"{root}/run/config.gin")
  assert not storage.exists(f"{root}/run/missing")
  assert storage.listdir(f"{root}/run") == ["checkpoints", "config.gin", "history.json"]
  assert json.loads(storage.read_text(f"{root}/run/history.json")) == {"é": 1}
  assert storage.glob(f"{root}/run/*.gin") == [f"{root}/run/config.gin"]
  storage.rename(f"{root}/run/checkpoints/2", f"{root}/run/rejected/2")
  prefix = root.split("/", 3)[3]
  assert bucket.objects(prefix) == sorted(
      f"{prefix}/run/{n}" for n in ("config.gin", "history.json", "rejected/2/state/a"))
  assert storage.read_bytes(f"{root}/run/rejected/2/state/a") == b"\x00\x01"
  storage.rmtree(f"{root}/run/rejected")
  storage.remove(f"{root}/run/config.gin")
  with pytest.raises(FileNotFoundError):
    storage.remove(f"{root}/run/config.gin")
  assert bucket.objects(prefix) == [f"{prefix}/run/history.json"]
  with pytest.raises(FileNotFoundError):
    storage.listdir(f"{root}/nothing")


def test_a_compressed_object_is_read_decompressed(root):
  import bz2
  import gzip
  storage.write_atomic(f"{root}/d.txt.bz2", bz2.compress("a\nb\n".encode()))
  storage.write_atomic(f"{root}/d.txt.gz", gzip.compress("c\n".encode()))
  with storage.open_decompressed(f"{root}/d.txt.bz2", "rt", encoding="utf-8") as f:
    assert f.read() == "a\nb\n"
  with storage.open_decompressed(f"{root}/d.txt.gz", "rb") as f:
    assert f.read() == b"c\n"


def test_exclusive_create_lets_exactly_one_of_racing_writers_win(root):
  path = f"{root}/trainer.lock"
  assert storage.create_exclusive(path, "first")
  assert not storage.create_exclusive(path, "second")
  assert storage.read_text(path) == "first"
  # The existence check is only a shortcut: the store's precondition decides a race.
  fs = storage._fs(path)  # pylint: disable=protected-access
  with pytest.raises(Exception) as refused:
    fs.pipe_file(path, b"third", mode="create")
  assert storage._precondition_failed(refused.value)  # pylint: disable=protected-access
  results, barrier = [], threading.Barrier(4)

  def contender(i):
    barrier.wait()
    results.append(storage.create_exclusive(f"{root}/race.lock", f"writer {i}"))

  threads = [threading.Thread(target=contender, args=(i,)) for i in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert sorted(results) == [False, False, False, True]


def test_listings_are_never_stale_after_another_client_writes(root):
  import gcsfs
  storage.write_atomic(f"{root}/a", b"1")
  assert storage.listdir(root) == ["a"]
  other = gcsfs.GCSFileSystem(skip_instance_cache=True)  # another process, in effect
  other.pipe_file(f"{root}/b", b"2")
  assert storage.listdir(root) == ["a", "b"] and storage.exists(f"{root}/b")


def test_the_trainer_lock_on_gcs_refuses_a_live_holder_and_takes_over_a_dead_one(root):
  from ernie3_jax.training import run_lock
  first = run_lock.RunLock(root).acquire()
  with pytest.raises(run_lock.RunLockError, match=f"pid {os.getpid()}"):
    run_lock.RunLock(root).acquire()
  first.release()
  assert not storage.exists(f"{root}/{run_lock.LOCK_NAME}")
  # A holder on this host whose process is gone: taken over and reported.
  storage.write_atomic(f"{root}/{run_lock.LOCK_NAME}", json.dumps(
      {"host": __import__("socket").gethostname(), "pid": 2 ** 22 + 7, "started": 0}))
  taker = run_lock.RunLock(root).acquire()
  assert taker.took_over["pid"] == 2 ** 22 + 7
  assert json.loads(storage.read_text(f"{root}/{run_lock.LOCK_NAME}"))["pid"] == os.getpid()
  taker.release()


def test_data_readers_take_gs_paths(root):
  from ernie3_jax.data import corpus_readers, knowledge_graph
  storage.write_atomic(f"{root}/c/a.jsonl", json.dumps({"title": "T", "text": "x y"}) + "\n")
  storage.write_atomic(f"{root}/c/b.jsonl", "\n" + json.dumps({"text": "z"}) + "\n")
  docs = list(corpus_readers.read_documents(f"{root}/c/*.jsonl"))
  assert [(d.title, d.text, d.source) for d in docs] == [
      ("T", "x y", f"{root}/c/a.jsonl:1"), ("", "z", f"{root}/c/b.jsonl:2")]
  with pytest.raises(FileNotFoundError, match="matches no file"):
    corpus_readers.expand_paths(f"{root}/c/*.txt")
  storage.write_atomic(f"{root}/kg.tsv", "A\tborn in\tB\nA\tbad\n")
  with pytest.raises(knowledge_graph.KnowledgeGraphError, match=f"{root}/kg.tsv:2"):
    knowledge_graph.read_triples(f"{root}/kg.tsv")


def test_a_vocabulary_trains_into_and_loads_from_gcs(root):
  from ernie3_jax.data import vocabulary
  from ernie3_jax.data.corpus_readers import EMBEDDED_CORPUS
  from ernie3_jax.tools import train_vocab
  with open(EMBEDDED_CORPUS, encoding="utf-8") as f:
    storage.write_atomic(f"{root}/corpus.jsonl", "".join(next(f) for _ in range(200)))
  path = train_vocab.train(f"{root}/*.jsonl", 300, f"{root}/spm")
  assert path == f"{root}/spm.model" and storage.isfile(f"{root}/spm.vocab")
  vocab = vocabulary.Vocabulary(path)
  assert vocab.path == path and vocab.vocab_size == 300
  assert vocab.decode(vocab.encode("the city of")) == "the city of"
