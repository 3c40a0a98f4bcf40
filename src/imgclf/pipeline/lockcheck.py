"""Does the reproduced pipeline match the committed ``dvc.lock``? And if not, does it matter?

Run after ``dvc repro`` (``imgclf check-lock``, the ``cml`` workflow). Three outcomes:

* **bit-identical** — ``dvc.lock`` and ``metrics/`` are exactly the committed ones.
* **different numerics, metrics agree within noise** — what must be exact is exact
  (code, params, the dataset and the prepared split: the lock's deps and ``prepare``'s
  outputs), only the trained weights and what follows from them differ, and the paired
  test on per-sample predictions (``compare.py``) finds no difference beyond noise. This
  is the expected case on a GPU, on ARM, or with ``train.numerics: fast`` on another CPU.
* **differs beyond noise** — or an input differs (a stale lock, a dep missing from
  ``dvc.yaml``): the committed results are not what this code produces. Exit code 1.

Only the last fails, so CI does not fail by the luck of its runner's CPU, yet a stale
or wrong lock is always caught.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imgclf.evaluation.paired_test import NotPairedError, compare_predictions, parse_predictions
from imgclf.pipeline.git import git_bytes, git_files, git_text
from imgclf.pipeline.outputs import CARD, METRICS_DIR, PREDICTIONS
from imgclf.pipeline.stagedeps import drift

LOCK = "dvc.lock"
# Stages whose outputs never depend on floating-point kernels: they must match exactly.
EXACT_STAGES = ("params_check", "digits", "prepare")

BIT_IDENTICAL = "bit-identical"
WITHIN_NOISE = "different numerics, metrics agree within noise"
BEYOND_NOISE = "differs beyond noise"
INPUTS_DIFFER = "inputs differ"
SAME_OUTPUTS = "outputs bit-identical, only code deps differ"


class LockCheckError(RuntimeError):
    """The check cannot run (no committed lock, not a git repo, no reproduced outputs)."""


@dataclass
class LockVerdict:
    """The outcome, with every reason a reviewer needs to act on it."""

    case: str
    details: list[str] = field(default_factory=list)
    expected_bit_identical: bool = False

    @property
    def ok(self) -> bool:
        return self.case in (BIT_IDENTICAL, WITHIN_NOISE)

    def render(self) -> str:
        head = f"lock check: {self.case}"
        return "\n".join([head, *(f"  - {d}" for d in self.details)])


def _committed_files(repo: Path, ref: str, folder: str) -> list[str]:
    files = git_files(repo, ref, folder)
    if files is None:
        raise LockCheckError(f"git ls-tree {ref} failed: is {repo} a git repository at {ref}?")
    return files


def _entries(items: list[dict[str, Any]] | None) -> dict[str, str]:
    """path → content hash of a lock's deps or outs."""
    out = {}
    for item in items or []:
        digest = item.get("md5") or item.get("hash") or item.get("etag") or ""
        out[str(item["path"])] = str(digest)
    return out


def _diff(kind: str, stage: str, old: dict[str, str], new: dict[str, str]) -> list[str]:
    changed = sorted(p for p in old.keys() | new.keys() if old.get(p) != new.get(p))
    return [f"stage {stage}: {kind} {p} differs from the committed lock" for p in changed]


def _is_code(path: str) -> bool:
    """A Python file of the project (what a refactor moves), not data or params."""
    return path.endswith(".py") and path.startswith(("src/", "stages/"))


def _card_numerics(text: str | None) -> str:
    if not text:
        return "unknown"
    import json

    try:
        return str(json.loads(text).get("training", {}).get("numerics", "unknown"))
    except ValueError:
        return "unknown"


