"""py4cc's layers, read from the source with ``ast``: a module imports only from lower layers
(``TYPE_CHECKING`` and function-local imports included), ``local`` and ``ray`` never import
each other, the package has no import cycle, no class inherits from more than one py4cc
class nor sits in a chain of three, and the top level stays small."""

from __future__ import annotations

import ast
import os
import unittest

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAYERS: dict[str, int] = {
    # 0-1: what a worker process imports
    "py4cc.protocol": 0,
    "py4cc.engine": 1,
    "py4cc.lifeline": 1,
    "py4cc.worker": 2,
    # 3: the options the host checks
    "py4cc.options": 3,
    "py4cc.validate": 4,
    # 5: the host's machinery, backend-neutral
    "py4cc.core": 5,
    # 6: the backends, side by side
    "py4cc.local": 6,
    "py4cc.ray": 6,
    # 7: the public face
    "py4cc.calls": 7,
    "py4cc.driver": 8,
    "py4cc": 9,
}
"""Each embedded module's layer: its own name, else its sub-package's."""

APART = {"py4cc.local", "py4cc.ray"}
"""Sub-packages of one layer that never import each other."""

MAX_TOP_LEVEL = 14
"""At most this many modules at py4cc's top level (``__init__`` included)."""

NOT_EMBEDDED = ("tests", "workload")


def package_modules(root: str = PACKAGE_DIR) -> dict[str, str]:
    """Every embedded module of the package at ``root``: dotted name -> its source."""
    modules = {}
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        parts = [] if rel == "." else rel.split(os.sep)
        if (parts and parts[0] in NOT_EMBEDDED) or "__pycache__" in parts:
            dirs[:] = []
            continue
        for file in files:
            if file.endswith(".py"):
                stem = file[:-3]
                name = ".".join(["py4cc", *parts] + ([] if stem == "__init__" else [stem]))
                with open(os.path.join(folder, file), encoding="utf-8") as f:
                    modules[name] = f.read()
    return modules


def imports_of(name: str, source: str, is_package: bool) -> set[str]:
    """The py4cc modules that ``name`` imports anywhere in its source (absolute names)."""
    found = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "py4cc"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "py4cc":
                continue
            # "from . import x" / "from .core import tasks" may name modules: count each.
            for alias in node.names:
                found.add(f"{target}.{alias.name}")
            found.add(target)
    return found


def resolve(target: str, modules: dict[str, str]) -> str | None:
    """The module ``target`` names (an attribute import names its module), or None."""
    while target:
        if target in modules:
            return target
        target = target.rpartition(".")[0]
    return None


def layer_of(name: str) -> tuple[int, str]:
    """``(layer, group)`` of a module: the longest entry of LAYERS that names it or its package."""
    probe = name
    while probe:
        if probe in LAYERS:
            return LAYERS[probe], probe
        probe = probe.rpartition(".")[0]
    raise KeyError(f"{name} has no layer in test_layers.LAYERS")


def graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """Each module -> the package modules it imports (a package's own ``__init__`` excluded
    when a module imports through it: importing ``py4cc.core.tasks`` runs ``py4cc.core``)."""
    edges = {}
    for name, source in modules.items():
        is_package = name == "py4cc" or name + ".__init__" in modules or _is_package(name)
        targets = set()
        for target in imports_of(name, source, is_package):
            module = resolve(target, modules)
            if module is not None and module != name:
                targets.add(module)
        edges[name] = targets
    return edges


def _is_package(name: str) -> bool:
    rel = name.split(".")[1:]
    return os.path.isdir(os.path.join(PACKAGE_DIR, *rel))


