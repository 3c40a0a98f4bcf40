"""The test helpers' own rules (docs/testing.md): a missing tool skips locally and fails in CI."""

from __future__ import annotations

import pytest

from tests.support import in_ci, missing_tool, wait_until


@pytest.mark.parametrize(
    ("ci", "outcome"),
    [("true", pytest.fail.Exception), ("1", pytest.fail.Exception),
     ("", pytest.skip.Exception), ("false", pytest.skip.Exception)],
)  # fmt: skip
def test_a_missing_tool_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    assert in_ci() is (outcome is pytest.fail.Exception)
    with pytest.raises(outcome, match="qemu-x86_64 not found"):
        missing_tool("qemu-x86_64 not found")


def test_wait_until_polls_until_the_condition_and_fails_at_the_deadline() -> None:
    calls = iter(range(100))
    wait_until(lambda: next(calls) == 3, timeout=5, what="three", every=0.001)
    assert next(calls) == 4
    with pytest.raises(AssertionError, match="not ready after 0 s"):
        wait_until(lambda: False, timeout=0.05, what="ready", every=0.01)
