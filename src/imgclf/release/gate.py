"""The promotion gate: may this stage tag stand? Run by CI on every pushed registry tag.

Why a function and not shell: the rules are the release policy, so they are tested like
code. A promotion tag (``imgclf#prod#7``) passes when

* its commit is on ``main`` (a branch's model is never released);
* its stage comes in order (prod only for a version that was in staging);
* the paired comparison (:mod:`imgclf.evaluation.paired_test`, McNemar + bootstrap on the
  same test images) does not find it *likely worse* than the version in that stage now.

A different test split (a data change: other images or labels) cannot be compared pair
by pair: that is "not comparable" and passes only with an explicit override. Putting
back a version that held the stage before (a rollback) is not compared. A version tag
(``imgclf@v1.2.0``) is only checked for being on ``main``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from imgclf.evaluation.paired_test import (
    NotPairedError,
    PairedComparison,
    compare_predictions,
    parse_predictions,
)
from imgclf.pipeline.git import commit_of, git_run
from imgclf.pipeline.outputs import PREDICTIONS
from imgclf.release.registry import (
    Promotion,
    ReleaseError,
    artifact_name,
    history,
    occupant,
    order_problem,
    versions,
)
from imgclf.report.revisions import read_at

PASS, REFUSED, NOT_COMPARABLE = "pass", "refused", "not-comparable"


@dataclass
class GateResult:
    """The gate's verdict on one tag, with everything the job summary says."""

    tag: str
    verdict: str = PASS
    reasons: list[str] = field(default_factory=list)
    stage: str = ""
    version: str = ""
    commit: str = ""
    incumbent: Promotion | None = None
    comparison: PairedComparison | None = None

    @property
    def ok(self) -> bool:
        return self.verdict == PASS

    def refuse(self, verdict: str, reason: str) -> GateResult:
        self.verdict = verdict
        self.reasons.append(reason)
        return self

    def markdown(self) -> str:
        """The job summary / PR comment: verdict first, then the numbers behind it."""
        icon = {PASS: "✅", REFUSED: "⛔", NOT_COMPARABLE: "⚠️"}[self.verdict]
        what = f"`{self.version}` → **{self.stage}**" if self.stage else f"`{self.version}`"
        lines = [f"## {icon} Release gate: {self.verdict} ({what})", "",
                 f"Tag `{self.tag}` on commit `{self.commit[:12]}`.", ""]  # fmt: skip
        lines += [f"- {r}" for r in self.reasons]
        c = self.comparison
        if c is not None and self.incumbent is not None:
            lines += [
                "", f"| | {self.incumbent.version} (in {self.stage} now) | {self.version} |",
                "|---|---|---|",
                f"| test accuracy | {c.base_accuracy:.2%} | {c.head_accuracy:.2%} |",
                "", f"Paired on {c.n} test images: {c.base_only} right only in "
                f"{self.incumbent.version}, {c.head_only} right only in {self.version}; "
                f"McNemar p = {c.p_value:.3g}; Δ accuracy 95 % CI "
                f"[{c.ci_low:+.2%}, {c.ci_high:+.2%}] → **{_word(c)}**.",
            ]  # fmt: skip
        if self.verdict == NOT_COMPARABLE:
            lines += [
                "",
                "To promote anyway (the test data changed on purpose), run the `release` "
                "workflow by hand with this tag and `allow_data_change`.",
            ]
        return "\n".join(lines) + "\n"


def _word(c: PairedComparison) -> str:
    if c.verdict != "likely real":
        return c.verdict
    return "likely better" if c.difference > 0 else "likely worse"


