"""What the README and docs tell a user to run or open exists: every `python -m` module
(and it runs as a command), every repository path, every gin file and make target."""

import glob
import importlib.util
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "Makefile", *sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))),
        *sorted(glob.glob(os.path.join(REPO, "launch", "*.sh")))]
# Installed-only locations (setup.py maps gin_configs/ and tasks/ into the package).
INSTALLED_ONLY = ("ernie3_jax/gin_configs/",)


def _texts() -> dict[str, str]:
  out = {}
  for name in DOCS:
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
      out[os.path.relpath(os.path.join(REPO, name), REPO)] = f.read()
  return out


def test_every_python_m_module_exists_and_is_a_command():
  found = {(m, doc) for doc, text in _texts().items()
           for m in re.findall(r"-m (ernie3_jax(?:\.\w+)+)", text)}
  assert {m for m, _ in found} >= {"ernie3_jax.cli.main", "ernie3_jax.inference.generate"}
  for module, doc in sorted(found):
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{doc}: python -m {module}: no such module"
    with open(spec.origin, encoding="utf-8") as f:
      assert 'if __name__ == "__main__":' in f.read(), f"{doc}: {module} is not a command"


def test_every_repository_path_named_exists():
  pattern = r"\b((?:gin_configs|benchmarks|launch|tests|docs|ernie3_jax|tasks)/[\w./*-]*\w/?)"
  missing = []
  for doc, text in _texts().items():
    for path in set(re.findall(pattern, text)):
      if path.startswith(INSTALLED_ONLY):
        continue
      if not glob.glob(os.path.join(REPO, path)):
        missing.append(f"{doc}: {path}")
  assert missing == []


def test_every_make_target_named_exists():
  with open(os.path.join(REPO, "Makefile"), encoding="utf-8") as f:
    targets = set(re.findall(r"^([\w-]+):", f.read(), flags=re.M))
  named = {t for text in _texts().values() for t in re.findall(r"`make ([\w-]+)", text)}
  assert named and named <= targets, named - targets


def _entrypoint_commands() -> list[tuple[str, list[str]]]:
  """(doc, argv after the module) of every `python -m ernie3_jax.cli.main` code line."""
  import shlex
  found = []
  for doc, text in _texts().items():
    lines = text.split("\n")
    for i, line in enumerate(lines):
      if not line.startswith("    python -m ernie3_jax.cli.main"):
        continue
      command = line
      while command.rstrip().endswith("\\"):
        i += 1
        command = command.rstrip()[:-1] + " " + lines[i]
      argv = shlex.split(command.replace("[", " ").replace("]", " "), comments=True)
      found.append((doc, argv[3:]))
  return found


def test_every_documented_entrypoint_command_parses():
  """Its flags exist, its run modes are run modes, and its gin files and bindings parse
  (a renamed configurable or parameter fails here)."""
  from absl import flags
  from ernie3_jax.cli import main  # noqa: F401  (defines the entrypoint's flags)
  from ernie3_jax.config import gin_utils
  commands = _entrypoint_commands()
  assert len(commands) >= 5
  for doc, argv in commands:
    where = f"{doc}: {' '.join(argv)}"
    gin_files, bindings = [], []
    for arg in argv:
      name, _, value = arg[2:].partition("=")
      if arg.startswith("--gin."):
        bindings.append(gin_utils.rewrite_gin_args([arg])[0].split("=", 1)[1])
      elif name == "gin_file":
        gin_files.append(value)
      else:
        assert name in flags.FLAGS, f"{where}: no flag --{name}"
        if name == "run_mode":
          assert set(value.split("|")) <= {"train", "eval", "infer"}, where
    if gin_files and "..." not in gin_files:
      gin_utils.parse_gin(gin_files, bindings)
