"""What is live: does each stage's endpoint serve the version the registry says it should?

The registry (git tags) is the intent; the endpoint's ``GET /model`` is the fact. The
image bakes the version and stage in at build (``IMGCLF_MODEL_VERSION`` /
``IMGCLF_MODEL_STAGE``, :mod:`imgclf.serving.settings`) next to the model's sha256, so
a scheduled job can compare the two without access to the deployment: a stage that
serves another version, another stage's image, or another model is a mismatch.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf.pipeline.outputs import EVALUATE
from imgclf.release.registry import ReleaseError, current
from imgclf.report.revisions import json_at


@dataclass(frozen=True)
class Expected:
    """What a stage should serve: the registered version, its commit and model sha256."""

    stage: str
    version: str
    commit: str
    model_sha256: str | None


@dataclass(frozen=True)
class Finding:
    """One stage checked against its endpoint."""

    stage: str
    url: str
    ok: bool
    detail: str


def expected(root: Path) -> dict[str, Expected]:
    """Each stage that holds a version → what its endpoint must serve."""
    out = {}
    for stage, promotion in current(root).items():
        if promotion is None:
            continue
        metrics = json_at(root, EVALUATE, promotion.commit) or {}
        sha = metrics.get("model_sha256")
        out[stage] = Expected(stage, promotion.version, promotion.commit,
                              str(sha) if sha else None)  # fmt: skip
    return out


def served(url: str, timeout: float = 10) -> dict[str, Any]:
    """``GET {url}/model``; a :class:`ReleaseError` saying why when it cannot be read."""
    target = url.rstrip("/") + "/model"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, TimeoutError, OSError, json.JSONDecodeError) as exc:
        raise ReleaseError(f"cannot read {target}: {exc}") from None


def compare(want: Expected, got: dict[str, Any], url: str) -> Finding:
    """The registry's intent for one stage against one ``/model`` answer."""
    release = got.get("release") or {}
    problems = []
    if release.get("version") != want.version:
        problems.append(f"serves version {release.get('version')!r}, registry says "
                        f"{want.version!r}")  # fmt: skip
    if release.get("stage") != want.stage:
        problems.append(f"image built for stage {release.get('stage')!r}")
    if want.model_sha256 and got.get("model_sha256") != want.model_sha256:
        problems.append(f"model sha256 {str(got.get('model_sha256'))[:12]}… is not "
                        f"{want.version}'s {want.model_sha256[:12]}…")  # fmt: skip
    if problems:
        return Finding(want.stage, url, False, "; ".join(problems))
    return Finding(want.stage, url, True, f"serves {want.version} (model "
                   f"{want.model_sha256[:12] if want.model_sha256 else '?'}…)")  # fmt: skip


def check(root: Path, endpoints: dict[str, str]) -> list[Finding]:
    """Every configured stage endpoint against the registry (unreadable: a failure)."""
    wants = expected(root)
    findings = []
    for stage, url in sorted(endpoints.items()):
        want = wants.get(stage)
        if want is None:
            findings.append(Finding(stage, url, False, f"no version is registered in {stage}"))
            continue
        try:
            findings.append(compare(want, served(url), url))
        except ReleaseError as exc:
            findings.append(Finding(stage, url, False, str(exc)))
    return findings


def render(findings: list[Finding]) -> str:
    """Markdown for the job summary and the issue."""
    lines = ["## Live check: registry vs endpoints", "", "| stage | endpoint | | |",
             "|---|---|---|---|"]  # fmt: skip
    for f in findings:
        lines.append(f"| {f.stage} | {f.url} | {'✅' if f.ok else '❌'} | {f.detail} |")
    return "\n".join(lines) + "\n"
