"""What every ``stages/*.py`` entry point shares: validated params and clean failures.

A stage that fails on bad input prints one ``error:`` line that says what is
wrong and where, exits non-zero, and writes nothing (outputs are written to a
temporary name and renamed only on success).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from imgclf.errors import (
    ImageError,
    ModelIntegrityError,
    ModelNotFoundError,
    PrepareError,
    WeightsError,
)
from imgclf.params import Params, ParamsError, load_params

USER_ERRORS: tuple[type[Exception], ...] = (
    ParamsError,
    PrepareError,
    ImageError,
    ModelNotFoundError,
    ModelIntegrityError,
    WeightsError,
)


def run_stage(name: str, body: Callable[[Params], object]) -> None:
    """Validate the *whole* params.yaml, run ``body``, turn known errors into exit code 2."""
    try:
        body(load_params())
    except USER_ERRORS as exc:
        print(f"error: {name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
