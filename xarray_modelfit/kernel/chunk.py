"""The chunk kernel that ``xr.apply_ufunc`` maps over the data: no xarray here.

:func:`fit_chunk` receives one chunk of every input with the fitting axes last,
flattens it into a :class:`FitBlock` of ``n`` fits of ``m`` points, decides
which fits are skipped, runs the plan's engine on the rest and packs the
per-fit outputs into one float64 array along a trailing axis, laid out by
:class:`OutputLayout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xarray_modelfit.kernel.block import BlockResult, EngineSetup, FitBlock, free_mask
from xarray_modelfit.kernel.status import Status


@dataclass(frozen=True)
class OutputLayout:
    """Positions of the per-fit outputs along the kernel's output axis."""

    n_params: int
    covariance: bool = False

    SCALARS = (
        "chi2", "npoints", "nfev", "status", "dof", "redchi2", "aic", "bic", "rsquared", "at_bound",
    )  # fmt: skip

    @property
    def size(self) -> int:
        p = self.n_params
        return 2 * p + len(self.SCALARS) + (p * p if self.covariance else 0)

    def slice_of(self, name: str) -> slice | int:
        p = self.n_params
        if name == "params":
            return slice(0, p)
        if name == "stderr":
            return slice(p, 2 * p)
        if name == "covariance":
            start = 2 * p + len(self.SCALARS)
            return slice(start, start + p * p)
        return 2 * p + self.SCALARS.index(name)


@dataclass(frozen=True)
class FitPlan:
    """Everything a worker needs to fit a chunk; picklable, no xarray.

    ``engine`` names a function in :data:`ENGINES`; ``n_fit_axes`` is the
    number of trailing fitting axes of the data; ``n_free`` the number of free
    parameters (fits with fewer valid points are skipped).
    """

    engine: str
    setup: EngineSetup
    n_fit_axes: int
    n_free: int
    layout: OutputLayout
    skipna: bool = True


def _engine(name: str):
    if name == "loop":
        from xarray_modelfit.kernel.loop import fit_loop

        return fit_loop
    if name == "batched":
        from xarray_modelfit.kernel.batched import fit_batched

        return fit_batched
    if name == "linear":
        from xarray_modelfit.kernel.linear import fit_linear

        return fit_linear
    raise ValueError(f"unknown engine {name!r}")


def _flat(arr: np.ndarray, lead: tuple[int, ...], tail: tuple[int, ...]) -> np.ndarray:
    """Broadcast ``arr`` to ``lead + tail`` and flatten to ``(n, prod(tail))``."""
    arr = np.broadcast_to(arr, lead + tail)
    return arr.reshape(
        (int(np.prod(lead, dtype=np.int64)),) + (int(np.prod(tail, dtype=np.int64)),)
    )


