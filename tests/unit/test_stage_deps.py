"""dvc.yaml's code deps are exactly what each stage imports, so the lock cannot go stale."""

from __future__ import annotations

from pathlib import Path

from imgclf.pipeline.stagedeps import closure, drift
from tests.support import ROOT


def test_every_stage_lists_every_module_it_imports() -> None:
    assert drift(ROOT) == {}


def test_train_deps_are_derived_transitively() -> None:
    files = {p.as_posix() for p in closure(ROOT, Path("stages/train.py"))}
    # stage.py → errors.py; loop.py → runtime.py → numerics.py, artifact/files.py …
    for name in (
        "pipeline/stage",
        "errors",
        "training/loop",
        "training/numerics",
        "artifact/files",
        "data/prepared_files",
        "training/architectures",
    ):
        assert f"src/imgclf/{name}.py" in files
    # Importing imgclf.training.loop runs the package __init__ files above it too.
    for init in ("__init__", "training/__init__", "pipeline/__init__", "artifact/__init__"):
        assert f"src/imgclf/{init}.py" in files
    # …but not the code that makes the split or serves the model.
    assert "src/imgclf/data/prepare.py" not in files
    assert "src/imgclf/serving/app.py" not in files


def test_drift_names_missing_and_extra_files(tmp_path: Path) -> None:
    (tmp_path / "src/imgclf").mkdir(parents=True)
    (tmp_path / "stages").mkdir()
    (tmp_path / "src/imgclf/a.py").write_text("def f():\n    from imgclf import b\n")
    (tmp_path / "src/imgclf/b.py").write_text("import json\n")
    (tmp_path / "src/imgclf/c.py").write_text("")
    (tmp_path / "stages/s.py").write_text("from imgclf.a import f\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: python stages/s.py out\n"
        "    deps: [stages/s.py, src/imgclf/a.py, src/imgclf/c.py, data/raw]\n"
    )
    # b.py is imported inside a function (still runs): missing; c.py is never imported.
    assert drift(tmp_path) == {"s": {"missing": ["src/imgclf/b.py"], "extra": ["src/imgclf/c.py"]}}


def test_parent_package_inits_count(tmp_path: Path) -> None:
    """``from imgclf.x.y import f`` runs imgclf/__init__.py and imgclf/x/__init__.py too."""
    (tmp_path / "src/imgclf/x").mkdir(parents=True)
    (tmp_path / "stages").mkdir()
    (tmp_path / "src/imgclf/__init__.py").write_text('"""pkg"""\n')
    (tmp_path / "src/imgclf/x/__init__.py").write_text('"""sub"""\n')
    (tmp_path / "src/imgclf/x/y.py").write_text("def f():\n    pass\n")
    (tmp_path / "stages/s.py").write_text("from imgclf.x.y import f\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: python stages/s.py\n    deps: [stages/s.py, src/imgclf/x/y.py]\n"
    )
    missing = drift(tmp_path)["s"]["missing"]
    assert missing == ["src/imgclf/__init__.py", "src/imgclf/x/__init__.py"]
