"""The loop engine: one astropy fitter call per fit.

Exact astropy semantics for any fitter (LevMar, TRF, DogBox, LM, SLSQP,
Simplex, Linear, or a user's own): the model's parameters are reset to the
fit's initial values and bounds, the fitter is called with ``inplace=True`` on
the fit's valid points, warnings are recorded, and any exception becomes that
fit's status instead of aborting the run.
"""

from __future__ import annotations

import copy
import traceback
import warnings

import numpy as np

from xarray_modelfit.kernel import diagnostics
from xarray_modelfit.kernel.block import BlockResult, EngineSetup, FitBlock
from xarray_modelfit.kernel.status import Status


def _free_indices(model) -> list[int]:
    return [
        i
        for i, name in enumerate(model.param_names)
        if not model.fixed[name] and not model.tied[name]
    ]


def _outcome(fitter, caught: list) -> Status:
    info = getattr(fitter, "fit_info", None)
    if isinstance(info, dict):
        # scipy.optimize.least_squares: status 0 is "max_nfev exceeded"
        if info.get("status", None) == 0 and "nfev" in info:
            return Status.MAX_ITERATIONS
        # LevMarLSQFitter (scipy.optimize.leastsq): ierr 5 is "maxfev reached"
        if info.get("ierr", None) == 5:
            return Status.MAX_ITERATIONS
    return Status.CONVERGED_WITH_WARNINGS if caught else Status.CONVERGED


def _nfev(fitter) -> int:
    info = getattr(fitter, "fit_info", None)
    if isinstance(info, dict):
        for key in ("nfev", "numiter", "nit"):
            if info.get(key) is not None:
                return int(info[key])
    return 0


def rank_deficient(jac: np.ndarray) -> bool:
    """Whether a Jacobian has (numerically) dependent columns.

    Columns are normalised first, so the test does not depend on the scale of
    the parameters; a column of zeros (a parameter that changes nothing) counts
    as dependent. Same threshold as astropy's covariance: ``eps * max(shape) * s[0]``.
    """
    jac = np.asarray(jac, dtype=float)
    if jac.ndim != 2 or jac.shape[1] == 0:
        return False
    norms = np.linalg.norm(jac, axis=0)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        return True
    s = np.linalg.svd(jac / norms, compute_uv=False)
    return bool(s[-1] <= np.finfo(float).eps * max(jac.shape) * s[0])


def _singular(fitter, model, x, params, free, weights) -> bool:
    """Rank test at the solution: the fitter's own Jacobian, else the model's ``fit_deriv``.

    scipy's least_squares reports its Jacobian; MINPACK's (LevMarLSQFitter) does
    not, so there the analytic derivatives are used when the model has them.
    """
    info = getattr(fitter, "fit_info", None)
    if isinstance(info, dict) and info.get("jac") is not None:
        return rank_deficient(info["jac"])
    if type(fitter).__name__ != "LevMarLSQFitter" or model.fit_deriv is None:
        return False
    try:
        derivs = model.fit_deriv(*x, *params)
        jac = np.array([np.broadcast_to(d, x[0].shape) for d in derivs], dtype=float)
        if model.col_fit_deriv is False:
            jac = jac.T
        jac = jac[free].T
        if weights is not None:
            jac = jac * weights[:, None]
    except Exception:
        return False
    return rank_deficient(jac)


def _covariance(fitter, fitted, old_cov) -> np.ndarray | None:
    """The fitter's covariance: ``fit_info["param_cov"]`` of the non-linear fitters, or the
    ``cov_matrix`` that ``LinearLSQFitter(calc_uncertainties=True)`` puts on the model."""
    info = getattr(fitter, "fit_info", None)
    if isinstance(info, dict) and info.get("param_cov") is not None:
        return np.asarray(info["param_cov"], dtype=float)
    cov = getattr(fitted, "cov_matrix", None)
    return None if cov is None or cov is old_cov else np.asarray(cov.cov_matrix, dtype=float)


def fit_loop(block: FitBlock, setup: EngineSetup) -> BlockResult:
    """Fit every active row of ``block`` with one call of ``setup.fitter`` each."""
    from astropy.modeling.fitting import NonFiniteValueError

    model = setup.model.copy()
    # a fitter keeps per-call state (fit_info) that it reads back after the fit:
    # each block gets its own copy so threads never share one
    fitter = copy.deepcopy(setup.fitter)
    names = model.param_names
    result = BlockResult.empty(block.n, len(names), setup.covariance)
    for i in np.flatnonzero(block.active):
        valid = block.valid[i]
        x = tuple(xx[valid] for xx in block.x_of(i))
        y = block.y[i, valid]
        w = None if block.weights is None else block.weights[i, valid]
        pinned = []
        for j, name in enumerate(names):
            param = getattr(model, name)
            param.value = block.p0[i, j]
            lo, hi = block.lower[i, j], block.upper[i, j]
            if lo == hi and not param.fixed and not param.tied:
                # equal bounds pin the parameter: fixed for this fit (scipy rejects lo == hi)
                param.fixed, lo, hi = True, -np.inf, np.inf
                pinned.append(param)
            param.bounds = (None if np.isneginf(lo) else lo, None if np.isposinf(hi) else hi)
        free = _free_indices(model)
        old_cov = getattr(model, "cov_matrix", None)  # a fitter that computes one sets a new one
        error, caught, fitted = "", [], None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                kwargs = {} if w is None else {"weights": w}
                fitted = fitter(model, *x, y, inplace=True, **kwargs, **setup.fitter_kwargs)
        except NonFiniteValueError as exc:
            error, status = traceback.format_exc(), Status.SINGULAR
            result.messages[int(i)] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            error, status = traceback.format_exc(), Status.FAILED
            result.messages[int(i)] = f"{type(exc).__name__}: {exc}"
        else:
            status = _outcome(fitter, caught)
            params = np.array([float(np.squeeze(getattr(fitted, n).value)) for n in names])
            resid = fitted.evaluate(*x, *params) - y
            if w is not None:
                resid = resid * w
            chi2 = float(np.sum(resid**2))
            if not (np.all(np.isfinite(params)) and np.isfinite(chi2)):
                status = Status.SINGULAR
            elif _singular(fitter, fitted, x, params, free, w):
                status = Status.SINGULAR
                result.messages[int(i)] = "the Jacobian is rank-deficient at the solution"
            result.params[i] = params
            result.chi2[i] = chi2
            result.nfev[i] = _nfev(fitter)
            cov = _covariance(fitter, fitted, old_cov)
            if cov is not None and cov.shape == (len(free), len(free)):
                result.stderr[i, free] = np.sqrt(np.abs(np.diag(cov)))
                if result.covariance is not None:
                    result.covariance[i][np.ix_(free, free)] = cov
            if caught:
                result.messages[int(i)] = "; ".join(str(c.message) for c in caught)
        for param in pinned:
            param.fixed = False
        result.status[i] = status
        if diagnostics.selected(setup.diagnostics, failed=bool(error), warned=bool(caught)):
            diagnostics.write(
                setup,
                block.index[i],
                error=error,
                warnings_text="".join(f"{c}\n" for c in caught),
                world=x,
                data=y,
                weights=w,
                model=fitted,
            )
    return result
