"""What the README and docs tell a user to run or open exists: every `python -m` module
(and it runs as a command), every repository path, every gin file and make target; every
documented command's flags are the command's own."""

import glob
import importlib.util
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "Makefile", *sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))),
        *sorted(p for p in glob.glob(os.path.join(REPO, "launch", "*")) if os.path.isfile(p))]
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


# A flag's own line in a command's help: absl's "  --name: ..." / "  --[no]name: ...",
# argparse's "  --name NAME" (a usage example, "--name=value", does not count).
_DEFINED_FLAG = re.compile(r"^\s+(?:-\w, )?--(?:\[no\])?(\w+)(?=[: ]|$)", re.M)


def _help_flags(target: str) -> tuple[set[str], str]:
  """The flags `target`'s help lists: absl commands answer --helpfull, argparse ones --help."""
  import subprocess
  import sys
  argv = [sys.executable, target] if target.endswith(".py") else [sys.executable, "-m", target]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  text = ""
  for asking in ("--helpfull", "--help"):
    done = subprocess.run(argv + [asking], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    text = done.stdout + done.stderr
    names = set(_DEFINED_FLAG.findall(text))
    if len(names) > 1:  # more than --help itself
      return names, text
  return set(), text


def _other_commands() -> dict[str, list[tuple[str, str]]]:
  """{module or benchmark script: [(doc, flag name)]} of every documented command line
  other than the entrypoint's: tools, generation, zero-shot, the probe, benchmarks."""
  import shlex
  found: dict[str, list[tuple[str, str]]] = {}
  start = re.compile(r"^\s*(?:\$\(HOST_MEMORY\) )?(?:python|\$\(PY\)) "
                     r"(-m (ernie3_jax(?:\.\w+)+)|(benchmarks/\w+\.py))(.*)")
  for doc, text in _texts().items():
    lines = text.split("\n")
    for i, line in enumerate(lines):
      m = start.match(line)
      if not m or m.group(2) == "ernie3_jax.cli.main":
        continue
      command = m.group(4)
      while command.rstrip().endswith("\\"):
        i += 1
        command = command.rstrip()[:-1] + " " + lines[i]
      command = re.sub(r"\$\(\w+\)", "X", command).replace("[", " ").replace("]", " ")
      args = shlex.split(command, comments=True)
      args = args[:args.index("--")] if "--" in args else args  # the rest configures Beam
      # `--gin.NAME=VALUE` is rewritten to --gin_bindings (gin_utils.rewrite_gin_args).
      target = found.setdefault(m.group(2) or m.group(3), [])
      target += [(doc, "gin_bindings" if arg.startswith("--gin.") else arg[2:].split("=")[0])
                 for arg in args if arg.startswith("--")]
  return found


def test_every_other_documented_command_has_its_flags():
  """Each documented tool, inference, evaluation and benchmark command starts and prints
  its help, and every flag it is shown with is defined (a renamed or removed flag fails)."""
  import concurrent.futures
  commands = {t: used for t, used in _other_commands().items() if used}
  assert {"ernie3_jax.inference.generate", "ernie3_jax.evaluation.zero_shot",
          "ernie3_jax.evaluation.knowledge_probe", "ernie3_jax.tools.preprocess",
          "ernie3_jax.tools.train_vocab", "benchmarks/knowledge_study.py"} <= set(commands)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    helps = dict(zip(commands, pool.map(_help_flags, commands)))
  missing = []
  for target, used in sorted(commands.items()):
    defined, text = helps[target]
    assert defined, f"{target} printed no flags for --helpfull or --help:\n{text[-2000:]}"
    missing += [f"{doc}: {target} --{name}" for doc, name in used if name not in defined]
  assert missing == []
