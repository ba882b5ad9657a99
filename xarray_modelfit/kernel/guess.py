"""Per-fit initial values estimated from the data (``p0="auto"``); no xarray here.

Peak-like models get moments of the data: the peak height, the position of the
maximum and the full width at half maximum of the region around it. A sum of
peaks is guessed one peak at a time in order of strength (the strongest peak
goes to the first peak component), each guessed profile being subtracted
before the next is sought. Linear parts (``Const1D``, ``Linear1D``,
``Polynomial1D``, ...) are then fitted by least squares to what the peaks
leave. ``Gaussian2D`` gets image moments.

A model class can register its own guess with :func:`register_guess`; the
function receives the world inputs ``x`` (each ``(n, m)`` or ``(1, m)``), the
data left to explain ``y`` ``(n, m)`` (invalid points are NaN) and returns a
dict of parameter arrays ``(n,)``. :func:`peak_stats` gives the moments.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from xarray_modelfit.kernel.block import FitBlock

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
GUESSES: dict[type, Callable] = {}


def register_guess(model_class: type) -> Callable:
    """Decorator: register ``f(x, y) -> {param: (n,) array}`` for a model class.

    >>> from astropy.modeling.models import Gaussian1D
    >>> @register_guess(Gaussian1D)
    ... def _g(x, y):
    ...     amp, center, fwhm = peak_stats(x[0], y)
    ...     return {"amplitude": amp, "mean": center, "stddev": fwhm / 2.3548}
    """

    def decorate(func: Callable) -> Callable:
        _ensure_builtins()
        GUESSES[model_class] = func
        return func

    return decorate


def peak_stats(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Height, position and FWHM of the highest peak of every row of ``y``.

    ``x`` is ``(n, m)`` or ``(1, m)`` and sorted along each row (ascending or
    descending); NaN points of ``y`` are ignored. The width is the distance
    between the first points below half maximum on either side of the peak
    (linearly interpolated), and at least the local point spacing.
    """
    n, m = y.shape
    x = np.broadcast_to(x, (n, m))
    filled = np.where(np.isfinite(y), y, -np.inf)
    imax = np.argmax(filled, axis=1)
    rows = np.arange(n)
    amp = filled[rows, imax]
    amp = np.where(np.isfinite(amp), amp, np.nan)
    center = x[rows, imax]
    half = amp / 2
    j = np.arange(m)[None, :]
    below = (filled < half[:, None]) & np.isfinite(y)
    left = np.where(below & (j < imax[:, None]), j, -1).max(axis=1)
    right = np.where(below & (j > imax[:, None]), j, m).min(axis=1)

    def crossing(edge, inner):
        ok = (edge >= 0) & (edge < m)
        e = np.clip(edge, 0, m - 1)
        ye, yi = filled[rows, e], filled[rows, inner]
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(np.isfinite(ye) & (yi != ye), (yi - half) / (yi - ye), 0.5)
        t = np.clip(np.nan_to_num(t, nan=0.5), 0, 1)
        xe, xi = x[rows, e], x[rows, inner]
        end = np.where(ok, xi + t * (xe - xi), x[rows, np.where(edge < 0, 0, m - 1)])
        return end

    x_left = crossing(left, np.clip(left + 1, 0, m - 1))
    x_right = crossing(right, np.clip(right - 1, 0, m - 1))
    spacing = np.abs(np.diff(x, axis=1)).min(axis=1) if m > 1 else np.ones(n)
    fwhm = np.maximum(np.abs(x_right - x_left), spacing)
    return amp, center, fwhm


def _g1d(x, y):
    amp, c, w = peak_stats(x[0], y)
    return {"amplitude": amp, "mean": c, "stddev": w / _FWHM_PER_SIGMA}


def _lorentz(x, y):
    amp, c, w = peak_stats(x[0], y)
    return {"amplitude": amp, "x_0": c, "fwhm": w}


def _moffat(x, y):
    amp, c, w = peak_stats(x[0], y)
    alpha = 2.0
    gamma = w / (2 * np.sqrt(2 ** (1 / alpha) - 1))
    return {"amplitude": amp, "x_0": c, "gamma": gamma, "alpha": np.full_like(amp, alpha)}


def _voigt(x, y):
    from astropy.modeling.models import Voigt1D

    amp, c, w = peak_stats(x[0], y)
    fwhm = w / 1.6
    peak_per_amplitude = Voigt1D().evaluate(0.0, 0.0, 1.0, fwhm, fwhm)
    return {"x_0": c, "amplitude_L": amp / peak_per_amplitude, "fwhm_L": fwhm, "fwhm_G": fwhm}


