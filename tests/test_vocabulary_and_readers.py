"""The shipped vocabulary, train_vocab, and corpus readers' errors."""

import json

import pytest

from ernie3_jax.data import corpus_readers
from ernie3_jax.data.vocabulary import Vocabulary
from ernie3_jax.tools import train_vocab


def test_shipped_vocabulary_has_the_special_pieces():
  vocab = Vocabulary()
  assert vocab.vocab_size == 4000
  assert (vocab.cls_id, vocab.sep_id, vocab.mask_id) == (3, 4, 5)
  assert vocab.decode(vocab.encode("Cael Helelteth was born in Alowen.")) == (
      "Cael Helelteth was born in Alowen.")


def test_train_vocab_writes_a_loadable_model(tmp_path):
  import random
  rng = random.Random(0)
  word = lambda: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8)))
  corpus = tmp_path / "c.txt"
  corpus.write_text("\n\n".join(" ".join(word() for _ in range(30)) for _ in range(400)))
  path = train_vocab.train(str(corpus), 300, str(tmp_path / "spm"))
  vocab = Vocabulary(path)
  assert vocab.vocab_size == 300 and vocab.mask_id == 5


def test_vocabulary_without_special_pieces_is_rejected(tmp_path):
  import sentencepiece as spm
  corpus = tmp_path / "c.txt"
  corpus.write_text("\n".join(f"some text number {i} here" for i in range(100)))
  spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "plain"),
                                 vocab_size=30, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                 minloglevel=2)
  with pytest.raises(ValueError, match=r"lacks the special pieces .*\[CLS\]"):
    Vocabulary(str(tmp_path / "plain.model"))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    Vocabulary(str(tmp_path / "missing.model"))


def test_reader_errors_name_file_and_line(tmp_path):
  bad_json = tmp_path / "a.jsonl"
  bad_json.write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
  with pytest.raises(corpus_readers.CorpusError, match=r"a.jsonl:2: invalid JSON"):
    list(corpus_readers.read_documents(str(bad_json)))
  control = tmp_path / "c.jsonl"  # the reason says where, not "... character at"
  control.write_text('{"text": "tab\there"}\n')
  with pytest.raises(corpus_readers.CorpusError,
                     match=r"c.jsonl:1: invalid JSON \(Invalid control character at column 14\)"):
    list(corpus_readers.read_documents(str(control)))
  no_text = tmp_path / "b.jsonl"
  no_text.write_text(json.dumps({"title": "x"}) + "\n")
  with pytest.raises(corpus_readers.CorpusError, match=r"b.jsonl:1: .*\"text\""):
    list(corpus_readers.read_documents(str(no_text)))
  binary = tmp_path / "c.txt"
  binary.write_bytes(b"fine line\n\xff\xfe broken\n")
  with pytest.raises(corpus_readers.CorpusError, match=r"c.txt:2: not valid UTF-8"):
    list(corpus_readers.read_documents(str(binary)))
  with pytest.raises(FileNotFoundError, match="matches no file"):
    list(corpus_readers.read_documents(str(tmp_path / "none*.jsonl")))


def test_plain_text_documents_split_on_blank_lines(tmp_path):
  path = tmp_path / "d.txt"
  path.write_text("first doc para one\nfirst doc para two\n\n\nsecond doc\n")
  docs = list(corpus_readers.read_documents(str(path)))
  assert [d.text for d in docs] == ["first doc para one\n\nfirst doc para two", "second doc"]
  assert docs[1].source.endswith("d.txt:5")


def test_tfrecord_corpus(tmp_path):
  from ernie3_jax.runtime.tf_runtime import tf
  path = tmp_path / "docs.tfrecord"
  with tf.io.TFRecordWriter(str(path)) as writer:
    for title, text in (("A", "first text"), ("B", "second text")):
      ex = tf.train.Example(features=tf.train.Features(feature={
          "title": tf.train.Feature(bytes_list=tf.train.BytesList(value=[title.encode()])),
          "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()]))}))
      writer.write(ex.SerializeToString())
  docs = list(corpus_readers.read_documents(str(path)))
  assert [(d.title, d.text) for d in docs] == [("A", "first text"), ("B", "second text")]
  bad = tmp_path / "bad.tfrecord"
  with tf.io.TFRecordWriter(str(bad)) as writer:
    writer.write(tf.train.Example().SerializeToString())
  with pytest.raises(corpus_readers.CorpusError, match=r"bad.tfrecord: record 0 has no"):
    list(corpus_readers.read_documents(str(bad)))


def test_tfds_corpus_reads_prepared_data():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=3, as_dataset_fn=lambda *a, **kw: _mock_text()):
    docs = list(corpus_readers.read_documents("tfds:wikipedia/20230601.en:train"))
  assert [d.text for d in docs] == ["doc 0", "doc 1", "doc 2"]
  assert docs[0].title == "t0" and docs[2].source == "tfds:wikipedia/20230601.en:train#2"


def _mock_text():
  from ernie3_jax.runtime.tf_runtime import tf
  return tf.data.Dataset.from_tensor_slices(
      {"title": [f"t{i}" for i in range(3)], "text": [f"doc {i}" for i in range(3)]})
