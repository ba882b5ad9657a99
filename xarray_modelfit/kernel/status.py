"""The one table of per-fit status codes.

Every engine writes these codes into ``fit_status``; the result layer turns the
table into CF ``flag_values`` / ``flag_meanings`` attributes and the summary
counts. A code below :data:`FIRST_FAILURE` is a usable fit.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Status(IntEnum):
    """Outcome of one fit."""

    CONVERGED = 0
    CONVERGED_WITH_WARNINGS = 1
    MAX_ITERATIONS = 2
    SINGULAR = 3
    FAILED = 4
    SKIPPED_TOO_FEW_POINTS = 5
    SKIPPED_NO_DATA = 6
    SKIPPED_MASKED = 7


#: short CF-style name (``flag_meanings`` entry) and a sentence for each code
STATUS_TABLE: dict[Status, tuple[str, str]] = {
    Status.CONVERGED: ("converged", "the fit converged"),
    Status.CONVERGED_WITH_WARNINGS: (
        "converged_with_warnings",
        "the fit finished but the fitter or model emitted warnings",
    ),
    Status.MAX_ITERATIONS: (
        "max_iterations",
        "the iteration limit was reached before the convergence tests were met",
    ),
    Status.SINGULAR: (
        "singular_or_nonfinite",
        "the Jacobian was singular or the model gave non-finite values",
    ),
    Status.FAILED: ("failed", "the model or the fitter raised an exception"),
    Status.SKIPPED_TOO_FEW_POINTS: (
        "skipped_too_few_points",
        "fewer valid points than free parameters; not fitted",
    ),
    Status.SKIPPED_NO_DATA: ("skipped_no_data", "no valid (finite) data points; not fitted"),
    Status.SKIPPED_MASKED: ("skipped_masked", "every point is masked; not fitted"),
}

#: codes from this value upward are fits whose parameters are NaN
FIRST_FAILURE = Status.SINGULAR

#: dtype of the status arrays
STATUS_DTYPE = np.int8


def flag_attrs() -> dict[str, object]:
    """CF attributes for the ``fit_status`` variable."""
    return {
        "flag_values": np.array([int(s) for s in Status], dtype=STATUS_DTYPE),
        "flag_meanings": " ".join(STATUS_TABLE[s][0] for s in Status),
        "long_name": "fit status",
    }


def describe(code: int) -> str:
    """Sentence for a status code."""
    return STATUS_TABLE[Status(int(code))][1]
