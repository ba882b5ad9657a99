"""Exceptions and the warning helper of xarray-modelfit."""

from __future__ import annotations

import os
import sys
import warnings


class ModelFitError(ValueError):
    """Invalid input to a fit: raised before any fitting starts."""


class ModelFitTypeError(ModelFitError, TypeError):
    """An argument of the wrong type."""


class ModelFitWarning(UserWarning):
    """Something the user should know about a fit that still ran."""


_PACKAGE_DIR = os.path.dirname(__file__)


def warn(message: str, category: type[Warning] = ModelFitWarning) -> None:
    """Emit a warning pointing at the first frame outside this package."""
    frame = sys._getframe(1)
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
