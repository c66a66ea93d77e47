"""The package's import graph follows the wing order of DESIGN.md and has no cycle.

Every ``import``/``from ... import`` statement in ``src/vaelab`` is parsed (including imports
inside functions), resolved to a vaelab module, and checked:

* wings rank leaves (``config``, ``data``, ``_checks``, ``_files``) → ``model`` → ``infer`` →
  ``fit`` | ``measure`` (siblings, neither imports the other) → ``use`` → ``tune`` | ``show``
  (siblings) → ``cli``;
  a module may import only its own wing or lower ranks;
* inside ``model``, ``nets`` and ``likelihoods`` import no other ``model`` module, and
  ``families`` and ``priors`` never import each other;
* nothing imports ``cli`` (but ``__main__``), and only ``cli`` imports the package root (or
  a re-export under a public name, ``vaelab.sklearn``);
* the module graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vaelab"
LEAVES = {"catalogue", "component_spec", "condition_spec", "config", "config_checks", "data",
          "dataset_names",
          "data_forms", "_checks", "_collectives", "_files", "_runtime", "_trust"}
#: Modules that only re-export under a public name, like the package root.
REEXPORTS = {"vaelab.sklearn"}
RANK = {"leaf": 0, "model": 1, "infer": 2, "fit": 3, "measure": 3, "use": 4, "tune": 5,
        "show": 5, "cli": 6}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """vaelab modules imported anywhere in the file (``from a import b`` counts a.b if b is a
    module, else a)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vaelab"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("vaelab"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
    return {m for m in found if m in known and m != name}


def _wing(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1 or name in REEXPORTS:
        return "package"
    head = parts[1]
    if head in LEAVES:
        return "leaf"
    if head in ("cli", "__main__"):
        return "cli"
    return head


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_every_module_belongs_to_a_known_wing(graph):
    unknown = sorted(n for n in graph if _wing(n) not in RANK and _wing(n) != "package")
    assert unknown == [], f"modules outside the wings of DESIGN.md: {unknown}"


def test_imports_follow_the_wing_order(graph):
    bad = []
    for name, deps in graph.items():
        wing = _wing(name)
        if wing == "package":  # vaelab/__init__.py re-exports from every wing
            continue
        for dep in deps:
            dep_wing = _wing(dep)
            if dep_wing == "package" and wing != "cli":
                bad.append(f"{name} -> {dep} (the package root re-exports everything)")
            elif dep_wing != "package" and RANK[dep_wing] > RANK[wing]:
                bad.append(f"{name} -> {dep}")
            elif {wing, dep_wing} in ({"fit", "measure"}, {"tune", "show"}):
                bad.append(f"{name} -> {dep} ({wing} and {dep_wing} are siblings)")
    assert bad == [], "imports against the wing order:\n" + "\n".join(sorted(bad))


#: The model modules that the networks and the likelihoods may import: the units, the
#: weight normalisation of their dense layers and, for nets, the hierarchies' conv nets (which
#: themselves build on the units only): never a model, a family or a prior.
MODEL_LEAF_DEPS = {
    "vaelab.model.units": {"vaelab.model.weight_norm"},
    "vaelab.model.likelihoods": set(),
    "vaelab.model.discretized_logistic": {"vaelab.model.likelihoods"},
    "vaelab.model.nets": {"vaelab.model.units", "vaelab.model.weight_norm",
                          "vaelab.model.conv_hierarchy"},
    "vaelab.model.conv_hierarchy": {"vaelab.model.units"},
}


def test_model_leaves_and_families_priors_independence(graph):
    bad = []
    for name, deps in graph.items():
        model_deps = {d for d in deps if d.startswith("vaelab.model.")}
        allowed = MODEL_LEAF_DEPS.get(name)
        if allowed is not None and model_deps - allowed:
            bad.append(f"{name} -> {sorted(model_deps - allowed)} (units and likelihoods are "
                       f"leaves; nets builds on units only)")
        if name == "vaelab.model.families" and "vaelab.model.priors" in deps:
            bad.append(f"{name} -> vaelab.model.priors")
        if name == "vaelab.model.priors" and "vaelab.model.families" in deps:
            bad.append(f"{name} -> vaelab.model.families (inject the encoder instead)")
    assert bad == [], "\n".join(bad)


def test_nothing_imports_cli(graph):
    importers = sorted(n for n, deps in graph.items()
                       if "vaelab.cli" in deps and n != "vaelab.__main__")
    assert importers == []


def test_no_import_cycle(graph):
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if colour.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in colour and (cycle := visit(dep)):
                return cycle
        stack.pop()
        colour[node] = 2
        return None

    for start in sorted(graph):
        if start not in colour and (cycle := visit(start)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_checker_sees_a_violation(tmp_path):
    """The parser is not blind: a planted upward import and a cycle are both found."""
    fake = tmp_path / "vaelab"
    (fake / "model").mkdir(parents=True)
    (fake / "show").mkdir()
    (fake / "model" / "nets.py").write_text("from vaelab.show import plots\n")
    (fake / "show" / "plots.py").write_text("def f():\n    from vaelab.model import nets\n")
    known = {"vaelab.model.nets", "vaelab.show.plots"}
    deps_nets = _imports("vaelab.model.nets", fake / "model" / "nets.py", known)
    deps_plots = _imports("vaelab.show.plots", fake / "show" / "plots.py", known)
    assert deps_nets == {"vaelab.show.plots"} and deps_plots == {"vaelab.model.nets"}
    assert RANK[_wing("vaelab.show.plots")] > RANK[_wing("vaelab.model.nets")]
