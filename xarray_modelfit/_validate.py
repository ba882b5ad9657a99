"""Argument checks and normalisation: everything that can fail before any fitting.

Each check raises a :class:`~xarray_modelfit.errors.ModelFitError` naming the
argument, the bad value and what was expected.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import xarray as xr

from xarray_modelfit.errors import ModelFitError, ModelFitTypeError


def normalise_dims(dims) -> tuple[Hashable, ...]:
    if isinstance(dims, str) or not isinstance(dims, Sequence):
        return (dims,)
    return tuple(dims)


def validate_model_fitter(model, fitter):
    from astropy.modeling import Model, fitting

    if not isinstance(model, Model):
        raise ModelFitTypeError(
            f"model must be an astropy.modeling Model instance, got {type(model).__name__}"
        )
    if model.n_outputs != 1:
        raise ModelFitError(
            f"model must have one output, {model.name or type(model).__name__} has {model.n_outputs}"
        )
    name = model.name or type(model).__name__
    if len(model) != 1:
        raise ModelFitError(
            f"model {name} is a set of {len(model)} models; modelfit fits one model per "
            f"position: give a single model (per-position starts go in p0)"
        )
    from xarray_modelfit.kernel.block import free_mask

    if not free_mask(model).any():
        raise ModelFitError(
            f"every parameter of {name} is fixed or tied: there is nothing to fit "
            f"(use .modelfit.evaluate on a result, or free a parameter)"
        )
    if fitter is None:
        fitter = fitting.TRFLSQFitter()
    if isinstance(fitter, type):
        raise ModelFitTypeError(
            f"fitter must be a fitter instance, got the class {fitter.__name__}; call it: {fitter.__name__}()"
        )
    if not isinstance(fitter, fitting.Fitter) and not callable(fitter):
        raise ModelFitTypeError(
            f"fitter must be an astropy fitter instance (e.g. TRFLSQFitter()) or a callable "
            f"fitter object, got {type(fitter).__name__}"
        )
    return fitter


_SUPPLIED = ("model", "x", "y", "z", "weights", "inplace")


def check_fitter_kwargs(fitter, fitter_kwargs) -> None:
    """Keys of ``fitter_kwargs`` must be keywords of ``fitter.__call__``.

    A misspelt key would otherwise be ignored by the batched engine (and raise
    in every fit of the loop engine).
    """
    import inspect

    supplied = [k for k in fitter_kwargs if k in _SUPPLIED]
    if supplied:
        raise ModelFitError(
            f"fitter_kwargs sets {supplied}, which modelfit passes itself (the data, "
            f"coordinates, weights and model)"
        )
    try:
        params = inspect.signature(fitter.__call__).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in fitter_kwargs if k not in params]
    if unknown:
        known = [k for k in params if k not in _SUPPLIED]
        raise ModelFitError(
            f"fitter_kwargs has {unknown}, which {type(fitter).__name__} does not take; "
            f"it takes {known}"
        )


def select_engine(engine: str, model, fitter) -> str:
    if engine not in ("auto", "loop", "batched"):
        raise ModelFitError(f"engine must be 'auto', 'loop' or 'batched', got {engine!r}")
    if engine == "loop":
        return "loop"
    from xarray_modelfit.kernel.batched import batched_support

    reason = batched_support(model, fitter)
    if reason is None:
        return "batched"
    if engine == "batched":
        raise ModelFitError(f"engine='batched' cannot fit this: {reason}. Use engine='loop'")
    return "loop"


def check_dims_of_data(da: xr.DataArray, obj: xr.DataArray, what: str) -> None:
    """``da``'s dims must be dims of the data, with the data's lengths."""
    extra = [d for d in da.dims if d not in obj.dims]
    if extra:
        raise ModelFitError(
            f"{what} has dims {list(da.dims)}, but {extra} are not dims of the data "
            f"{list(obj.dims)}"
        )
    for d in da.dims:
        if da.sizes[d] != obj.sizes[d]:
            raise ModelFitError(
                f"{what} has length {da.sizes[d]} along {d!r}, but the data has length "
                f"{obj.sizes[d]}"
            )


def align_labels(value, obj: xr.DataArray, what: str):
    """A DataArray argument in the data's label order along every dim both index.

    xarray lines arrays up by label, so a mask, weights or ``p0`` map whose
    labels are the data's in another order is reordered; other labels raise.
    Anything that is not a DataArray is returned as it is.
    """
    if not isinstance(value, xr.DataArray):
        return value
    for d in value.dims:
        if d not in value.indexes or d not in obj.indexes:
            continue
        mine, theirs = value.indexes[d], obj.indexes[d]
        if len(mine) != len(theirs) or mine.equals(theirs):
            continue  # a length mismatch is reported by the shape checks
        order = mine.get_indexer(theirs) if mine.is_unique else None
        if order is None or (order < 0).any() or not mine.isin(theirs).all():
            raise ModelFitError(
                f"{what} has labels along {d!r} that are not the data's "
                f"({_few(mine)} against {_few(theirs)}); give it the data's labels, "
                f"or no coordinate along {d!r} to match by position"
            )
        value = value.isel({d: order})
    return value


def _few(index) -> str:
    labels = [str(v) for v in index[:3]]
    return "[" + ", ".join(labels) + (", ...]" if len(index) > 3 else "]")


def aux_array(value, obj: xr.DataArray, fit_dims, what: str, dtype) -> xr.DataArray:
    """weights/mask as a DataArray with every fitting dim (a 0-d placeholder if None).

    A DataArray is matched to the data by dim name and label. A plain array is
    matched by shape: the data's shape, the fitting dims' shape, or (numpy
    broadcasting) trailing dims of the data.
    """
    if value is None:
        return xr.DataArray(np.zeros((), dtype=dtype))
    if isinstance(value, xr.Dataset):
        raise ModelFitTypeError(
            f"{what} is a Dataset; give a DataArray or an array (a Dataset of {what}, one per "
            f"variable, goes with a Dataset input)"
        )
    if isinstance(value, xr.DataArray):
        check_dims_of_data(value, obj, what)
        da = align_labels(value, obj, what)
        da = da.drop_vars(list(da.coords))
    else:
        da = _plain_aux(value, obj, fit_dims, what)
    if not (np.issubdtype(da.dtype, np.number) or da.dtype == bool):
        raise ModelFitTypeError(f"{what} must be numeric or boolean, got dtype {da.dtype}")
    missing = [d for d in fit_dims if d not in da.dims]
    if missing:
        da = da.expand_dims({d: obj.sizes[d] for d in missing})
    if da.chunks is not None:  # the fitting dims are core dims: one chunk each
        da = da.chunk({d: -1 for d in fit_dims})
    return da.astype(dtype)


def _plain_aux(value, obj: xr.DataArray, fit_dims, what: str) -> xr.DataArray:
    arr = np.asarray(value) if not hasattr(value, "chunks") else value
    fit_shape = tuple(obj.sizes[d] for d in fit_dims)
    if arr.shape == obj.shape:
        return xr.DataArray(arr, dims=obj.dims)
    if arr.shape == fit_shape:  # "over the fitting dims only", whatever their place in the data
        return xr.DataArray(arr, dims=tuple(fit_dims))
    try:
        np.broadcast_shapes(arr.shape, obj.shape)
    except ValueError:
        raise ModelFitError(
            f"{what} has shape {arr.shape}, which does not broadcast to the data shape "
            f"{obj.shape} (dims {list(obj.dims)}) and is not the fitting dims' shape "
            f"{fit_shape} (dims {list(fit_dims)}); give a DataArray with named dims"
        ) from None
    da = xr.DataArray(arr, dims=obj.dims[obj.ndim - arr.ndim :])
    return da.squeeze([d for d in da.dims if da.sizes[d] == 1 and obj.sizes[d] != 1], drop=True)


SCHEDULERS = (
    "synchronous",
    "sync",
    "single-threaded",
    "threads",
    "threading",
    "processes",
    "multiprocessing",
    "default",
)


DEFAULT_SCHEDULER = {"loop": "processes", "batched": "threads"}


def default_scheduler(engine: str) -> str:
    """The scheduler used when none is given: the engine's, if it is safe here.

    The loop engine holds the GIL, so it runs on a process pool by default. dask
    starts those processes with "spawn", which imports the main script again
    in each of them; a script without an ``if __name__ == "__main__":`` guard
    would then run its whole body in every worker. There, threads are used.
    """
    name = DEFAULT_SCHEDULER[engine]
    if name == "processes" and not main_is_guarded():
        return "threads"
    return name


def main_is_guarded() -> bool:
    """Whether spawned processes can import ``__main__`` without rerunning this call.

    True in interactive sessions, notebooks and ``python -c`` (no main file),
    and for a main file whose top-level code is making this call from inside
    an ``if __name__ == "__main__":`` block (or that is not at its top level
    now, as in a callback). A call from unguarded top-level code would be made
    again by every worker.
    """
    import ast
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None:
        return True
    try:
        tree = ast.parse(open(path, "rb").read())
    except (OSError, SyntaxError, ValueError):
        return False
    guards = [n for n in tree.body if isinstance(n, ast.If) and _is_main_test(n.test)]
    if not guards:
        return False
    frame = sys._getframe(1)
    while frame is not None:  # the main script's top-level frame, if it is running
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
            return any(g.lineno <= frame.f_lineno <= (g.end_lineno or g.lineno) for g in guards)
        frame = frame.f_back
    return True


def _is_main_test(test) -> bool:
    import ast

    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return isinstance(test.ops[0], ast.Eq) and len(names) == 1 and len(consts) == 1


def check_scheduler(scheduler) -> None:
    if scheduler is None or callable(scheduler) or type(scheduler).__name__ == "Client":
        return
    if scheduler not in SCHEDULERS:
        raise ModelFitError(
            f"scheduler must be one of {list(SCHEDULERS)}, a dask.distributed Client or None, "
            f"got {scheduler!r}"
        )
