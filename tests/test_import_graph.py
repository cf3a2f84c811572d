"""The package's import graph: no cycle, and no layer importing a higher one (every
import counts, lazy ones included). The layer order is written down here, once."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where each package's sources are in the checkout (tasks/ installs as ernie3_jax.tasks).
SOURCES = {"ernie3_jax": "ernie3_jax", "ernie3_jax.tasks": "tasks"}

# The sub-packages of ernie3_jax, lowest first: a module may import its own layer and the
# ones before it (docs/DESIGN.md draws this).
LAYERS = ("runtime", "model", "parallel", "config", "data", "superglue", "tasks", "training",
          "evaluation", "inference", "tools", "cli")
# Imports that climb today, each to be removed rather than added to.
KNOWN_CLIMBS: set[tuple[str, str]] = set()


def modules() -> dict[str, str]:
  found = {}
  for package, folder in SOURCES.items():
    for dirpath, _, files in os.walk(os.path.join(REPO, folder)):
      for name in files:
        if not name.endswith(".py"):
          continue
        rel = os.path.relpath(os.path.join(dirpath, name), os.path.join(REPO, folder))
        parts = [package] + rel[:-3].split(os.sep)
        if parts[-1] == "__init__":
          parts.pop()
        found[".".join(parts)] = os.path.join(dirpath, name)
  return found


def import_graph() -> dict[str, set[str]]:
  mods = modules()
  graph = {m: set() for m in mods}
  for mod, path in mods.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
      targets = []
      if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods
                   else node.module for a in node.names]
      elif isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      graph[mod].update(t for t in targets if t in mods and t != mod)
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_the_walker_sees_the_package_and_finds_a_planted_cycle():
  graph = import_graph()
  assert "ernie3_jax.tasks.superglue_zero_shot" in graph
  assert "ernie3_jax.superglue.prompts" in graph["ernie3_jax.tasks.superglue_zero_shot"]
  planted = dict(graph, **{"ernie3_jax.superglue.prompts": graph[
      "ernie3_jax.superglue.prompts"] | {"ernie3_jax.tasks.superglue_zero_shot"}})
  assert any("ernie3_jax.superglue.prompts" in c for c in cycles(planted))


def test_no_module_imports_itself_through_others():
  assert cycles(import_graph()) == []


def layer(module: str) -> str | None:
  """The layer of a module: its sub-package of ernie3_jax (None for the package itself)."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


def climbs(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
  return {(a, b) for a, targets in graph.items() for b in targets
          if layer(a) != layer(b) and LAYERS.index(layer(a)) < LAYERS.index(layer(b))}


def test_every_module_is_in_a_layer_and_the_package_top_holds_only_folders():
  graph = import_graph()
  assert {layer(m) for m in graph} - {None} == set(LAYERS)
  top = sorted(f for f in os.listdir(os.path.join(REPO, "ernie3_jax"))
               if f.endswith(".py") and f != "__init__.py")
  assert top == [], f"modules at the package top: {top}"


def test_no_layer_imports_a_higher_one_beyond_the_known_climbs():
  graph = import_graph()
  found = climbs(graph)
  assert found - KNOWN_CLIMBS == set(), "new imports of a higher layer"
  assert KNOWN_CLIMBS - found == set(), "fixed climbs: remove them from KNOWN_CLIMBS"
  planted = dict(graph, **{"ernie3_jax.model.ernie3": graph["ernie3_jax.model.ernie3"] |
                           {"ernie3_jax.training.train"}})
  assert ("ernie3_jax.model.ernie3", "ernie3_jax.training.train") in climbs(planted)
