"""Parsing gin files and `--gin.NAME=VALUE` overrides.

Gin is layered as in T5X: `gin_configs/models/*.gin` (sizes), `runs/*.gin` (what
to run), `experiments/*.gin` (include one of each). Relative paths and includes
are looked up in the given search paths, then the repository root.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import os
import re
import tempfile
from typing import Sequence

import gin

# Importing these registers their configurables with gin.
from ernie3_jax.model import config as _model_config  # noqa: F401
from ernie3_jax.parallel import mesh as _mesh  # noqa: F401
from ernie3_jax.runtime import storage

# The checkout this module sits in (ernie3_jax/config/gin_utils.py).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Modules that moved, old name -> new. A MODEL_DIR/config.gin written before a move
# imports them by the old name; parse_gin reads such a file with the names of today.
MOVED_MODULES = {
    "ernie3_jax.main": "ernie3_jax.cli.main",
    "ernie3_jax.runs": "ernie3_jax.cli.runs",
    "ernie3_jax.finetune_runs": "ernie3_jax.cli.finetune_runs",
    "ernie3_jax.preflight": "ernie3_jax.cli.preflight",
    "ernie3_jax.console": "ernie3_jax.cli.console",
    "ernie3_jax.gin_utils": "ernie3_jax.config.gin_utils",
    "ernie3_jax.generation": "ernie3_jax.inference.generation",
    "ernie3_jax.generate": "ernie3_jax.inference.generate",
    "ernie3_jax.host_memory": "ernie3_jax.runtime.host_memory",
    "ernie3_jax.tf_runtime": "ernie3_jax.runtime.tf_runtime",
    "ernie3_jax.training.task_ids": "ernie3_jax.model.task_ids",
    "ernie3_jax.evaluation.superglue_formats": "ernie3_jax.superglue.formats",
    "ernie3_jax.evaluation.superglue_metrics": "ernie3_jax.superglue.metrics",
    "ernie3_jax.evaluation.superglue_sources": "ernie3_jax.superglue.sources",
    "ernie3_jax.evaluation.prompts": "ernie3_jax.superglue.prompts",
    "ernie3_jax.evaluation.submission": "ernie3_jax.superglue.submission",
}
_OLD_IMPORT = re.compile(r"^(\s*import\s+)(" + "|".join(re.escape(m) for m in MOVED_MODULES) +
                         r")(?![\w.])", flags=re.M)


def _with_current_module_names(path: str) -> str:
  """`path`, or a copy of it whose import lines name moved modules by their new names."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  new = _OLD_IMPORT.sub(lambda m: m.group(1) + MOVED_MODULES[m.group(2)], text)
  if new == text:
    return path
  copy = os.path.join(tempfile.mkdtemp(prefix="gin_moved_"), os.path.basename(path))
  with open(copy, "w", encoding="utf-8") as f:
    f.write(new)
  return copy


def _gin_config_dir() -> str:
  """The shipped gin files: the checkout's gin_configs/, which an install puts inside the
  package (ernie3_jax/gin_configs, see setup.py)."""
  spec = importlib.util.find_spec("ernie3_jax.gin_configs")
  if spec is not None and spec.submodule_search_locations:
    return list(spec.submodule_search_locations)[0]
  return os.path.join(REPO_ROOT, "gin_configs")


GIN_CONFIG_DIR = _gin_config_dir()
# Paths written as in the checkout ("gin_configs/models/tiny.gin") resolve from here.
GIN_CONFIG_PARENT = os.path.dirname(GIN_CONFIG_DIR)


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str] = (),
              search_paths: Sequence[str] = ()) -> None:
  """Parses files then bindings into the global gin config (cleared first)."""
  gin.clear_config()
  paths = list(search_paths) + [REPO_ROOT, GIN_CONFIG_PARENT, GIN_CONFIG_DIR]
  for path in paths:
    gin.add_config_file_search_path(path)
  resolved = []
  for f in gin_files:
    if storage.is_uri(f):  # a run's config.gin on an object store; gin reads local files
      if not storage.isfile(f):
        raise FileNotFoundError(f"--gin_file={f!r} does not exist")
      resolved.append(_with_current_module_names(storage.local_copy(f)))
      continue
    candidates = [f] + [os.path.join(p, f) for p in paths]
    found = next((c for c in candidates if os.path.isfile(c)), None)
    if found is None:
      raise FileNotFoundError(
          f"--gin_file={f!r} not found (looked in the working directory and in {paths}; "
          "add a directory with --gin_search_paths)")
    resolved.append(_with_current_module_names(found))
  try:
    gin.parse_config_files_and_bindings(resolved, list(bindings), finalize_config=False)
  except ValueError as e:
    hint = _suggestion_for(str(e))
    if hint is None:
      raise
    raise GinConfigError(f"{e}\n{hint}") from None


class GinConfigError(ValueError):
  """A gin binding names no configurable or no parameter; says what was probably meant."""


def _configurables() -> dict[str, object]:
  """{short name and full selector: Configurable} of everything registered so far."""
  # gin keeps its registry private; it is the only place that lists the names.
  registry = getattr(gin.config, "_REGISTRY", None)
  out = {}
  for selector, configurable in (registry.items() if registry is not None else ()):
    if selector.startswith("gin."):
      continue
    out[selector] = configurable
    out.setdefault(selector.rsplit(".", 1)[-1], configurable)
  return out


def _parameters(configurable) -> list[str]:
  """Names `configurable` accepts as gin bindings (allow/denylists applied)."""
  fn = configurable.wrapped
  fn = fn.__init__ if inspect.isclass(fn) else fn
  try:
    names = [n for n, p in inspect.signature(fn).parameters.items()
             if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
  except (TypeError, ValueError):
    return []
  if configurable.allowlist:
    names = [n for n in names if n in configurable.allowlist]
  return [n for n in names if n not in (configurable.denylist or ())]


def _suggestion_for(message: str) -> str | None:
  """A 'did you mean' line for gin's unknown-configurable/parameter errors, else None."""
  known = _configurables()
  m = re.search(r"No configurable matching (?:reference )?'@?([\w.]+)", message)
  if m:
    selector = m.group(1)
    close = difflib.get_close_matches(selector, sorted(known), n=3, cutoff=0.6)
    if close:
      return f"Did you mean {' or '.join(repr(c) for c in close)}?"
    return (f"No configurable is named like {selector!r}; registered: "
            f"{sorted(k for k in known if '.' not in k)}")
  m = re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", message)
  if m and m.group(1) in known:
    params = _parameters(known[m.group(1)])
    close = difflib.get_close_matches(m.group(2), params, n=3, cutoff=0.6)
    lead = f"Did you mean {' or '.join(f'{m.group(1)}.{c}' for c in close)}? " if close else ""
    return f"{lead}{m.group(1)} takes: {', '.join(params)}"
  return None


def model_config_from_gin(gin_files: Sequence[str], bindings: Sequence[str] = ()):
  """The `Ernie3Config` that `gin_files` and `bindings` describe."""
  parse_gin(gin_files, bindings)
  return _model_config.Ernie3Config()


def effective_config() -> str:
  """The parsed gin config (files + bindings), as written to MODEL_DIR/config.gin."""
  return gin.config_str()


def rewrite_gin_args(argv: list[str]) -> list[str]:
  """`--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE` (T5X's convention)."""
  out = []
  for arg in argv:
    if arg.startswith("--gin.") and "=" in arg:
      name, value = arg[len("--gin."):].split("=", 1)
      out.append(f"--gin_bindings={name} = {value}")
    else:
      out.append(arg)
  return out
