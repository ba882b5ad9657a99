"""The shared contract of all engines: one block of fits in, plain arrays out.

An engine is a function ``fit(block: FitBlock, setup: EngineSetup) -> BlockResult``.
``FitBlock`` holds ``n`` independent fits that share a model; every array is
already float64 and flattened to ``(n, m)`` points. Nothing here knows about
xarray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xarray_modelfit.kernel.status import STATUS_DTYPE


@dataclass
class FitBlock:
    """``n`` fits of ``m`` points each.

    Attributes
    ----------
    x : tuple of ndarray
        One array per model input, each of shape ``(n, m)`` or ``(1, m)``
        (the same world grid for every fit), float64, unitless (already in the
        model's input units).
    y : ndarray, shape (n, m)
        Data, float64. Invalid points hold arbitrary values (possibly NaN).
    valid : ndarray of bool, shape (n, m)
        Points that take part in each fit (finite data, finite non-zero
        weight, finite world coordinate, not masked).
    weights : ndarray, shape (n, m), or None
        Astropy's convention: 1/sigma, multiplies the residual.
    p0 : ndarray, shape (n, P)
        Initial value of every model parameter (``model.param_names`` order),
        fixed and tied ones included.
    lower, upper : ndarray, shape (n, P)
        Bounds per fit and parameter; ``-inf`` / ``inf`` when unbounded.
    active : ndarray of bool, shape (n,)
        Fits to run. The others are already decided (skipped) and must be left
        untouched in the result.
    index : ndarray of int, shape (n, k)
        Absolute index of every fit along the iterated dims (for diagnostics
        folder names).
    """

    x: tuple[np.ndarray, ...]
    y: np.ndarray
    valid: np.ndarray
    weights: np.ndarray | None
    p0: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    active: np.ndarray
    index: np.ndarray

    @property
    def n(self) -> int:
        return self.y.shape[0]

    def x_of(self, i: int) -> tuple[np.ndarray, ...]:
        """World inputs of fit ``i`` (all points, shape ``(m,)`` each)."""
        return tuple(xx[i] if xx.shape[0] > 1 else xx[0] for xx in self.x)


@dataclass
class BlockResult:
    """Per-fit outputs of an engine. Arrays have a leading axis of length ``n``.

    ``params`` and ``stderr`` are in ``model.param_names`` order; fixed and
    tied parameters get their (fixed or tied) value and a NaN stderr. Fits that
    are not active keep NaN parameters and the status they came in with.
    """

    params: np.ndarray
    stderr: np.ndarray
    status: np.ndarray
    chi2: np.ndarray
    nfev: np.ndarray
    covariance: np.ndarray | None = None  # (n, P, P) when requested
    messages: dict[int, str] = field(default_factory=dict)  # fit row -> message

    @classmethod
    def empty(cls, n: int, n_params: int, covariance: bool = False) -> BlockResult:
        nan = np.full((n, n_params), np.nan)
        return cls(
            params=nan.copy(),
            stderr=nan.copy(),
            status=np.zeros(n, dtype=STATUS_DTYPE),
            chi2=np.full(n, np.nan),
            nfev=np.zeros(n, dtype=np.int64),
            covariance=np.full((n, n_params, n_params), np.nan) if covariance else None,
        )


@dataclass(frozen=True)
class EngineSetup:
    """What an engine needs besides the data: model, fitter and options.

    The model is unitless (units were stripped by the xarray layer, as astropy's
    ``without_units_for_data`` does) and its parameters are scalars; per-fit
    initial values come in ``FitBlock.p0``.
    """

    model: Any
    fitter: Any
    fitter_kwargs: dict[str, Any]
    covariance: bool = False
    diagnostics: str | None = None
    diagnostics_path: str | None = None
    diagnostics_callable: Any = None
    index_width: int = 1


def free_mask(model: Any) -> np.ndarray:
    """Which of ``model.param_names`` the fit varies: neither fixed nor tied."""
    return np.array([not model.fixed[n] and not model.tied[n] for n in model.param_names], bool)