def compare(
    incumbent_csv: str | None, candidate_csv: str | None, allow_data_change: bool = False
) -> tuple[str, str, PairedComparison | None]:
    """The paired decision alone: (verdict, reason, comparison) for two predictions files."""
    if incumbent_csv is None or candidate_csv is None:
        which = "the version in the stage" if incumbent_csv is None else "the candidate"
        reason = f"{PREDICTIONS} is missing at {which}: no paired comparison possible"
        return (PASS if allow_data_change else NOT_COMPARABLE), reason, None
    try:
        result = compare_predictions(
            parse_predictions(incumbent_csv), parse_predictions(candidate_csv)
        )
    except NotPairedError as exc:
        if allow_data_change:
            return PASS, f"not comparable ({exc}); passed by the allow_data_change override", None
        return NOT_COMPARABLE, f"not comparable: a different test split (data change): {exc}", None
    delta = f"accuracy {result.base_accuracy:.2%} → {result.head_accuracy:.2%}"
    if result.significant and result.difference < 0:
        return REFUSED, f"likely worse than the version in the stage now ({delta})", result
    return PASS, f"{_word(result)} against the version in the stage now ({delta})", result


def on_branch(root: Path, commit: str, branch: str) -> bool | None:
    """Whether ``commit`` is in ``branch``'s history; None if the branch is unknown."""
    if commit_of(root, branch) is None:
        return None
    return git_run(root, "merge-base", "--is-ancestor", commit, branch).returncode == 0


def check(
    root: Path, tag: str, main: str = "origin/main", allow_data_change: bool = False
) -> GateResult:
    """The gate's verdict on a registry tag that exists in ``root``."""
    from gto.api import parse_tag
    from gto.exceptions import GTOException

    result = GateResult(tag=tag)
    try:
        parsed = parse_tag(tag)
    except GTOException:
        return result.refuse(REFUSED, f"{tag!r} is not a registry tag (GTO format)")
    name = artifact_name(root)
    if parsed.get("name") != name:
        return result.refuse(REFUSED, f"{tag!r} is not about this repo's artifact {name!r}")
    commit = commit_of(root, tag)
    if commit is None:
        raise ReleaseError(f"tag {tag!r} is not in this clone: git fetch --tags")
    result.commit = commit
    on_main = on_branch(root, commit, main)
    if on_main is None:
        raise ReleaseError(f"unknown branch {main!r}: fetch it (fetch-depth: 0)")
    if "stage" not in parsed:  # a version tag (or its removal): only the branch rule
        result.version = str(parsed.get("version", ""))
        if not on_main:
            result.refuse(REFUSED, f"commit {commit[:12]} is not on {main}")
        else:
            result.reasons.append(f"commit is on {main}")
        return result
    stage, counter = str(parsed["stage"]), int(parsed.get("counter", 0))
    result.stage = stage
    events = history(root, name)
    this = next((p for p in events.get(stage, []) if p.tag == tag), None)
    if this is None:
        return result.refuse(REFUSED, f"{tag!r} names no registered version of {name}")
    result.version = this.version
    if this.removed:
        result.reasons.append(f"{this.version} taken out of {stage}: nothing to compare")
        return result
    if not on_main:
        return result.refuse(REFUSED, f"commit {commit[:12]} is not on {main}")
    result.reasons.append(f"commit is on {main}")
    if this.version not in {v.version for v in versions(root, name)}:
        return result.refuse(REFUSED, f"{this.version} is not a registered version")
    problem = order_problem(events, this.version, stage, before=counter)
    if problem:
        return result.refuse(REFUSED, f"out of order: {problem}")
    earlier = events.get(stage, [])
    result.incumbent = incumbent = occupant(earlier, before=counter)
    if incumbent is None:
        result.reasons.append(f"first version in {stage}: nothing to compare with")
        return result
    if incumbent.commit == commit:
        result.reasons.append(f"{stage} already serves this commit ({incumbent.version})")
        return result
    if any(p.version == this.version and p.counter < counter for p in earlier):
        result.reasons.append(
            f"rollback: {this.version} was in {stage} before (now {incumbent.version}); "
            "not compared"
        )
        return result
    verdict, reason, comparison = compare(
        read_at(root, PREDICTIONS, incumbent.commit),
        read_at(root, PREDICTIONS, commit),
        allow_data_change,
    )
    result.comparison = comparison
    if verdict == PASS:
        result.reasons.append(reason)
        return result
    return result.refuse(verdict, reason)
