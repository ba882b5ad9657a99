"""Fit astropy models along named dims of xarray data, fast and in parallel.

>>> import xarray_modelfit  # registers the ``.modelfit`` accessor
"""

from xarray_modelfit import accessor as _accessor  # noqa: F401  (registers the accessor)
from xarray_modelfit.coords import TimeAxis
from xarray_modelfit.errors import ModelFitError, ModelFitTypeError, ModelFitWarning
from xarray_modelfit.evaluate import evaluate, residuals, to_model
from xarray_modelfit.fit import modelfit
from xarray_modelfit.io import load_result, open_cube, save_result
from xarray_modelfit.io_fits import from_wcs, open_fits, wcs_of
from xarray_modelfit.kernel.guess import peak_stats, register_guess
from xarray_modelfit.kernel.status import Status
from xarray_modelfit.report import failures, summary
from xarray_modelfit.store import modelfit_to_zarr

__all__ = [
    "ModelFitError",
    "ModelFitTypeError",
    "ModelFitWarning",
    "Status",
    "TimeAxis",
    "evaluate",
    "failures",
    "from_wcs",
    "load_result",
    "modelfit",
    "modelfit_to_zarr",
    "open_cube",
    "open_fits",
    "peak_stats",
    "register_guess",
    "residuals",
    "save_result",
    "summary",
    "to_model",
    "wcs_of",
]
__version__ = "0.1.0"
