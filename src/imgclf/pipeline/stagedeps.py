"""Which project files a stage runs, derived from its imports: what ``dvc.yaml`` must list.

A stage whose ``deps`` miss a module it imports is marked up to date after that module
changes: the lock would lie. ``imgclf check-lock`` and the test suite compare these
derived sets with ``dvc.yaml`` and name every missing or extra file.

Imports are read with :mod:`ast`, not by running code: every ``import imgclf.x`` or
``from imgclf.x import y`` anywhere in a file counts (function-level and
``TYPE_CHECKING`` imports too, since they can run), followed transitively. Importing
``imgclf.data.prepare`` also runs ``imgclf/__init__.py`` and ``imgclf/data/__init__.py``,
so every parent package's ``__init__.py`` counts as well.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

PACKAGE = "imgclf"


def _module_file(root: Path, dotted: str) -> Path | None:
    rel = Path("src", *dotted.split("."))
    for cand in (rel.with_suffix(".py"), rel / "__init__.py"):
        if (root / cand).is_file():
            return cand
    return None


def _with_parents(root: Path, dotted: str) -> set[Path]:
    """The module's file and the ``__init__.py`` of every package above it (all run)."""
    found = set()
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        path = _module_file(root, ".".join(parts[:i]))
        if path is not None:
            found.add(path)
    return found


def direct_imports(root: Path, rel: Path) -> set[Path]:
    """Project files (relative to ``root``) that ``rel`` imports directly."""
    names: set[str] = set()
    tree = ast.parse((root / rel).read_text(), filename=str(rel))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from imgclf import numerics` imports the module imgclf.training.numerics.
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    found = set()
    for name in names:
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            found |= _with_parents(root, name)
    return found


def closure(root: Path, script: Path) -> set[Path]:
    """``script`` and every project file it imports, transitively."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        todo.extend(direct_imports(root, rel) - seen)
    return seen


def stage_script(stage: dict[str, Any]) -> Path | None:
    """The ``stages/*.py`` file a stage's ``cmd`` runs, if any."""
    cmd = stage.get("cmd", "")
    words = " ".join(cmd) if isinstance(cmd, list) else str(cmd)
    return next((Path(w) for w in words.split() if w.endswith(".py")), None)


def drift(root: Path) -> dict[str, dict[str, list[str]]]:
    """Per stage: code files it imports but does not declare, and declared ones it does not.

    Only ``.py`` deps under ``src/`` and ``stages/`` are compared; data deps are the
    stage's own business.
    """
    import yaml

    stages = yaml.safe_load((root / "dvc.yaml").read_text()).get("stages", {})
    out: dict[str, dict[str, list[str]]] = {}
    for name, stage in stages.items():
        script = stage_script(stage)
        if script is None or not (root / script).is_file():
            continue
        needed = {p.as_posix() for p in closure(root, script)}
        declared = {
            str(d)
            for d in stage.get("deps", [])
            if str(d).endswith(".py") and str(d).startswith(("src/", "stages/"))
        }
        missing, extra = sorted(needed - declared), sorted(declared - needed)
        if missing or extra:
            out[name] = {"missing": missing, "extra": extra}
    return out
