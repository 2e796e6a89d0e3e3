"""No import cycles inside a3_jax: module- and function-level imports alike.

A package importing its own submodules (`decoding/__init__` re-exporting) is not a
cycle; two modules that reach each other, directly or through others, are.
"""

from __future__ import annotations

import ast
import pathlib

import a3_jax


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
  """Module name -> the package's modules it imports (anywhere in its body)."""
  files = {}
  for path in root.rglob("*.py"):
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    files[".".join(parts)] = path
  graph = {}
  for name, path in files.items():
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          up = here.split(".")[:len(here.split(".")) - node.level + 1]
          base = ".".join(up + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                   for a in node.names]
      else:
        continue
      edges.update(t for t in targets if t in files and t != name)
    # A package's own submodules are its contents, not a dependency loop.
    graph[name] = {t for t in edges if not (is_package and t.startswith(name + "."))}
    graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle as a list of modules (first == last), or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_a3_jax_has_no_import_cycle():
  root = pathlib.Path(a3_jax.__file__).parent
  graph = import_graph(root)
  assert len(graph) > 40  # really read the package
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sub" / "__init__.py").write_text("from pkg.sub import a\n")  # re-export: fine
  (pkg / "sub" / "a.py").write_text("from pkg import b\n")
  (pkg / "b.py").write_text("def f():\n  from pkg.sub.a import g\n")
  graph = import_graph(pkg)
  assert find_cycle(graph) == ["pkg.b", "pkg.sub.a", "pkg.b"]
