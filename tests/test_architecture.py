"""The package's layers, read from its source: imports point down only, and one module speaks to each heavy
dependency. A newcomer finds a change's room by its layer: settings -> storage -> science -> experiments ->
execution -> interfaces, with bench beside them (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "twophase_core"
# rank of each layer: a module may import its own layer's and lower ones (bench sits beside the interfaces: the
# CLI runs it, it drives the app)
LAYERS = {"settings": 0, "storage": 1, "science": 2, "experiments": 3, "execution": 4, "interfaces": 5, "bench": 5}


def _imports() -> list[tuple[str, str]]:
    """(importing module, imported twophase_core module) for every import in the package, lazy ones included."""
    out = []
    for f in PKG.rglob("*.py"):
        mod = ".".join(("twophase_core", *f.relative_to(PKG).with_suffix("").parts)).removesuffix(".__init__")
        package = mod if f.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                names = [f"{base}.{a.name}" for a in node.names] if not node.module or node.level else [base]
                out += [(mod, n) for n in names if n.startswith("twophase_core")]
            elif isinstance(node, ast.Import):
                out += [(mod, a.name) for a in node.names if a.name.startswith("twophase_core")]
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_import_points_down_the_layers():
    upward = [(a, b) for a, b in _imports()
              if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a)]  # type: ignore[operator]
    assert upward == [], "imports pointing up a layer:\n" + "\n".join(f"  {a} -> {b}" for a, b in sorted(upward))


def test_one_module_imports_diskcache():
    importers = set()
    for f in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n.split(".")[0] == "diskcache" for n in names):
                importers.add(str(f.relative_to(PKG)))
    assert importers == {"storage/index.py"}
