"""Best-epoch selection (issue 10): it must not hand back an untrained model."""

from __future__ import annotations

from imgclf.params import validate_params
from imgclf.training.selection import EpochSelector, warmup_epochs

# The issue's run, as logged: val loss lowest in epoch 1 (the untrained model predicts
# ~0.5 everywhere), jumping in the first epochs, accuracy 0.90 only at epochs 10-11.
ISSUE_CURVE = [
    (0.50, 0.69), (0.50, 1.90), (0.50, 3.10), (0.55, 2.40), (0.60, 1.50), (0.50, 2.70),
    (0.65, 1.30), (0.70, 0.95), (0.80, 0.80), (0.90, 0.72), (0.90, 0.70),
]  # fmt: skip


def replay(curve: list[tuple[float, float]], warmup: int, patience: int) -> tuple[int, int]:
    """(kept epoch, epochs run) that train's :class:`EpochSelector` gives for a curve."""
    selector = EpochSelector(warmup, patience)
    for epoch, (accuracy, loss) in enumerate(curve, start=1):
        selector.offer(epoch, accuracy, loss)
        if selector.should_stop(epoch):
            return selector.best_epoch, epoch
    return selector.best_epoch, len(curve)


def _old_rule(curve: list[tuple[float, float]], patience: int) -> tuple[int, int]:
    """What train did before: lowest val loss from epoch 1, patience on val loss."""
    best, best_loss = 0, float("inf")
    for epoch, (_, loss) in enumerate(curve, start=1):
        if loss < best_loss - 1e-6:
            best, best_loss = epoch, loss
        elif epoch - best >= patience:
            return best, epoch
    return best, len(curve)


def test_the_issue_curve_old_rule_keeps_epoch_1_new_rule_does_not() -> None:
    assert _old_rule(ISSUE_CURVE, patience=10) == (1, 11)  # what the issue saw
    warmup = warmup_epochs(validate_params({"epochs": 30}))
    assert warmup == 9
    kept, run = replay(ISSUE_CURVE, warmup=warmup, patience=10)
    assert kept == 11 and ISSUE_CURVE[kept - 1][0] == 0.90 and run == 11


def test_accuracy_first_loss_breaks_ties_and_patience_starts_after_warmup() -> None:
    curve = [(0.2, 0.1)] * 3 + [(0.9, 0.5), (0.9, 0.3), (0.9, 0.4), (0.8, 0.1)] + [(0.5, 1.0)] * 5
    assert replay(curve, warmup=3, patience=3) == (5, 8)
    # Nothing after the warm-up improves on the first eligible epoch: it is kept, never 1.
    assert replay([(0.9, 0.1)] + [(0.4, 2.0)] * 20, warmup=2, patience=4) == (3, 7)


def test_the_last_epoch_is_always_eligible() -> None:
    for epochs in (1, 2, 3, 10):
        params = validate_params({"epochs": epochs, "train": {"select_after": 0.9}})
        assert warmup_epochs(params) < epochs