def build_block(
    data, weights, mask, world, p0, lower, upper, position, *, plan: FitPlan
) -> tuple[FitBlock, np.ndarray, tuple[int, ...]]:
    """Flatten one chunk into a FitBlock; also returns skip statuses and the lead shape."""
    data = np.asarray(data)
    k = plan.n_fit_axes
    lead, tail = data.shape[: data.ndim - k], data.shape[data.ndim - k :]
    n = int(np.prod(lead, dtype=np.int64))
    y = _flat(data, lead, tail).astype(np.float64, copy=False)

    world = np.asarray(world, dtype=np.float64)
    n_inputs = world.shape[-k - 1]
    x = []
    for j in range(n_inputs):
        wj = world[..., j, :, :] if k == 2 else world[..., j, :]
        wlead = wj.shape[: wj.ndim - k]
        if int(np.prod(wlead, dtype=np.int64)) == 1:
            x.append(wj.reshape(1, -1))
        else:
            x.append(_flat(wj, lead, tail))

    finite_x = np.ones((1, y.shape[1]), dtype=bool)
    for xx in x:
        finite_x = finite_x & np.isfinite(xx)
    valid = np.isfinite(y) & finite_x if plan.skipna else np.broadcast_to(finite_x, y.shape).copy()

    w = None
    weights = np.asarray(weights)
    if weights.ndim:
        w = _flat(weights, lead, tail).astype(np.float64)
        valid &= np.isfinite(w) & (w != 0)
    masked = None
    mask = np.asarray(mask)
    if mask.ndim:
        masked = _flat(mask, lead, tail).astype(bool)
        valid &= ~masked

    P = plan.layout.n_params
    p0 = _flat(np.asarray(p0, dtype=np.float64), lead, (P,))
    lower = _flat(np.asarray(lower, dtype=np.float64), lead, (P,))
    upper = _flat(np.asarray(upper, dtype=np.float64), lead, (P,))
    # an initial value outside its bounds starts from the nearest bound (astropy's
    # TRF/DogBox fitters would reject it as infeasible, LevMar clips it)
    p0 = np.clip(p0, lower, upper)
    position = np.asarray(position)
    index = _flat(position, lead, position.shape[-1:]) if position.ndim else np.zeros((n, 0), int)

    npoints = valid.sum(axis=1)
    skip = np.full(n, -1, dtype=np.int16)
    model = plan.setup.model
    free = free_mask(model)
    skip[~np.all(np.isfinite(p0[:, free]), axis=1)] = Status.FAILED  # no usable start
    skip[npoints < max(plan.n_free, 1)] = Status.SKIPPED_TOO_FEW_POINTS
    if masked is not None:
        skip[masked.all(axis=1)] = Status.SKIPPED_MASKED
    skip[(npoints == 0) & (skip != Status.SKIPPED_MASKED)] = Status.SKIPPED_NO_DATA
    active = skip < 0
    block = FitBlock(tuple(x), y, valid, w, p0, lower, upper, active, index)
    return block, skip, lead


def fit_chunk(data, weights, mask, world, p0, lower, upper, position, *, plan: FitPlan):
    """Fit every position of one chunk; returns ``lead_shape + (layout.size,)`` float64."""
    block, skip, lead = build_block(
        data, weights, mask, world, p0, lower, upper, position, plan=plan
    )
    layout = plan.layout
    if block.n == 0:
        return np.empty(lead + (layout.size,))
    result = run_engine(block, plan)
    result.status[~block.active] = skip[~block.active]
    return pack(block, result, layout, plan.n_free, free_mask(plan.setup.model)).reshape(
        lead + (layout.size,)
    )


def run_engine(block: FitBlock, plan: FitPlan) -> BlockResult:
    """Run the plan's engine on the active fits of ``block``.

    If a vectorised engine fails as a whole (an unexpected exception, not a
    per-fit failure), the block is refitted by the loop engine, which turns
    every exception into that fit's status: a chunk is never lost.
    """
    layout = plan.layout
    if not block.active.any():
        return BlockResult.empty(block.n, layout.n_params, layout.covariance)
    if plan.engine == "loop":
        return _flag(block, _engine("loop")(block, plan.setup), plan.setup)
    try:
        result = _engine(plan.engine)(block, plan.setup)
    except Exception:
        return _flag(block, _engine("loop")(block, plan.setup), plan.setup)
    result = _flag(block, result, plan.setup)
    if plan.setup.diagnostics is not None:
        _write_diagnostics(block, result, plan.setup)
    return result


