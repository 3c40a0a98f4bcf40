"""The floor plan holds: which part of imgclf may import which, no cycles, empty __init__s.

Read from the source with :mod:`ast` (every import counts, also those inside functions
and under ``TYPE_CHECKING``: they run too), so a test fails the moment an import crosses
a wall, not when a container build or a stage's deps happen to notice.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import ROOT

SRC = ROOT / "src"
PACKAGE = SRC / "imgclf"

# Third-party packages the serving image does not have (requirements-serve.txt).
NOT_IN_SERVING_IMAGE = {"torch", "torchvision", "dvc", "dvclive", "sklearn", "scipy", "pandas",
                        "evidently", "albumentations", "cv2", "matplotlib", "typer", "yaml",
                        "onnx", "tqdm", "pyarrow"}  # fmt: skip
# Subpackage → the imgclf parts it may import (besides itself and the top-level modules
# errors, jsonio, params). The direction is the architecture (docs/architecture.md):
# serving and monitoring never reach into training, evaluation code or the DVC plumbing.
ALLOWED = {
    "data": set(),
    "training": {"data", "artifact"},
    "artifact": {"data"},
    "evaluation": {"data", "artifact", "ood"},
    "ood": {"data", "artifact"},
    "serving": {"data", "artifact", "ood", "monitoring"},
    "monitoring": {"data", "evaluation", "report"},
    "report": {"data", "evaluation", "pipeline"},
    "pipeline": {"artifact", "evaluation"},
    "release": {"evaluation", "pipeline", "report", "artifact"},
}
TOP_LEVEL_SHARED = {"errors", "jsonio", "params"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(imgclf modules imported, top-level third-party names imported) by one file."""
    own, other = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] == "imgclf":
                if name in modules and name != "imgclf":
                    own.add(name)
            else:
                other.add(name.split(".")[0])
    return own, other


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules)[0] - {name} for name, path in modules.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_parts_import_only_in_the_allowed_direction() -> None:
    crossings = []
    for module, imported in _graph().items():
        part = _part(module)
        if part not in ALLOWED:
            continue  # top-level modules (cli, params, errors, jsonio)
        for target in imported:
            other = _part(target)
            if other in (part, *TOP_LEVEL_SHARED) or other in ALLOWED[part]:
                continue
            crossings.append(f"{module} imports {target}")
    assert crossings == []


def test_nothing_imports_the_cli() -> None:
    assert [m for m, imp in _graph().items() if "imgclf.cli" in imp] == []


def test_serving_imports_nothing_the_serving_image_lacks() -> None:
    """The API image installs requirements-serve.txt only: no torch, no DVC, no pandas."""
    modules = _modules()
    graph = _graph()
    # Everything serving code can reach, transitively.
    todo = [m for m in modules if _part(m) == "serving"]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    assert not [m for m in seen if _part(m) in ("training", "pipeline", "report", "evaluation")]
    heavy = {m: sorted(_imports(modules[m], modules)[1] & NOT_IN_SERVING_IMAGE) for m in seen}
    assert {m: h for m, h in heavy.items() if h} == {}


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_package_inits_hold_a_docstring_only() -> None:
    """An import in an ``__init__`` would run for every module below it, and make every
    stage that imports one module depend on all of them (dvc.yaml deps)."""
    for init in PACKAGE.rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), init
        assert isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)


def test_every_module_opens_with_a_docstring() -> None:
    missing = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
               if ast.get_docstring(ast.parse(p.read_text())) is None]  # fmt: skip
    assert missing == []
