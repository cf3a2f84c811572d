"""SuperGLUE sources: normalisation, errors naming file:line, and TFDS == official jsonl."""

import json
import os

import gin
import pytest

from ernie3_jax.superglue import sources

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "superglue")


def _splits(task):
  return ("test",) if task in sources.DIAGNOSTIC_TASKS else sources.SPLITS


def test_boolean_labels_from_json_booleans_strings_and_ints():
  train = list(sources.read_split("boolq", "train", FIXTURES))
  val = list(sources.read_split("superglue_boolq", "validation", FIXTURES))
  assert [r["label"] for r in train] == [True, False, True]  # JSON booleans
  assert [r["label"] for r in val] == [True, False, True]  # "true", "false", "True"
  assert all(type(r["label"]) is bool for r in train + val)
  answers = [a for p in sources.read_split("multirc", "validation", FIXTURES)
             for q in p["passage"]["questions"] for a in q["answers"]]
  # 0/1 ints, JSON booleans and "true" all become bools.
  assert [a["label"] for a in answers] == [True, False, True, True, False, True, False, True]
  assert all(type(a["label"]) is bool for a in answers)


def test_normalised_shapes():
  cb = list(sources.read_split("cb", "validation", FIXTURES))
  assert cb[0] == {"premise": "He knew that the door was locked.",
                   "hypothesis": "the door was locked", "idx": 0, "label": "entailment"}
  axb = list(sources.read_split("axb", "test", FIXTURES))
  # AX-b's idx is a string in the official file; its diagnostic categories are dropped.
  assert axb[1] == {"sentence1": "The door is open.", "sentence2": "The door is not open.",
                    "idx": 1, "label": "not_entailment"}
  wic = next(sources.read_split("wic", "validation", FIXTURES))
  assert "version" not in wic and wic["sentence1"][wic["start1"]:wic["end1"]] == "bright"
  record = list(sources.read_split("record", "validation", FIXTURES))
  assert record[0]["passage"]["entities"] == ["Northgate United", "Riverside Rovers", "Rovers",
                                              "Sam Hale"]
  assert record[0]["qas"][0] == {
      "idx": 0, "query": "Fans of @placeholder celebrated in the square.",
      "answers": ["Riverside Rovers", "Rovers"]}
  copa = list(sources.read_split("copa", "validation", FIXTURES))
  assert [r["label"] for r in copa] == [0, 1, 0]


def test_test_splits_have_no_labels():
  for task in sources.MAIN_TASKS:
    for row in sources.read_split(task, "test", FIXTURES):
      assert "label" not in row, task
      if task == "multirc":
        for q in row["passage"]["questions"]:
          assert all("label" not in a for a in q["answers"])
      for qa in row.get("qas", []):
        assert "answers" not in qa


def _write(tmp_path, task_dir, name, lines):
  os.makedirs(tmp_path / task_dir, exist_ok=True)
  path = tmp_path / task_dir / name
  path.write_text("\n".join(lines) + "\n")
  return str(path)


@pytest.mark.parametrize("task,line,message", [
    ("cb", "{not json", "invalid JSON"),
    ("cb", json.dumps({"premise": "p", "idx": 0, "label": "neutral"}),
     "missing field 'hypothesis'"),
    ("cb", json.dumps({"premise": "p", "hypothesis": "h", "idx": 0, "label": "maybe"}),
     "unknown cb label 'maybe'"),
    ("boolq", json.dumps({"question": "q", "passage": "p", "idx": 0, "label": "yes"}),
     "unknown boolean label 'yes'"),
    ("copa", json.dumps({"premise": "p", "choice1": "a", "choice2": "b", "question": "why",
                         "idx": 0, "label": 0}), "'cause' or 'effect'"),
])
def test_bad_rows_name_file_and_line(tmp_path, task, line, message):
  good = {"cb": {"premise": "p", "hypothesis": "h", "idx": 0, "label": "neutral"},
          "boolq": {"question": "q", "passage": "p", "idx": 0, "label": True},
          "copa": {"premise": "p", "choice1": "a", "choice2": "b", "question": "cause",
                   "idx": 0, "label": 1}}[task]
  path = _write(tmp_path, sources.OFFICIAL_DIRS[task], "val.jsonl", [json.dumps(good), line])
  with pytest.raises(sources.SuperGlueDataError, match=message) as err:
    list(sources.read_split(task, "validation", str(tmp_path)))
  assert f"{path}:2:" in str(err.value)


