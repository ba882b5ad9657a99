"""``modelfit``: validate, normalise, plan, ``apply_ufunc``, assemble.

The xarray layer never loops over positions: it turns the user's arguments
into aligned arrays and one :class:`~xarray_modelfit.kernel.chunk.FitPlan`,
maps :func:`~xarray_modelfit.kernel.chunk.fit_chunk` over dask chunks with
``xr.apply_ufunc(..., dask="parallelized")`` and hands the packed output to
:mod:`xarray_modelfit.results`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from xarray_modelfit import results
from xarray_modelfit._validate import (
    aux_array,
    check_fitter_kwargs,
    check_scheduler,
    default_scheduler,
    normalise_dims,
    select_engine,
    validate_model_fitter,
)
from xarray_modelfit.coords import INPUT_DIM, world_inputs, world_ranges
from xarray_modelfit.errors import ModelFitError, ModelFitTypeError
from xarray_modelfit.kernel import diagnostics as _diag
from xarray_modelfit.kernel.block import EngineSetup, free_mask
from xarray_modelfit.kernel.chunk import FitPlan, OutputLayout, fit_chunk
from xarray_modelfit.params import (
    PARAM_DIM,
    aligned_maps,
    axis_bounds,
    bounds_arrays,
    initial_values,
)
from xarray_modelfit.preflight import preflight as run_preflight
from xarray_modelfit.units import convert_values, parse_unit, strip_model_units

OUT_DIM = "_out"
AXIS_DIM = "_axis"

#: fits per chunk when ``chunk_n_max`` is not given (astropy's default for the loop engine)
DEFAULT_CHUNK_N_MAX = {"loop": 500, "batched": 20_000}

Engine = Literal["auto", "loop", "batched"]


def modelfit(
    obj: xr.DataArray | xr.Dataset,
    model,
    dims: Hashable | Sequence[Hashable],
    *,
    fitter=None,
    coords: Mapping[Hashable, Any] | None = None,
    p0: Mapping[str, Any] | None = None,
    bounds: Mapping[str, Any] | str | None = None,
    weights=None,
    mask=None,
    skipna: bool = True,
    data_unit=None,
    equivalencies=None,
    fitter_kwargs: Mapping[str, Any] | None = None,
    engine: Engine = "auto",
    chunk_n_max: int | None = None,
    scheduler=None,
    compute: bool = True,
    diagnostics: str | None = None,
    diagnostics_path: str | Path | None = None,
    diagnostics_callable=None,
    covariance: bool = False,
    preflight: bool | Mapping[Hashable, int] = True,
    progress: bool = False,
    select: str = "bic",
    refit: str | None = None,
) -> xr.Dataset:
    """Fit an astropy model along ``dims`` at every other position of ``obj``.

    Parameters
    ----------
    obj : DataArray or Dataset
        The data. For a Dataset, every numeric data variable that has all of
        ``dims`` is fitted and its outputs are prefixed ``{var}_``.
    model : astropy.modeling.Model
        Any fittable model (compound models included) giving the initial
        values, ``fixed``, ``tied`` and ``bounds``. Parameters may be
        Quantities; array-valued parameters broadcast over the iterated dims.
    dims : str or sequence of str
        The fitting dims, one per model input, in the order of the model's
        inputs (``("x", "y")`` for a 2-d model). All other dims are iterated.
    fitter : astropy fitter, optional
        An instance; ``TRFLSQFitter()`` by default. Any astropy fitter works,
        and so does a user's own fitter object.
    coords : mapping, optional
        World input per fitting dim: a coordinate name, a 1-d array, a
        DataArray (may vary over iterated dims) or a :class:`TimeAxis`.
        Default: the dim's coordinate, or the pixel index if it has none.
    p0 : mapping or "auto", optional
        Initial values ``{param: value}``: scalars, Quantities, arrays or
        DataArrays over iterated dims. ``"auto"`` estimates them per position
        from the data (moments of peaks, least squares for linear parts; see
        :func:`xarray_modelfit.register_guess`).
    bounds : mapping or "auto", optional
        ``{param: (lo, hi)}``, scalars, Quantities or DataArrays. ``"auto"``
        keeps peak components on the axes: positions within the range of the
        coordinate, widths from half a channel to its span (amplitudes stay
        open); ``fit_at_bound`` then shows the fits that ended on one.
    weights, mask : DataArray, array or Dataset, optional
        ``1/sigma`` weights and a boolean mask (True = excluded). A DataArray
        is matched to the data by dim name and label; a plain array by shape
        (the data's, the fitting dims', or numpy broadcasting against the
        data's trailing dims); a Dataset, for a Dataset input, gives each
        variable its own.
    skipna : bool
        Leave NaN/inf points out of each fit (default) instead of failing it.
    data_unit : str or astropy Unit, optional
        Unit of the data; default ``obj.attrs["units"]``, or dimensionless
        when the data has none and a coordinate has units (as
        ``parallel_fit_dask(..., data_unit=u.one)``).
    equivalencies : list or dict, optional
        Unit equivalencies for converting the world inputs to the model's
        input units (e.g. ``u.spectral()``), for all inputs or per input name.
    fitter_kwargs : mapping, optional
        Passed to every fitter call (``maxiter``, ``acc``, ...).
    engine : {"auto", "loop", "batched"}
        ``"loop"`` calls the fitter once per fit; ``"batched"`` fits a whole
        chunk at once with a vectorised solver; ``"auto"`` picks ``"batched"``
        when it supports the model and fitter.
    chunk_n_max : int, optional
        Maximum number of fits per chunk (500 for the loop engine, 20000 for
        the batched engine by default).
    scheduler : str or Client, optional
        ``"synchronous"``, ``"threads"``, ``"processes"``, ``"default"``
        (whatever dask is set to, e.g. an active distributed Client) or a
        Client. Default: processes for the loop engine, threads for batched.
    compute : bool
        If False, return the Dataset backed by dask without computing.
    diagnostics : {None, "error", "error+warn", "all"}
        Write a folder per selected fit under ``diagnostics_path``.
    diagnostics_path : path, optional
        Required when ``diagnostics`` is set.
    diagnostics_callable : callable, optional
        ``f(path, world, data, weights, model, fitter_kwargs)`` called in each
        diagnostics folder.
    covariance : bool
        Also return ``fit_covariance`` over ``(param, param_j)``.
    preflight : bool or mapping
        Fit one spectrum eagerly first (the first with enough valid points, or
        the position given as ``{dim: index}``) and raise at once if the model
        or fitter raises for it. ``False`` turns this off.
    progress : bool
        Show a progress bar of fits done (tqdm locally, the dask.distributed
        progress display on a cluster).
    select : {"bic", "aic"}
        With a list of candidate models, the criterion that picks the best one
        at each position (see :mod:`xarray_modelfit.select`). BIC (default)
        penalises extra components more; AIC tends to add components that fit
        noise.
    refit : {None, "neighbours"}
        ``"neighbours"``: fit again, from the median of the neighbouring good
        fits, the fits that failed or whose reduced chi2 or parameters are
        outliers among their neighbours; keep a refit where it lowers chi2 (see
        :mod:`xarray_modelfit.refit`).

    Returns
    -------
    xarray.Dataset
        One map per parameter (named ``model.param_names``), ``{param}_stderr``,
        ``fit_*`` diagnostics and a summary in the attrs.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from astropy.modeling import models
    >>> import xarray_modelfit
    >>> v = np.linspace(-5, 5, 41)
    >>> amp = xr.DataArray([1.0, 2.0], dims="pix")
    >>> cube = amp * np.exp(-0.5 * xr.DataArray(v, dims="v", coords={"v": v}) ** 2)
    >>> fit = cube.modelfit(models.Gaussian1D(1, 0.5, 2), dims="v", scheduler="synchronous")
    >>> np.round(fit["amplitude"].values, 6).tolist()
    [1.0, 2.0]
    """
    if refit is not None and (isinstance(model, list | tuple) or isinstance(obj, xr.Dataset)):
        raise ModelFitError(
            "refit='neighbours' takes one model and a DataArray; fit each candidate or variable"
        )
    if isinstance(model, list | tuple):
        return _fit_candidates(obj, model, dims, locals())
    if isinstance(obj, xr.Dataset):
        return _fit_dataset(obj, model, dims, locals())
    if not isinstance(obj, xr.DataArray):
        raise ModelFitTypeError(
            f"obj must be an xarray DataArray or Dataset, got {type(obj).__name__}"
        )
    kwargs = {
        k: v for k, v in locals().items() if k not in ("obj", "model", "dims", "select", "refit")
    }
    if refit is not None:
        return _fit_with_refit(obj, model, dims, refit, kwargs)
    return _fit_dataarray(obj, model, dims, **kwargs)


def _fit_with_refit(obj: xr.DataArray, model, dims, refit: str, kwargs: dict) -> xr.Dataset:
    """First pass, then neighbour-seeded refits of the suspect fits."""
    from xarray_modelfit.refit import refit_neighbours

    if refit != "neighbours":
        raise ModelFitError(f"refit must be None or 'neighbours', got {refit!r}")
    first = _fit_dataarray(obj, model, dims, **{**kwargs, "compute": False})
    iter_dims = [d for d in first["fit_status"].dims]
    if not iter_dims:
        raise ModelFitError("refit='neighbours' needs iterated dims: there are no neighbours")
    eager = kwargs["compute"]
    scheduler = kwargs["scheduler"] or default_scheduler(first.attrs["engine"])
    if eager:
        first = _compute(first, scheduler, first.attrs["engine"], kwargs["progress"])
    if first["fit_status"].size == 0:  # nothing fitted: no neighbours, the same empty layout
        return first.assign(
            fit_refit_pass=xr.zeros_like(first["fit_status"]),
            fit_chi2_drop=xr.zeros_like(first["fit_chi2"]),
        )
    user_mask = kwargs["mask"]
    fit_dims = normalise_dims(dims)

    def fit_again(p0, skip):
        mask = skip
        if user_mask is not None:
            mask = aux_array(user_mask, obj, fit_dims, "mask", bool) | skip
        again = _fit_dataarray(
            obj,
            model,
            dims,
            **{
                **kwargs,
                "p0": {**(kwargs["p0"] if isinstance(kwargs["p0"], Mapping) else {}), **p0},
                "mask": mask,
                "compute": False,
                "preflight": False,
                "diagnostics": None,
                "progress": False,
            },
        )
        return _compute(again, scheduler, again.attrs["engine"]) if eager else again

    params = json.loads(first.attrs["param_names"])
    out = refit_neighbours(first, fit_again, params, iter_dims, eager=eager)
    out.attrs["refit"] = refit
    if eager:
        out.attrs.update(results.counts(out))
    return out


def _fit_candidates(obj, candidates, dims, args: dict) -> xr.Dataset:
    """Fit every candidate model and keep the best per position."""
    from xarray_modelfit.select import CRITERIA, select_best

    if not isinstance(obj, xr.DataArray):
        raise ModelFitTypeError("model selection takes a DataArray; fit each variable of a Dataset")
    if not candidates:
        raise ModelFitError("model is an empty list; give one or more candidate models")
    if args["select"] not in CRITERIA:
        raise ModelFitError(f"select must be 'aic' or 'bic', got {args['select']!r}")
    kwargs = {k: v for k, v in args.items() if k not in ("obj", "model", "dims", "select", "refit")}
    parts = [_fit_dataarray(obj, m, dims, **{**kwargs, "compute": False}) for m in candidates]
    out = select_best(parts, candidates, args["select"])
    if args["compute"]:
        out = _compute(out, args["scheduler"], parts[0].attrs["engine"], args["progress"])
        out.attrs.update(results.counts(out))
    return out


def _fit_dataset(ds: xr.Dataset, model, dims, args: dict) -> xr.Dataset:
    dims_t = normalise_dims(dims)
    names = [
        name
        for name, var in ds.data_vars.items()
        if all(d in var.dims for d in dims_t) and var.dtype.kind in "iufc"  # not flags, text, times
    ]
    if not names:
        raise ModelFitError(
            f"no numeric data variable of the Dataset has all fitting dims {list(dims_t)}"
        )
    kwargs = {k: v for k, v in args.items() if k not in ("obj", "model", "dims", "select", "refit")}
    parts = []
    for name in names:
        per_var = {k: _of_variable(kwargs[k], k, name, names) for k in ("weights", "mask")}
        try:
            fitted = _fit_dataarray(
                ds[name], model, dims_t, **{**kwargs, **per_var, "compute": False}
            )
        except ModelFitError as exc:  # say which variable
            raise type(exc)(f"data variable {name!r}: {exc}") from exc
        parts.append(results.prefixed(fitted, f"{name}_"))
    out = xr.merge(parts, combine_attrs="drop_conflicts")
    out.attrs.update(results.dataset_attrs(parts, names))
    if args["compute"]:
        out = _compute(out, args["scheduler"], parts[0].attrs["engine"], args["progress"])
        out.attrs.update(results.counts(out, prefixes=[f"{n}_" for n in names]))
    return out


def _data_unit(obj: xr.DataArray, model, data_unit, what: str):
    """The data's unit; ``attrs["units"]`` astropy cannot parse are only a label for a
    model without units (the fit is the same), so they warn instead of stopping the run."""
    from xarray_modelfit.errors import warn

    try:
        return parse_unit(data_unit if data_unit is not None else obj.attrs.get("units"), what=what)
    except ModelFitError as exc:
        if data_unit is not None or model._has_units:
            raise
        warn(f"{exc}; the data are fitted as plain numbers (data_unit= gives them a unit)")
        return None


def _of_variable(value, what: str, name, names):
    """A Dataset of weights or masks gives each fitted variable its own."""
    if not isinstance(value, xr.Dataset):
        return value
    if name not in value.data_vars:
        raise ModelFitError(
            f"{what} is a Dataset without the variable {name!r}; give one for every fitted "
            f"variable {list(names)}, or one DataArray for all"
        )
    return value[name]


#: fewest fits per chunk worth a chunk of their own (a chunk costs a few milliseconds)
_MIN_SPREAD_FITS = 1000


def _cores() -> int:
    """Cores dask's threaded scheduler uses."""
    from dask.system import CPU_COUNT

    return max(1, int(CPU_COUNT))


def _chunked(obj: xr.DataArray, fit_dims, iter_dims, n_max: int, spread: int = 0) -> xr.DataArray:
    """Fitting dims in one chunk, at most ``n_max`` fits per chunk; keep good native chunks.

    ``spread``: in-memory data of at most ``spread * n_max`` fits is split into
    ``spread`` equal chunks (the batched engine's chunks run in parallel on threads).
    """
    import dask

    n_points = math.prod(obj.sizes[d] for d in fit_dims)
    if obj.chunks is not None:
        chunks = dict(zip(obj.dims, obj.chunks, strict=True))
        fits_per_chunk = math.prod(max(chunks[d]) for d in iter_dims) if iter_dims else 1
        if all(len(chunks[d]) == 1 for d in fit_dims) and fits_per_chunk <= n_max:
            return obj
    n_fits = math.prod(obj.sizes[d] for d in iter_dims)
    if spread and iter_dims and n_fits <= spread * n_max:
        # a cube that fits in a few chunks: equal slabs along its longest iterated
        # dim, one per core, so that the cores share the work evenly
        longest = max(iter_dims, key=lambda d: obj.sizes[d])
        pieces = min(spread, obj.sizes[longest], n_fits // _MIN_SPREAD_FITS)
        if pieces > 1:
            return obj.chunk(
                {d: -1 for d in obj.dims} | {longest: -(-obj.sizes[longest] // pieces)}
            )
    limit = max(n_max * n_points * obj.dtype.itemsize, 1)
    spec = {d: -1 for d in fit_dims} | {d: "auto" for d in iter_dims}
    with dask.config.set({"array.chunk-size": limit}):
        return obj.chunk(spec)


def _fit_dataarray(
    obj: xr.DataArray,
    model,
    dims,
    *,
    fitter,
    coords,
    p0,
    bounds,
    weights,
    mask,
    skipna,
    data_unit,
    equivalencies,
    fitter_kwargs,
    engine,
    chunk_n_max,
    scheduler,
    compute,
    diagnostics,
    diagnostics_path,
    diagnostics_callable,
    covariance,
    preflight,
    progress,
) -> xr.Dataset:
    fit_dims = normalise_dims(dims)
    fitter = validate_model_fitter(model, fitter)
    for d in fit_dims:
        if d not in obj.dims:
            raise ModelFitError(
                f"fitting dim {d!r} is not a dim of the data; data dims are {list(obj.dims)}"
            )
    for d in fit_dims:
        if obj.sizes[d] == 0:
            raise ModelFitError(f"fitting dim {d!r} has length 0: there is nothing to fit along it")
    check_scheduler(scheduler)
    if len(set(fit_dims)) != len(fit_dims):
        raise ModelFitError(f"dims {list(fit_dims)} names a dim twice")
    if len(fit_dims) != model.n_inputs:
        raise ModelFitError(
            f"the model has {model.n_inputs} input(s) {list(model.inputs)}, but dims={list(fit_dims)} "
            f"gives {len(fit_dims)}; give one fitting dim per model input"
        )
    if not np.issubdtype(obj.dtype, np.number) or np.issubdtype(obj.dtype, np.complexfloating):
        raise ModelFitTypeError(f"data must be real numbers, got dtype {obj.dtype}")
    if diagnostics not in _diag.MODES:
        raise ModelFitError(
            f"diagnostics must be None, 'error', 'error+warn' or 'all', got {diagnostics!r}"
        )
    if diagnostics is not None:
        if diagnostics_path is None:
            raise ModelFitError(
                f"diagnostics={diagnostics!r} needs diagnostics_path, the folder to write to"
            )
        Path(diagnostics_path).mkdir(parents=True, exist_ok=True)
    if diagnostics_callable is not None and not callable(diagnostics_callable):
        raise ModelFitTypeError("diagnostics_callable must be callable")
    if fitter_kwargs is not None and not isinstance(fitter_kwargs, Mapping):
        raise ModelFitTypeError(
            f"fitter_kwargs must be a mapping, got {type(fitter_kwargs).__name__}"
        )
    check_fitter_kwargs(fitter, fitter_kwargs or {})
    if chunk_n_max is not None and (
        not isinstance(chunk_n_max, int | np.integer)
        or isinstance(chunk_n_max, bool)
        or chunk_n_max < 1
    ):
        raise ModelFitError(f"chunk_n_max must be a positive integer, got {chunk_n_max!r}")

    iter_dims = tuple(d for d in obj.dims if d not in fit_dims)
    iter_shape = tuple(obj.sizes[d] for d in iter_dims)

    # world inputs and units
    worlds = world_inputs(obj, fit_dims, coords)
    source = obj.encoding.get("source")
    what = f"data {obj.name!r}" if obj.name is not None else "data"
    what += f" ({source})" if source else ""
    what += " data_unit" if data_unit is not None else " attrs['units']"
    unit = _data_unit(obj, model, data_unit, what)
    unitless, conversions, units_ctx = strip_model_units(
        model, [w.unit for w in worlds], unit, equivalencies
    )
    world_arrays = [
        w.values.copy(data=convert_values(w.values.data, conv))
        for w, conv in zip(worlds, conversions, strict=True)
    ]
    template = xr.DataArray(np.zeros([obj.sizes[d] for d in fit_dims]), dims=fit_dims)
    world_arrays = [xr.broadcast(w, template)[0] for w in world_arrays]
    world = xr.concat(world_arrays, dim=INPUT_DIM, join="exact", coords="minimal")

    auto_p0 = isinstance(p0, str) and p0 == "auto"
    if isinstance(p0, str) and not auto_p0:
        raise ModelFitError(
            f"p0 must be a mapping of parameter name to value or 'auto', got {p0!r}"
        )
    auto_bounds = isinstance(bounds, str) and bounds == "auto"
    if isinstance(bounds, str) and not auto_bounds:
        raise ModelFitError(
            f"bounds must be a mapping of parameter name to (lo, hi) or 'auto', got {bounds!r}"
        )
    if auto_bounds:
        bounds, inset = axis_bounds(unitless, world, fit_dims)
    p0, bounds = aligned_maps(p0, bounds, obj)
    p0_da = initial_values(
        unitless, None if auto_p0 else p0, units_ctx.param_units, iter_dims, iter_shape
    )
    lower, upper = bounds_arrays(unitless, bounds, units_ctx.param_units, iter_dims, iter_shape)
    p0_da, lower, upper = (
        a.chunk({PARAM_DIM: -1}) if a.chunks else a for a in (p0_da, lower, upper)
    )
    unitless = _linear_domains(_scalar_parameters(unitless), fitter, world, fit_dims)
    engine_name = select_engine(engine, unitless, fitter)
    weights_da = aux_array(weights, obj, fit_dims, "weights", np.float64)
    mask_da = aux_array(mask, obj, fit_dims, "mask", bool)

    n_max = chunk_n_max or DEFAULT_CHUNK_N_MAX[engine_name]
    spread = _cores() if engine_name == "batched" and chunk_n_max is None else 0
    data = _chunked(obj.drop_vars(list(obj.coords)), fit_dims, iter_dims, n_max, spread)
    if diagnostics is not None and iter_dims:
        position = xr.concat(
            [xr.DataArray(np.arange(obj.sizes[d]), dims=(d,)) for d in iter_dims], dim=AXIS_DIM
        )
        position = position.chunk({d: data.chunksizes[d] for d in iter_dims})
        pos_core = [AXIS_DIM]
    else:
        position, pos_core = xr.DataArray(np.zeros((), dtype=np.int64)), []

    n_free = int(free_mask(unitless).sum())
    layout = OutputLayout(len(unitless.param_names), covariance)
    setup = EngineSetup(
        model=unitless,
        fitter=fitter,
        fitter_kwargs=dict(fitter_kwargs or {}),
        covariance=covariance,
        diagnostics=diagnostics,
        diagnostics_path=None if diagnostics_path is None else str(diagnostics_path),
        diagnostics_callable=diagnostics_callable,
        index_width=max(1, math.ceil(math.log10(max(iter_shape))))
        if iter_shape and max(iter_shape) > 0
        else 1,
    )
    plan = FitPlan(engine_name, setup, len(fit_dims), n_free, layout, skipna)
    fd = list(fit_dims)
    if auto_p0:
        p0_da = _auto_p0(unitless, data, weights_da, mask_da, world, p0_da, plan, fd, weights, mask)
    if auto_bounds and bounds:  # a start on a bound can hold a fit there: begin a step inside
        moved = xr.DataArray([n in bounds for n in unitless.param_names], dims=PARAM_DIM)
        p0_da = p0_da.where(~moved, p0_da.clip(lower + inset, upper - inset))
    inputs = [
        (data, fd),
        (weights_da, fd if weights is not None else []),
        (mask_da, fd if mask is not None else []),
        (world, [INPUT_DIM, *fd]),
        (p0_da, [PARAM_DIM]),
        (lower, [PARAM_DIM]),
        (upper, [PARAM_DIM]),
    ]
    run_preflight(inputs, plan, iter_dims, preflight)
    packed = xr.apply_ufunc(
        fit_chunk,
        *(da for da, _ in inputs),
        position,
        input_core_dims=[*(core for _, core in inputs), pos_core],
        output_core_dims=[[OUT_DIM]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {OUT_DIM: layout.size}},
        kwargs={"plan": plan},
    )
    out = results.assemble(
        packed.transpose(*iter_dims, OUT_DIM),
        obj=obj,
        layout=layout,
        model=model,
        unitless=unitless,
        units_ctx=units_ctx,
        fit_dims=fit_dims,
        worlds=worlds,
        fitter=fitter,
        engine=engine_name,
    )
    if compute:
        out = _compute(out, scheduler, engine_name, progress)
        out.attrs.update(results.counts(out))
    return out


def _auto_p0(model, data, weights_da, mask_da, world, p0_da, plan, fd, weights, mask):
    """Per-position initial values estimated from the data, lazily (``p0="auto"``)."""
    from xarray_modelfit.kernel.guess import guess_chunk, guessers_for

    try:
        guessers = guessers_for(model)
    except ValueError as exc:
        raise ModelFitError(str(exc)) from None
    return xr.apply_ufunc(
        guess_chunk,
        data,
        weights_da,
        mask_da,
        world,
        p0_da,
        input_core_dims=[
            fd,
            fd if weights is not None else [],
            fd if mask is not None else [],
            [INPUT_DIM, *fd],
            [PARAM_DIM],
        ],
        output_core_dims=[[PARAM_DIM]],
        dask="parallelized",
        output_dtypes=[np.float64],
        kwargs={"plan": plan, "guessers": guessers},
    )


def _scalar_parameters(model):
    """A copy of ``model`` with scalar parameters (array values travel in ``p0``)."""
    values = {n: np.ravel(getattr(model, n).value) for n in model.param_names}
    if all(v.size == 1 for v in values.values()):
        return model
    model = model.copy()
    model._reset_parameters(**{n: float(v[0]) if v.size else np.nan for n, v in values.items()})
    return model


def _linear_domains(model, fitter, world: xr.DataArray, fit_dims):
    """A polynomial without a domain, fitted by ``LinearLSQFitter``, gets the axis's range.

    astropy's ``LinearLSQFitter`` sets such a model's ``domain`` (``x_domain``,
    ``y_domain``) to the range of the data it is given and the fitted
    coefficients only mean something with it. Here it is the range of the
    whole fitting axis, so that every fit shares one model, which the result
    keeps; a fit with fewer valid points gives the same polynomial.
    """
    from astropy.modeling.fitting import LinearLSQFitter

    names = {"domain": 0, "x_domain": 0, "y_domain": 1}
    todo = [n for n in names if hasattr(model, n) and getattr(model, n) is None]
    if not isinstance(fitter, LinearLSQFitter) or not todo:
        return model
    lo, hi, _ = world_ranges(world, fit_dims)
    model = model.copy()
    for name in todo:
        i = names[name]
        if np.isfinite(lo[i]):
            setattr(model, name, (lo[i], hi[i]))
    return model


def _compute(ds: xr.Dataset, scheduler, engine: str, progress: bool = False) -> xr.Dataset:
    from xarray_modelfit.progress import compute_with_progress

    if scheduler is None:
        scheduler = default_scheduler(engine)
    statuses = [v for v in ds.data_vars if str(v).endswith("fit_status")]
    total = sum(ds[v].size for v in statuses)
    return compute_with_progress(ds, scheduler, total, progress)