def machine_is_portable() -> bool:
    """Can this machine run the portable kernels (x86-64 with AVX2)?"""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def check_lock(repo: Path, ref: str = "HEAD") -> LockVerdict:
    """Compare the workspace's reproduced ``dvc.lock``/``metrics/`` with those at ``ref``."""
    committed_text = git_text(repo, ref, LOCK)
    if committed_text is None:
        raise LockCheckError(f"no {LOCK} at {ref}: commit one (run `dvc repro` first)")
    lock_path = repo / LOCK
    if not lock_path.is_file():
        raise LockCheckError(f"no {LOCK} in {repo}: run `dvc repro` first")
    current_text = lock_path.read_text()
    committed = yaml.safe_load(committed_text) or {}
    current = yaml.safe_load(current_text) or {}

    metric_files = sorted(
        set(_committed_files(repo, ref, METRICS_DIR))
        | {p.relative_to(repo).as_posix() for p in (repo / METRICS_DIR).rglob("*") if p.is_file()}
    )
    changed_metrics = []
    for rel in metric_files:
        old = git_bytes(repo, ref, rel)
        new = (repo / rel).read_bytes() if (repo / rel).is_file() else None
        if old != new:
            changed_metrics.append(rel)

    problems = [
        f"dvc.yaml: stage {name} imports {', '.join(d['missing'])} but does not list it in deps"
        for name, d in drift(repo).items()
        if d["missing"]
    ]
    if committed_text == current_text and not changed_metrics and not problems:
        return LockVerdict(BIT_IDENTICAL, [f"{LOCK} and {METRICS_DIR}/ match {ref} byte for byte"])

    stages_old = committed.get("stages", {})
    stages_new = current.get("stages", {})
    numeric_outs: list[str] = []
    for stage in sorted(stages_old.keys() | stages_new.keys()):
        old, new = stages_old.get(stage), stages_new.get(stage)
        if old is None or new is None:
            problems.append(f"stage {stage} is only in {'the workspace' if old is None else ref}")
            continue
        if old.get("cmd") != new.get("cmd"):
            problems.append(f"stage {stage}: cmd differs from the committed lock")
        if old.get("params") != new.get("params"):
            problems.append(f"stage {stage}: params differ from the committed lock")
        old_deps, new_deps = _entries(old.get("deps")), _entries(new.get("deps"))
        problems += _diff(
            "dep",
            stage,
            {p: h for p, h in old_deps.items() if not _is_code(p)},
            {p: h for p, h in new_deps.items() if not _is_code(p)},
        )
        outs = _diff("out", stage, _entries(old.get("outs")), _entries(new.get("outs")))
        if stage in EXACT_STAGES:
            problems += outs
        else:
            numeric_outs += outs
    code_changes = [
        line
        for stage in sorted(stages_old.keys() & stages_new.keys())
        for line in _diff(
            "dep",
            stage,
            {p: h for p, h in _entries(stages_old[stage].get("deps")).items() if _is_code(p)},
            {p: h for p, h in _entries(stages_new[stage].get("deps")).items() if _is_code(p)},
        )
    ]
    if not problems and not numeric_outs and not changed_metrics and code_changes:
        # Every output and metric is the committed one: the code changed, the result did
        # not (a refactor, a comment). Still a failure, because the committed lock is
        # stale (DVC would re-run those stages), but it says that nothing else changed.
        return LockVerdict(
            SAME_OUTPUTS,
            [
                f"every stage's outputs and {METRICS_DIR}/ match {ref} byte for byte",
                *code_changes,
                f"commit the reproduced {LOCK}: its code deps must match the code",
            ],
        )
    if problems or code_changes:
        problems = [*problems, *code_changes]
        problems.append(
            "the committed results were not produced from these inputs: run `dvc repro` "
            "and commit dvc.lock and metrics/"
        )
        return LockVerdict(INPUTS_DIFFER, problems)

    old_card = git_text(repo, ref, CARD)
    new_card_path = repo / CARD
    new_card = new_card_path.read_text() if new_card_path.is_file() else None
    numerics = (_card_numerics(old_card), _card_numerics(new_card))
    expected = numerics == ("portable-cpu", "portable-cpu") and machine_is_portable()
    details = [*numeric_outs, *(f"{m} differs" for m in changed_metrics)]
    details.append(f"numerics: committed {numerics[0]}, reproduced {numerics[1]}")
    if expected:
        details.append(
            "WARNING: both runs used portable CPU numerics on x86-64/AVX2, where the results "
            "should be bit-identical; please report this machine's CPU (lscpu)"
        )

    base_text = git_text(repo, ref, PREDICTIONS)
    head_path = repo / PREDICTIONS
    if base_text is None or not head_path.is_file():
        raise LockCheckError(f"{PREDICTIONS} missing at {ref} or in the workspace")
    try:
        cmp = compare_predictions(
            parse_predictions(base_text), parse_predictions(head_path.read_text())
        )
    except NotPairedError as exc:
        return LockVerdict(BEYOND_NOISE, [*details, f"predictions cannot be paired: {exc}"])
    summary = (
        f"Δacc {cmp.difference * 100:+.2f} pp ({cmp.base_accuracy:.4f} → "
        f"{cmp.head_accuracy:.4f}), {cmp.base_only + cmp.head_only} of {cmp.n} test images "
        f"changed correctness, McNemar p = {cmp.p_value:.3g}, "
        f"95 % CI [{cmp.ci_low * 100:+.2f}, {cmp.ci_high * 100:+.2f}] pp"
    )
    case = BEYOND_NOISE if cmp.significant else WITHIN_NOISE
    return LockVerdict(case, [summary, *details], expected_bit_identical=expected)
