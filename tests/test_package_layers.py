"""The package layering of docs/architecture.md holds: every import between cnnlab's packages points down
(module-level and function-level imports alike), so no analysis imports another."""

import ast
from pathlib import Path

import cnnlab

ROOT = Path(cnnlab.__file__).parent

# package -> the cnnlab packages it may import (docs/architecture.md, "Layers")
ALLOWED = {
    "utils": set(),
    "data": {"utils"},
    "models": {"utils"},
    "engine": {"utils", "data", "models"},
    "population": {"utils", "data", "models", "engine"},
    "attribution": {"utils", "data", "models", "engine", "population"},
    "explain": {"utils", "data", "models", "engine"},
    "info": {"utils", "data", "models", "engine"},
    "profile": {"utils", "data", "models", "engine"},
    "experiments": {"utils", "data", "models", "engine", "population", "attribution", "explain", "info", "profile"},
    "cli": set(),  # the top: may import anything
}
TOP_LEVEL_MODULES = {"__init__", "__main__"}


def _imports(path: Path) -> set[str]:
    rel = path.relative_to(ROOT)
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel.parts[:-1])[: len(rel.parts) - node.level]
                parts = base + (node.module.split(".") if node.module else [])
            else:
                parts = (node.module or "").split(".")[1:] if (node.module or "").startswith("cnnlab.") else []
            if parts:
                out.add(parts[0])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("cnnlab.")}
    return out


def test_every_package_is_in_the_layer_table():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(ALLOWED), "add the new package to ALLOWED and to docs/architecture.md"


def test_imports_between_packages_point_down():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        pkg = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if pkg in TOP_LEVEL_MODULES or pkg == "cli":
            continue
        for target in sorted(_imports(path) - {pkg} - TOP_LEVEL_MODULES):
            if target not in ALLOWED[pkg]:
                wrong.append(f"{rel} imports cnnlab.{target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)