def layering_problems(modules: dict[str, str]) -> list[str]:
    """What breaks the rules, one line each (empty: none)."""
    problems = []
    edges = graph(modules)
    for name, targets in sorted(edges.items()):
        layer, group = layer_of(name)
        for target in sorted(targets):
            if name.startswith(target + ".") and _is_package(target):
                continue  # a module of a package may be reached through its __init__
            their_layer, their_group = layer_of(target)
            if their_layer > layer or (their_layer == layer and their_group != group):
                problems.append(f"{name} (layer {layer}) imports {target} (layer {their_layer}, {their_group})")
            if group in APART and their_group in APART and group != their_group:
                problems.append(f"{name} imports {target}: {group} and {their_group} never import each other")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(edges)]
    return problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected part of more than one module (or a self-import)."""
    found = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def class_problems(modules: dict[str, str]) -> list[str]:
    """Classes with more than one py4cc base, or in a chain of three py4cc classes."""
    bases: dict[str, list[str]] = {}
    for source in modules.values():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                names = [
                    b.id if isinstance(b, ast.Name) else b.attr
                    for b in node.bases
                    if isinstance(b, (ast.Name, ast.Attribute))
                ]
                bases[node.name] = names
    problems = []
    for name, names in sorted(bases.items()):
        ours = [base for base in names if base in bases]
        if len(ours) > 1:
            problems.append(f"class {name} inherits from {len(ours)} py4cc classes: {ours}")
        for base in ours:
            if any(grand in bases for grand in bases[base]):
                problems.append(f"class {name} -> {base} -> {bases[base]}: a chain of three py4cc classes")
    return problems


class LayersTest(unittest.TestCase):
    def setUp(self):
        self.modules = package_modules()

    def test_every_module_has_a_layer_and_imports_only_below_it(self):
        self.assertIn("py4cc.core.tasks", self.modules)
        self.assertNotIn("py4cc.tests.test_layers", self.modules)
        self.assertEqual(layering_problems(self.modules), [])

    def test_no_mixin_chains(self):
        self.assertEqual(class_problems(self.modules), [])

    def test_the_top_level_stays_small(self):
        top = [name for name in self.modules if (name.count(".") <= 1 and not _is_package(name)) or name == "py4cc"]
        self.assertLessEqual(len(top), MAX_TOP_LEVEL, sorted(top))

    def test_an_upward_import_is_caught_even_under_type_checking(self):
        modules = dict(self.modules)
        modules["py4cc.core.tasks"] += "\nif TYPE_CHECKING:\n    from ..local.pool import Pool\n"
        problems = layering_problems(modules)
        self.assertIn("py4cc.core.tasks (layer 5) imports py4cc.local.pool (layer 6, py4cc.local)", problems)

    def test_a_backend_importing_the_other_is_caught(self):
        modules = dict(self.modules)
        modules["py4cc.ray.backend"] += "\ndef f():\n    from ..local import output\n"
        problems = layering_problems(modules)
        self.assertIn(
            "py4cc.ray.backend imports py4cc.local.output: py4cc.ray and py4cc.local never import each other", problems
        )

    def test_a_worker_module_importing_the_host_is_caught(self):
        modules = dict(self.modules)
        modules["py4cc.worker"] += "\nimport py4cc.core.stats\n"
        problems = layering_problems(modules)
        self.assertIn("py4cc.worker (layer 2) imports py4cc.core.stats (layer 5, py4cc.core)", problems)

    def test_a_cycle_within_a_layer_is_caught(self):
        modules = dict(self.modules)
        modules["py4cc.core.slots"] += "\nfrom . import tasks\n"
        problems = layering_problems(modules)
        self.assertTrue(any(p.startswith("import cycle:") and "py4cc.core.slots" in p for p in problems), problems)

    def test_a_mixin_chain_is_caught(self):
        modules = dict(self.modules)
        modules["py4cc.local.pool"] += "\nclass Deeper(Pool):\n    pass\n\nclass Both(Pool, WakeUp):\n    pass\n"
        problems = class_problems(modules)
        self.assertIn("class Deeper -> Pool -> ['TaskBook']: a chain of three py4cc classes", problems)
        self.assertIn("class Both inherits from 2 py4cc classes: ['Pool', 'WakeUp']", problems)


if __name__ == "__main__":
    unittest.main()