def test_bad_nested_rows_name_file_line_and_position(tmp_path):
  row = {"idx": 0, "passage": {"text": "t", "questions": [
      {"idx": 0, "question": "q", "answers": [{"idx": 0, "text": "a", "label": 1},
                                              {"idx": 1, "label": 0}]}]}}
  path = _write(tmp_path, "MultiRC", "train.jsonl", [json.dumps(row)])
  with pytest.raises(sources.SuperGlueDataError,
                     match=f"{path}:1 question 0 answer 1: missing field 'text'"):
    list(sources.read_split("multirc", "train", str(tmp_path)))


def test_unknown_task_split_and_source():
  with pytest.raises(ValueError, match="unknown SuperGLUE task 'mnli'"):
    list(sources.read_split("mnli", "train", FIXTURES))
  with pytest.raises(ValueError, match="has no split 'train'"):
    list(sources.read_split("axb", "train", FIXTURES))
  with pytest.raises(FileNotFoundError, match="neither 'tfds'"):
    list(sources.read_split("cb", "train", "/nonexistent/superglue"))


def test_gin_configures_the_default_source():
  gin.bind_parameter("superglue_source.path", FIXTURES)
  assert [r["idx"] for r in sources.read_split("rte", "validation")] == [0, 1, 2]


# --------------------------------------------------------------------------- TFDS


def _tfds_label(task, row):
  """The ClassLabel int TFDS stores for an official label (-1 when unlabeled)."""
  if "label" not in row:
    return -1
  label = row["label"]
  if task in sources.STRING_LABELS:
    return list(sources.STRING_LABELS[task]).index(label)
  if task == "copa":
    return label
  return int(sources.to_bool(label, "fixture"))  # TFDS stores booleans as False/True classes


def _as_tfds_examples(task, rows):
  """Official rows -> examples in TFDS super_glue's field layout (as its builder writes)."""
  out = []
  for row in rows:
    if task == "multirc":
      for q in row["passage"]["questions"]:
        for a in q["answers"]:
          out.append({"paragraph": row["passage"]["text"], "question": q["question"],
                      "answer": a["text"], "label": _tfds_label(task, a),
                      "idx": {"paragraph": row["idx"], "question": q["idx"],
                              "answer": a["idx"]}})
    elif task == "record":
      text = row["passage"]["text"]
      entities = sorted({text[e["start"]:e["end"] + 1] for e in row["passage"]["entities"]})
      for qa in row["qas"]:
        out.append({"passage": text, "query": qa["query"], "entities": entities,
                    "answers": sorted({a["text"] for a in qa.get("answers", [])}),
                    "idx": {"passage": row["idx"], "query": qa["idx"]}})
    else:
      ex = {k: v for k, v in row.items() if k not in ("label", "target", "version", "logic",
                                                      "lexical-semantics", "pair_id")}
      ex.update(row.get("target", {}))
      ex["idx"] = int(row["idx"])
      ex["label"] = _tfds_label(task, row)
      out.append(ex)
  return out[::-1]  # TFDS does not keep file order


def _official_rows(task, split):
  path = sources.split_path(task, split, FIXTURES)
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_tfds_source_gives_the_same_dicts_as_the_official_files():
  import tensorflow_datasets as tfds

  from ernie3_jax.runtime.tf_runtime import tf
  loaded = []

  def as_dataset(builder, split, **kwargs):
    del kwargs
    config = builder.builder_config.name
    task = "wsc" if config == "wsc.fixed" else config
    loaded.append((config, split))
    examples = _as_tfds_examples(task, _official_rows(task, split))
    return tf.data.Dataset.from_generator(
        lambda: iter(examples), output_signature=builder.info.features.get_tensor_spec())

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    for task in sources.TASKS:
      for split in _splits(task):
        from_files = list(sources.read_split(task, split, FIXTURES))
        from_tfds = list(sources.read_split(task, split, "tfds"))
        assert from_tfds == from_files, (task, split)
  assert ("wsc.fixed", "validation") in loaded and len(loaded) == 8 * 3 + 2