def _g2d(x, y):
    xx, yy = (np.broadcast_to(v, y.shape) for v in x)
    w = np.where(np.isfinite(y), np.clip(y, 0, None), 0.0)
    total = w.sum(axis=1)
    total = np.where(total > 0, total, np.nan)
    mx = (w * xx).sum(axis=1) / total
    my = (w * yy).sum(axis=1) / total
    cxx = (w * (xx - mx[:, None]) ** 2).sum(axis=1) / total
    cyy = (w * (yy - my[:, None]) ** 2).sum(axis=1) / total
    cxy = (w * (xx - mx[:, None]) * (yy - my[:, None])).sum(axis=1) / total
    theta = 0.5 * np.arctan2(2 * cxy, cxx - cyy)  # direction of the major axis
    half_sum, root = (cxx + cyy) / 2, np.sqrt(((cxx - cyy) / 2) ** 2 + cxy**2)
    return {
        "amplitude": np.nanmax(np.where(np.isfinite(y), y, np.nan), axis=1),
        "x_mean": mx,
        "y_mean": my,
        "x_stddev": np.sqrt(np.abs(half_sum + root)),
        "y_stddev": np.sqrt(np.abs(half_sum - root)),
        "theta": theta,
    }


_BUILTINS: list[bool] = []


def _ensure_builtins() -> None:
    if not _BUILTINS:
        _BUILTINS.append(True)
        _register_builtins()


def _register_builtins() -> None:
    from astropy.modeling import models

    register_guess(models.Gaussian1D)(_g1d)
    register_guess(models.Lorentz1D)(_lorentz)
    register_guess(models.Moffat1D)(_moffat)
    register_guess(models.Voigt1D)(_voigt)
    register_guess(models.Gaussian2D)(_g2d)


def _leaves(model) -> list:
    """The additive components of a model (a single model is its own leaf)."""
    from astropy.modeling.core import CompoundModel

    if isinstance(model, CompoundModel):
        if model.op != "+":
            raise ValueError(
                f"p0='auto' handles sums of components; this model combines them with {model.op!r}"
            )
        return _leaves(model.left) + _leaves(model.right)
    return [model]


def plan_guess(model) -> tuple[list, list[int], list[int]]:
    """Components of ``model``, which are peaks and which linear; raises if one has no guess."""
    _ensure_builtins()
    leaves = _leaves(model)
    peaks = [i for i, leaf in enumerate(leaves) if type(leaf) in GUESSES]
    linear = [i for i, leaf in enumerate(leaves) if i not in peaks and leaf.linear]
    unknown = [type(leaves[i]).__name__ for i in range(len(leaves)) if i not in peaks + linear]
    if unknown:
        raise ValueError(
            f"p0='auto' has no guess for {unknown}; register one with "
            "xarray_modelfit.register_guess or give p0 for it"
        )
    return leaves, peaks, linear


def _evaluate(leaf, x, values: dict[str, np.ndarray]) -> np.ndarray:
    params = [np.asarray(values[n])[:, None] for n in leaf.param_names]
    return leaf.evaluate(*x, *params)


def guessers_for(model) -> dict[type, Callable]:
    """The guess functions a model needs, to ship with the plan to workers
    (a worker process does not see registrations made in the user's session)."""
    leaves, peaks, _ = plan_guess(model)
    return {type(leaves[i]): GUESSES[type(leaves[i])] for i in peaks}


def guess_block(block: FitBlock, model, guessers: dict[type, Callable] | None = None) -> np.ndarray:
    """Initial values ``(n, P)`` for every fit of ``block``; fixed parameters keep ``block.p0``."""
    if guessers is not None:
        for cls, func in guessers.items():
            GUESSES.setdefault(cls, func)
    leaves, peaks, linear = plan_guess(model)
    guessers = {**GUESSES, **(guessers or {})}
    n = block.n
    x = block.x
    y = np.where(block.valid, block.y, np.nan)
    offsets = np.cumsum([0] + [len(leaf.param_names) for leaf in leaves])
    out = block.p0.copy()
    baseline = np.zeros((n, 1))
    if linear:
        with np.errstate(all="ignore"):
            lower_half = np.where(y <= np.nanmedian(y, axis=1, keepdims=True), y, np.nan)
            baseline = np.nan_to_num(np.nanmedian(lower_half, axis=1, keepdims=True))
    resid = y - baseline
    peak_sum = np.zeros_like(y)
    found = []
    for i in peaks:
        leaf = leaves[i]
        values = guessers[type(leaf)](x, resid)
        values = {k: np.nan_to_num(np.asarray(v, dtype=float), nan=1.0) for k, v in values.items()}
        for j, name in enumerate(leaf.param_names):
            if name in values and not leaf.fixed[name]:
                out[:, offsets[i] + j] = values[name]
            values[name] = out[:, offsets[i] + j]
        profile = _evaluate(leaf, x, values)
        resid = resid - profile
        peak_sum = peak_sum + profile
        found.append(i)
    _order_by_position([leaves[i] for i in found], [offsets[i] for i in found], out)
    if linear:
        _fit_linear_leaves(
            [leaves[i] for i in linear], [offsets[i] for i in linear], x, y - peak_sum, out
        )
    return out


