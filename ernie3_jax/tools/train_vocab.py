r"""Trains a SentencePiece vocabulary with the pieces ERNIE 3.0 needs.

  python -m ernie3_jax.tools.train_vocab --input='corpus/*.jsonl' \
      --vocab_size=32000 --output=/tmp/spm

writes /tmp/spm.model and /tmp/spm.vocab (pad=0, eos=1, unk=2, then [CLS], [SEP],
[MASK]). Inputs are .jsonl ({"title", "text"}) or plain-text corpora.
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import app
from absl import flags
import sentencepiece as spm

from ernie3_jax.data import corpus_readers
from ernie3_jax.data.vocabulary import PAD_ID, EOS_ID, UNK_ID, SPECIAL_PIECES
from ernie3_jax.runtime import storage

_INPUT = flags.DEFINE_string("input", corpus_readers.EMBEDDED_CORPUS,
                             "Comma-separated globs of .jsonl or text corpus files.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 8000, "Number of pieces.")
_OUTPUT = flags.DEFINE_string("output", None, "Output prefix (writes PREFIX.model/.vocab).",
                              required=True)
_MAX_SENTENCES = flags.DEFINE_integer("max_sentences", 2_000_000,
                                      "Sample at most this many lines for training.")


def train(input_patterns: str, vocab_size: int, output_prefix: str,
          max_sentences: int = 2_000_000, symbols: Sequence[str] = ()) -> str:
  """Trains and returns the path of the .model file. `symbols`: pieces the vocabulary
  must hold whole (after the special pieces), e.g. "\u2581Varnholm" for a word."""
  lines = []
  for doc in corpus_readers.read_documents(input_patterns):
    for paragraph in doc.text.split("\n\n"):
      if paragraph.strip():
        lines.append(paragraph.strip())
    if doc.title:
      lines.append(doc.title)
  if not lines:
    raise ValueError(f"--input={input_patterns!r} holds no text to train a vocabulary on")
  # SentencePiece writes local files: an object-store prefix is trained locally, then
  # copied there.
  remote = storage.is_uri(storage.check(output_prefix, "--output"))
  local_prefix = output_prefix
  if remote:
    import tempfile  # pylint: disable=g-import-not-at-top
    local_prefix = os.path.join(tempfile.mkdtemp(prefix="ernie3_vocab_"),
                                os.path.basename(output_prefix))
  os.makedirs(os.path.dirname(os.path.abspath(local_prefix)), exist_ok=True)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_prefix=local_prefix, vocab_size=vocab_size,
      model_type="unigram", character_coverage=1.0, pad_id=PAD_ID, eos_id=EOS_ID,
      unk_id=UNK_ID, bos_id=-1, user_defined_symbols=list(SPECIAL_PIECES) + list(symbols),
      input_sentence_size=max_sentences, shuffle_input_sentence=True, num_threads=2,
      max_sentence_length=1 << 16, minloglevel=2)
  if remote:
    for suffix in (".model", ".vocab"):
      with open(local_prefix + suffix, "rb") as f:
        storage.write_atomic(output_prefix + suffix, f.read())
  return output_prefix + ".model"


def main(argv):
  del argv
  path = train(_INPUT.value, _VOCAB_SIZE.value, _OUTPUT.value, _MAX_SENTENCES.value)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
