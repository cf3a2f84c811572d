"""The SentencePiece vocabulary and the special pieces the model needs.

Ids 0, 1, 2 are pad, eos and unk (the layout seqio expects); [CLS], [SEP] and
[MASK] are user-defined pieces that SentencePiece never splits.
"""

from __future__ import annotations

import os

from ernie3_jax.runtime import tf_runtime  # noqa: F401  (first: hides GPUs from TensorFlow)

import seqio

from ernie3_jax.data.corpus_readers import EMBEDDED_DIR
from ernie3_jax.runtime import storage

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
CLS, SEP, MASK = "[CLS]", "[SEP]", "[MASK]"
SPECIAL_PIECES = (CLS, SEP, MASK)
EMBEDDED_VOCAB = os.path.join(EMBEDDED_DIR, "spm.model")


class Vocabulary(seqio.SentencePieceVocabulary):
  """seqio's SentencePiece vocabulary plus the ids of the special pieces."""

  def __init__(self, path: str = EMBEDDED_VOCAB):
    if not storage.isfile(path):
      raise FileNotFoundError(f"vocabulary file {path!r} does not exist")
    # SentencePiece (through seqio) reads with TensorFlow's gfile: an object-store
    # vocabulary is read through `storage` into a local copy first.
    super().__init__(storage.local_copy(path))
    model = self.tokenizer
    if model.pad_id() != PAD_ID or model.eos_id() != EOS_ID or model.unk_id() != UNK_ID:
      raise ValueError(f"vocabulary {path!r}: expected pad/eos/unk ids 0/1/2, got "
                       f"{model.pad_id()}/{model.eos_id()}/{model.unk_id()}; retrain it with "
                       "python -m ernie3_jax.tools.train_vocab")
    missing = [p for p in SPECIAL_PIECES if model.piece_to_id(p) == UNK_ID]
    if missing:
      raise ValueError(f"vocabulary {path!r} lacks the special pieces {missing}; retrain it "
                       "with python -m ernie3_jax.tools.train_vocab")
    self.path = path
    self.cls_id = model.piece_to_id(CLS)
    self.sep_id = model.piece_to_id(SEP)
    self.mask_id = model.piece_to_id(MASK)
    # Ids that must never be sampled as random replacements or predicted as text.
    self.special_ids = (PAD_ID, EOS_ID, UNK_ID, self.cls_id, self.sep_id, self.mask_id)
