"""Parsing gin files and `--gin.NAME=VALUE` overrides.

Gin is layered as in T5X: `gin_configs/models/*.gin` (sizes), `runs/*.gin` (what
to run), `experiments/*.gin` (include one of each). Relative paths and includes
are looked up in the given search paths, then the repository root.
"""

from __future__ import annotations

import os
from typing import Sequence

import gin

# Importing these registers their configurables with gin.
from ernie3_jax.model import config as _model_config  # noqa: F401
from ernie3_jax.parallel import mesh as _mesh  # noqa: F401

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_CONFIG_DIR = os.path.join(REPO_ROOT, "gin_configs")


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str] = (),
              search_paths: Sequence[str] = ()) -> None:
  """Parses files then bindings into the global gin config (cleared first)."""
  gin.clear_config()
  for path in list(search_paths) + [REPO_ROOT, GIN_CONFIG_DIR]:
    gin.add_config_file_search_path(path)
  resolved = []
  for f in gin_files:
    candidates = [f] + [os.path.join(p, f) for p in list(search_paths) + [REPO_ROOT, GIN_CONFIG_DIR]]
    found = next((c for c in candidates if os.path.isfile(c)), None)
    if found is None:
      raise FileNotFoundError(
          f"--gin_file={f!r} not found (looked in the working directory and in "
          f"{list(search_paths) + [REPO_ROOT, GIN_CONFIG_DIR]})")
    resolved.append(found)
  gin.parse_config_files_and_bindings(resolved, list(bindings), finalize_config=False)


def model_config_from_gin(gin_files: Sequence[str], bindings: Sequence[str] = ()):
  """The `Ernie3Config` that `gin_files` and `bindings` describe."""
  parse_gin(gin_files, bindings)
  return _model_config.Ernie3Config()


def effective_config() -> str:
  """The parsed gin config (files + bindings), as written to MODEL_DIR/config.gin."""
  return gin.config_str()