def _flag(block: FitBlock, result: BlockResult, setup: EngineSetup) -> BlockResult:
    """Convergences that should not be trusted become ``CONVERGED_WITH_WARNINGS``.

    - The fit stopped at its initial values: the convergence tests passed at the
      start (on data of ~1e-30 the gradient is below scipy's absolute ``gtol``;
      on ~1e30 every trial step is rejected until ``xtol`` stops the fit).
    - The (weighted) data exceed ``HUGE_DATA``: on a Gaussian cube scaled by
      1e18-1e30, both astropy's fitters and the batched engine stop at wrong
      parameters while reporting convergence.
    """
    from astropy.modeling.fitting import LinearLSQFitter

    clean = block.active & (result.status == Status.CONVERGED)
    if not clean.any():
        return result
    if not isinstance(setup.fitter, LinearLSQFitter):
        free = free_mask(setup.model)
        same = np.all(result.params[:, free] == block.p0[:, free], axis=1)
        _warn(result, clean & same, lambda i: (
            "stopped at the initial values: the convergence tests passed without any step "
            "(check the scale of the data and the initial values)"
        ))  # fmt: skip
    with np.errstate(invalid="ignore"):
        if block.weights is None and block.valid.all() and block.y.shape[1]:
            peak = np.maximum(block.y.max(axis=1), -block.y.min(axis=1))
        else:
            y = np.where(block.valid, block.y, 0.0)
            if block.weights is not None:
                y *= np.where(block.valid, block.weights, 0.0)
            peak = np.abs(y).max(axis=1, initial=0.0)
    _warn(result, clean & (peak > HUGE_DATA), lambda i: (
        f"the (weighted) data reach {peak[i]:.3g}: beyond {HUGE_DATA:g} the convergence "
        "tests of the fitters are unreliable; rescale the data (e.g. data_unit=...)"
    ))  # fmt: skip
    return result


#: weighted data beyond this: the fitters' convergence tests (partly absolute) are unreliable
HUGE_DATA = 1e16


def _warn(result: BlockResult, rows: np.ndarray, message) -> None:
    for i in np.flatnonzero(rows & (result.status == Status.CONVERGED)):
        result.status[i] = Status.CONVERGED_WITH_WARNINGS
        result.messages[int(i)] = message(i)


def _write_diagnostics(block: FitBlock, result: BlockResult, setup: EngineSetup) -> None:
    """Diagnostics folders for a vectorised engine's flagged fits (the loop engine writes its own)."""
    from xarray_modelfit.kernel import diagnostics

    for i in np.flatnonzero(block.active):
        status = Status(int(result.status[i]))
        failed = status >= Status.SINGULAR
        warned = status in (Status.CONVERGED_WITH_WARNINGS, Status.MAX_ITERATIONS)
        if not diagnostics.selected(setup.diagnostics, failed=failed, warned=warned):
            continue
        message = result.messages.get(int(i), "")
        valid = block.valid[i]
        model = None
        if not failed:
            model = setup.model.copy()
            model._reset_parameters(**dict(zip(model.param_names, result.params[i], strict=True)))
        diagnostics.write(
            setup,
            block.index[i],
            error=f"{status.name}: {message}\n" if failed else "",
            warnings_text=f"{status.name}: {message}\n" if warned else "",
            world=tuple(xx[valid] for xx in block.x_of(i)),
            data=block.y[i, valid],
            weights=None if block.weights is None else block.weights[i, valid],
            model=model,
        )


def pack(
    block: FitBlock, result: BlockResult, layout: OutputLayout, n_free: int, free: np.ndarray
) -> np.ndarray:
    """Lay the engine's outputs out along one float64 axis."""
    out = np.full((block.n, layout.size), np.nan)
    failed = result.status >= Status.SINGULAR
    params = np.where(failed[:, None], np.nan, result.params)
    out[:, layout.slice_of("params")] = params
    out[:, layout.slice_of("stderr")] = np.where(failed[:, None], np.nan, result.stderr)
    out[:, layout.slice_of("chi2")] = np.where(failed, np.nan, result.chi2)
    out[:, layout.slice_of("npoints")] = block.valid.sum(axis=1)
    out[:, layout.slice_of("nfev")] = result.nfev
    out[:, layout.slice_of("status")] = result.status
    out[:, layout.slice_of("at_bound")] = np.where(failed, -1, at_bound(params, block, free))
    _statistics(out, block, result, layout, n_free, ~failed)
    if layout.covariance and result.covariance is not None:
        cov = np.where(failed[:, None, None], np.nan, result.covariance)
        out[:, layout.slice_of("covariance")] = cov.reshape(block.n, -1)
    return out