def _order_by_position(leaves, starts, out) -> None:
    """Peaks found in order of strength, given to components in order of position.

    When every peak component is of the same class and nothing is fixed, the
    component with the lowest position gets the leftmost peak, so component
    ``k`` means the same line across a map.
    """
    if len(leaves) < 2 or len({type(leaf) for leaf in leaves}) != 1:
        return
    leaf = leaves[0]
    if any(any(lf.fixed.values()) or any(lf.tied.values()) for lf in leaves):
        return
    names = leaf.param_names
    center = next((n for n in ("mean", "x_0", "x_mean") if n in names), None)
    if center is None:
        return
    k = len(names)
    block = np.stack([out[:, s : s + k] for s in starts], axis=1)  # (n, components, k)
    order = np.argsort(block[:, :, names.index(center)], axis=1, kind="stable")
    block = np.take_along_axis(block, order[:, :, None], axis=1)
    for c, s in enumerate(starts):
        out[:, s : s + k] = block[:, c]


def _fit_linear_leaves(leaves, starts, x, target, out) -> None:
    """Least-squares values of the linear components' free parameters, per fit."""
    cols, where = [], []
    for leaf, start in zip(leaves, starts, strict=True):
        derivs = leaf.fit_deriv(*(np.broadcast_to(v, target.shape) for v in x), *leaf.parameters)
        derivs = (
            derivs
            if isinstance(derivs, list | tuple)
            else list(np.moveaxis(np.asarray(derivs), -1, 0))
        )
        for j, name in enumerate(leaf.param_names):
            if not leaf.fixed[name]:
                cols.append(np.broadcast_to(derivs[j], target.shape))
                where.append(start + j)
    if not cols:
        return
    valid = np.isfinite(target)
    A = np.stack([np.where(valid, c, 0.0) for c in cols], axis=-1)  # (n, m, k)
    b = np.where(valid, target, 0.0)
    AtA = np.einsum("nmi,nmj->nij", A, A) + 1e-12 * np.eye(len(cols))
    Atb = np.einsum("nmi,nm->ni", A, b)
    sol = np.linalg.solve(AtA, Atb[..., None])[..., 0]
    for k, col in enumerate(where):
        out[:, col] = sol[:, k]


def guess_chunk(data, weights, mask, world, p0, *, plan, guessers=None) -> np.ndarray:
    """``apply_ufunc`` kernel: initial values ``lead + (P,)`` for one chunk."""
    from xarray_modelfit.kernel.chunk import build_block

    P = plan.layout.n_params
    open_bounds = np.full(P, np.inf)
    block, _, lead = build_block(
        data, weights, mask, world, p0, -open_bounds, open_bounds, np.zeros(()), plan=plan
    )
    if block.n == 0:
        return np.empty(lead + (P,))
    with np.errstate(all="ignore"):
        values = guess_block(block, plan.setup.model, guessers)
    return values.reshape(lead + (P,))


#: per model class: parameters that are a position on input ``i`` and widths along input ``i``
#: (``bounds="auto"``); amplitudes are left open, so absorption lines stay possible
AXIS_ROLES: dict[str, dict[str, tuple[str, int]]] = {
    "Gaussian1D": {"mean": ("position", 0), "stddev": ("width", 0)},
    "Lorentz1D": {"x_0": ("position", 0), "fwhm": ("width", 0)},
    "Moffat1D": {"x_0": ("position", 0), "gamma": ("width", 0)},
    "Voigt1D": {"x_0": ("position", 0), "fwhm_L": ("width", 0), "fwhm_G": ("width", 0)},
    "Gaussian2D": {
        "x_mean": ("position", 0),
        "y_mean": ("position", 1),
        "x_stddev": ("width", 0),
        "y_stddev": ("width", 1),
    },
}


def axis_bounds(model, lo, hi, step) -> dict[str, tuple[float, float]]:
    """Bounds that keep every peak component on the axes (``bounds="auto"``).

    ``lo``, ``hi`` and ``step`` give, per model input, the range of the world
    values and their smallest typical spacing. A position parameter is bounded
    to its input's range, a width to between half a step and the range's span.
    Parameters the user already bounded (other than the class's default), and
    other components, are left as they are.
    """
    from astropy.modeling.core import CompoundModel

    try:
        leaves = _leaves(model)
    except ValueError:  # not a sum: only a single model's own roles apply
        leaves = [model] if not isinstance(model, CompoundModel) else []
    names = list(model.param_names)
    offsets = np.cumsum([0] + [len(leaf.param_names) for leaf in leaves])
    out = {}
    for leaf, start in zip(leaves, offsets, strict=False):
        roles = AXIS_ROLES.get(type(leaf).__name__, {})
        for j, local in enumerate(leaf.param_names):
            if local not in roles:
                continue
            name = names[start + j] if len(leaves) > 1 else local
            if model.fixed[name] or model.tied[name]:
                continue
            if tuple(model.bounds[name]) != tuple(type(leaf)().bounds[local]):
                continue  # bounded by the user
            role, i = roles[local]
            if role == "position":
                out[name] = (float(lo[i]), float(hi[i]))
            else:
                out[name] = (0.5 * float(step[i]), max(float(hi[i] - lo[i]), float(step[i])))
    return out
