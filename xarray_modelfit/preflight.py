"""Pre-flight: fit one spectrum eagerly before launching the whole graph.

A model/fitter/units combination that cannot work raises for every fit; finding
that out after an hour on a cluster wastes the hour. One fit, on the first
position with enough valid points (or the position the user names), shows it
in a second. Only an exception raised by the model or the fitter stops the run;
a fit that merely fails to converge does not.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import xarray as xr

from xarray_modelfit.errors import ModelFitError
from xarray_modelfit.kernel.chunk import FitPlan, build_block, run_engine
from xarray_modelfit.kernel.status import Status

#: positions looked at when searching for spectra with enough valid points
MAX_CANDIDATES = 16
#: fits tried: the run stops only if every one of them raises
MAX_TRIES = 3


def _candidates(iter_dims: Sequence[Hashable], sizes: Mapping, position) -> list[dict]:
    if isinstance(position, Mapping):
        unknown = [d for d in position if d not in iter_dims]
        if unknown:
            raise ModelFitError(
                f"preflight position names {unknown}, which are not iterated dims {list(iter_dims)}"
            )
        return [{d: int(position.get(d, 0)) for d in iter_dims}]
    n = int(np.prod([sizes[d] for d in iter_dims], dtype=np.int64)) if iter_dims else 1
    if n == 0:
        return []
    flat = np.unique(np.linspace(0, n - 1, min(n, MAX_CANDIDATES)).astype(np.int64))
    shape = [sizes[d] for d in iter_dims]
    return [dict(zip(iter_dims, np.unravel_index(i, shape), strict=True)) for i in flat]


def _at(da: xr.DataArray, core: Sequence[Hashable], where: dict) -> np.ndarray:
    one = da.isel({d: i for d, i in where.items() if d in da.dims})
    return np.asarray(one.transpose(*[d for d in core if d in one.dims]).values)


def preflight(
    inputs: Sequence[tuple[xr.DataArray, Sequence[Hashable]]],
    plan: FitPlan,
    iter_dims: Sequence[Hashable],
    position: bool | Mapping = True,
) -> None:
    """Fit one position with the run's own engine; raise if the fit raises.

    ``inputs`` are the kernel's first seven inputs (data, weights, mask, world,
    p0, lower, upper) as prepared for ``apply_ufunc``, each with its core dims.
    """
    if position is False:
        return
    from dataclasses import replace

    setup = replace(plan.setup, diagnostics=None, diagnostics_callable=None)
    plan = replace(plan, setup=setup)
    data = inputs[0][0]
    errors = []
    for where in _candidates(iter_dims, data.sizes, position):
        values = [_at(da, core, where) for da, core in inputs]
        block, _, _ = build_block(*values, np.zeros(()), plan=plan)
        if not block.active.any():
            if isinstance(position, Mapping):
                raise ModelFitError(
                    f"preflight position {where} has too few valid points to fit "
                    f"({int(block.valid.sum())} valid, {plan.n_free} free parameters)"
                )
            continue
        result = run_engine(block, plan)
        if int(result.status[0]) != Status.FAILED:
            return
        errors.append((where, result.messages.get(0, "unknown error")))
        if len(errors) == MAX_TRIES or isinstance(position, Mapping):
            break
    if errors:
        where, message = errors[0]
        raise ModelFitError(
            f"pre-flight fit at {where} raised {message} ({len(errors)} of {len(errors)} "
            "pre-flight fits raised). This model, fitter and data combination would likely fail "
            "for every fit; fix it, or pass preflight=False to run anyway"
        )