AT_BOUND_RTOL = 1e-6


def at_bound(params: np.ndarray, block: FitBlock, free: np.ndarray) -> np.ndarray:
    """Number of free parameters of each fit that ended on one of their bounds.

    On a bound means within ``AT_BOUND_RTOL`` of it, relative to the width of
    the interval when both bounds are finite, else to the larger of the bound
    and the initial value: a solver with strictly feasible steps stops just
    inside a bound, not on it.
    """
    lo, hi, p0 = block.lower[:, free], block.upper[:, free], block.p0[:, free]
    p = params[:, free]
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(lo) & np.isfinite(hi)
        bound = np.where(np.isfinite(lo), lo, np.where(np.isfinite(hi), hi, 0.0))
        one_sided = np.fmax(np.abs(bound), np.abs(p0))
        scale = np.where(finite, hi - lo, one_sided)
        tol = AT_BOUND_RTOL * np.fmax(scale, np.finfo(float).tiny)
        on = (np.abs(p - lo) <= tol) | (np.abs(hi - p) <= tol)
    return on.sum(axis=1)


def _statistics(out, block, result, layout, n_free: int, good: np.ndarray) -> None:
    """Degrees of freedom, reduced chi2, AIC, BIC and R squared of every fit.

    AIC and BIC use the least-squares form of the log likelihood:
    ``n ln(chi2/n) + 2k`` and ``n ln(chi2/n) + k ln(n)``.
    """
    n = block.valid.sum(axis=1).astype(float)
    chi2 = result.chi2
    dof = n - n_free
    with np.errstate(divide="ignore", invalid="ignore"):
        term = n * np.log(chi2 / n)
        values = {
            "dof": dof,
            "redchi2": np.where(dof > 0, chi2 / dof, np.nan),
            "aic": term + 2 * n_free,
            "bic": term + n_free * np.log(n),
            "rsquared": 1 - chi2 / _total_sum_squares(block),
        }
    for key, value in values.items():
        out[:, layout.slice_of(key)] = value if key == "dof" else np.where(good, value, np.nan)


def _total_sum_squares(block: FitBlock) -> np.ndarray:
    """Weighted sum of squares about the weighted mean (for R squared)."""
    if block.weights is None and block.valid.all() and block.y.shape[1]:  # common: 2 passes
        return block.y.var(axis=1) * block.y.shape[1]
    w2 = block.valid.astype(float)
    if block.weights is not None:
        w2 = w2 * np.where(block.valid, block.weights, 0.0) ** 2
    y = np.where(block.valid, block.y, 0.0)
    total = w2.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (w2 * y).sum(axis=1) / total
        return (w2 * (y - mean[:, None]) ** 2).sum(axis=1)


def evaluate_chunk(world, params, *, model: Any, n_fit_axes: int):
    """Evaluate the unitless ``model`` with per-position parameters.

    ``world`` has shape ``(..., n_inputs, *fit_shape)``, ``params``
    ``(..., P)``; returns ``(..., *fit_shape)``.
    """
    world = np.asarray(world, dtype=np.float64)
    params = np.asarray(params, dtype=np.float64)
    k = n_fit_axes
    fit_shape = world.shape[world.ndim - k :]
    lead = np.broadcast_shapes(world.shape[: world.ndim - k - 1], params.shape[:-1])
    pars = [params[..., j].reshape(params.shape[:-1] + (1,) * k) for j in range(params.shape[-1])]
    inputs = [np.take(world, j, axis=world.ndim - k - 1) for j in range(world.shape[-k - 1])]
    out = model.evaluate(*inputs, *pars)
    return np.broadcast_to(out, lead + fit_shape)
