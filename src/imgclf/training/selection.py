"""Which epoch's weights ``train`` keeps, and when it stops early: the rule in one place.

Pure Python (no torch), so the rule is tested by replaying recorded validation curves
(tests/unit/test_selection.py) rather than by training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from imgclf.params import Params


def warmup_epochs(params: Params) -> int:
    """Epochs that can neither be selected nor count towards early stopping.

    Why (issue 10's run, replayed in tests/unit/test_selection.py): with 2-3 optimizer
    steps per epoch, batch norm and the one-cycle warm-up, validation loss can be lowest
    in epoch 1 *because* the untrained model predicts near-uniform probabilities;
    selecting on val loss from epoch 1 restored that untrained model (test accuracy
    0.50 on a 2-class set, while later epochs reached val accuracy 0.90). So the
    first ``train.select_after`` fraction of ``epochs`` (0.3 = one-cycle's warm-up) is
    skipped; the last epoch is always eligible.
    """
    return min(params.epochs - 1, int(params.train.select_after * params.epochs))


def selection_key(val_accuracy: float, val_loss: float) -> tuple[float, float]:
    """Higher is better: validation accuracy first, lower validation loss as the tie-break.

    Accuracy is what the user is scored on; loss alone rewards timid, under-trained
    models (low confidence, low loss) and on a small validation set it jumps around.
    Accuracy is rounded so that float noise does not hide a tie.
    """
    return (round(val_accuracy, 9), -val_loss)


@dataclass
class EpochSelector:
    """Which epoch to keep, and when to stop: the rule in one place, testable without torch.

    Epochs ``1..warmup`` are never kept and do not count towards ``patience``; after
    that the best :func:`selection_key` wins and training stops ``patience`` epochs
    after the last improvement.
    """

    warmup: int
    patience: int
    best_epoch: int = 0
    best_key: tuple[float, float] = (-math.inf, -math.inf)

    def offer(self, epoch: int, val_accuracy: float, val_loss: float) -> bool:
        """Record epoch ``epoch`` (1-based); True if it is the new best (keep its weights)."""
        if epoch <= self.warmup:
            return False
        key = selection_key(val_accuracy, val_loss)
        if key > self.best_key:
            self.best_epoch, self.best_key = epoch, key
            return True
        return False

    def should_stop(self, epoch: int) -> bool:
        return self.best_epoch > 0 and epoch - self.best_epoch >= self.patience
