"""The ``.modelfit`` accessor: one-line methods over the public functions."""

from __future__ import annotations

import xarray as xr

from xarray_modelfit import evaluate as _evaluate
from xarray_modelfit import fit as _fit
from xarray_modelfit import report as _report


class _Base:
    def __init__(self, obj):
        self._obj = obj

    def __call__(self, model, dims, **kwargs) -> xr.Dataset:
        """Fit ``model`` along ``dims``; see :func:`xarray_modelfit.modelfit`."""
        return _fit.modelfit(self._obj, model, dims, **kwargs)


@xr.register_dataarray_accessor("modelfit")
class DataArrayModelFit(_Base):
    """``da.modelfit(model, dims, ...)`` fits; ``da.modelfit.plot_fit`` plots."""

    __call__ = _Base.__call__

    def plot_fit(self, result: xr.Dataset, **kwargs):
        """Data, fit, components and residuals at one position; see :func:`xarray_modelfit.plot.plot_fit`."""
        from xarray_modelfit.plot import plot_fit

        return plot_fit(self._obj, result, **kwargs)


@xr.register_dataset_accessor("modelfit")
class DatasetModelFit(_Base):
    """``ds.modelfit(...)`` fits every variable; on a result: to_model, evaluate, summary."""

    def to_model(self, prefix: str = "", candidate: int | None = None):
        """Fitted astropy model; see :func:`xarray_modelfit.to_model`."""
        return _evaluate.to_model(self._obj, prefix=prefix, candidate=candidate)

    def evaluate(self, da: xr.DataArray, prefix: str = "") -> xr.DataArray:
        """Fitted model on ``da``'s grid; see :func:`xarray_modelfit.evaluate`."""
        return _evaluate.evaluate(self._obj, da, prefix=prefix)

    def residuals(self, da: xr.DataArray, prefix: str = "") -> xr.DataArray:
        """``da`` minus the fitted model; see :func:`xarray_modelfit.residuals`."""
        return _evaluate.residuals(self._obj, da, prefix=prefix)

    def summary(self, n_worst: int = 5, prefix: str | None = None) -> str:
        """Text summary; see :func:`xarray_modelfit.summary`."""
        return _report.summary(self._obj, n_worst=n_worst, prefix=prefix)

    def plot_maps(self, params=None, **kwargs):
        """Parameter maps; see :func:`xarray_modelfit.plot.plot_maps`."""
        from xarray_modelfit.plot import plot_maps

        return plot_maps(self._obj, params, **kwargs)

    def failures(self, prefix: str | None = None):
        """Failed and skipped fits; see :func:`xarray_modelfit.failures`."""
        return _report.failures(self._obj, prefix=prefix)
