"""The release gate's paired decision and the serving settings it relies on, without git.

The full gate (tags, branches, stage order) runs in tests/release on a real repository;
here the verdicts themselves, on predictions files written for the purpose.
"""

from __future__ import annotations

from imgclf.release.gate import NOT_COMPARABLE, PASS, REFUSED, compare
from imgclf.serving.settings import Settings


def csv(correct: list[bool], prefix: str = "img") -> str:
    rows = ["path,actual,predicted,correct"]
    for i, ok in enumerate(correct):
        rows.append(f"{prefix}/{i}.png,{i % 3},{i % 3 if ok else (i + 1) % 3},{int(ok)}")
    return "\n".join(rows) + "\n"


def test_likely_worse_is_refused_within_noise_and_better_pass() -> None:
    base = csv([True] * 200)
    verdict, reason, result = compare(base, csv([True] * 170 + [False] * 30))
    assert verdict == REFUSED and reason.startswith("likely worse") and result is not None
    assert "100.00% → 85.00%" in reason
    assert compare(base, csv([True] * 199 + [False]))[0] == PASS  # one image: noise
    assert compare(csv([True] * 170 + [False] * 30), base)[:2] == (
        PASS, "likely better against the version in the stage now (accuracy 85.00% → 100.00%)"
    )  # fmt: skip
    assert compare(base, base)[1].startswith("no change")


def test_another_test_split_is_not_comparable_unless_overridden() -> None:
    base, other = csv([True] * 50), csv([True] * 50, prefix="new")
    verdict, reason, result = compare(base, other)
    assert verdict == NOT_COMPARABLE and result is None
    assert "different test split (data change)" in reason and "50 samples only in base" in reason
    verdict, reason, _ = compare(base, other, allow_data_change=True)
    assert verdict == PASS and "allow_data_change override" in reason
    assert compare(None, base)[0] == NOT_COMPARABLE


def test_release_version_and_stage_come_from_the_environment() -> None:
    s = Settings.from_env({"IMGCLF_MODEL_VERSION": " v1.2.0 ", "IMGCLF_MODEL_STAGE": "prod"})
    assert (s.model_version, s.model_stage) == ("v1.2.0", "prod")
    empty = Settings.from_env({"IMGCLF_MODEL_VERSION": "", "IMGCLF_MODEL_STAGE": ""})
    assert (empty.model_version, empty.model_stage) == (None, None)
