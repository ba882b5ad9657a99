"""Diagnostic folders, astropy's contract: one folder per selected fit.

A folder is named by the fit's zero-padded indices along the iterated dims
joined with ``_`` and holds ``error.log`` and/or ``warn.log``; the user's
``diagnostics_callable(path, world, data, weights, model, fitter_kwargs)`` is
called there. A callable that raises is reported in ``callable_error.log``
instead of aborting the run.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import numpy as np

MODES = (None, "error", "error+warn", "all")


def selected(mode: str | None, failed: bool, warned: bool) -> bool:
    """Whether a fit gets a folder under ``mode``."""
    if mode is None:
        return False
    if mode == "all":
        return True
    if failed:
        return True
    return mode == "error+warn" and warned


def folder_name(index: np.ndarray, width: int) -> str:
    return "_".join(f"{int(i):0{width}d}" for i in index)


def write(
    setup,
    index: np.ndarray,
    *,
    error: str = "",
    warnings_text: str = "",
    world=(),
    data=None,
    weights=None,
    model=None,
) -> None:
    """Write one fit's folder and call the user's callable there."""
    folder = Path(setup.diagnostics_path) / folder_name(index, setup.index_width)
    folder.mkdir(parents=True, exist_ok=True)
    if error:
        (folder / "error.log").write_text(error)
    if warnings_text:
        (folder / "warn.log").write_text(warnings_text)
    if setup.diagnostics_callable is not None:
        try:
            setup.diagnostics_callable(
                folder, world, data, weights, model, dict(setup.fitter_kwargs)
            )
        except Exception:
            (folder / "callable_error.log").write_text(traceback.format_exc())
