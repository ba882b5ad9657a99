"""The model side of the batched engine: what it supports, residuals and Jacobians.

:class:`Problem` evaluates a model's residuals and Jacobian for ``n`` fits at
once, one row of parameters per fit (``model.evaluate(x, *params)`` with
parameter columns of shape ``(n, 1)``), with fixed and tied parameters,
weights and masks; :class:`Data` holds the arrays of the fits being solved.
:func:`batched_support` says whether a model and fitter can be batched, and
why not.

Jacobian: analytic from ``fit_deriv`` (compound ``+ - * /`` models leaf by
leaf, since astropy's compound ``fit_deriv`` does not broadcast over parameter
arrays) unless absent, ``estimate_jacobian=True``, or a probe finds it does not
broadcast or disagrees with finite differences; then forward differences with
the fitter's steps (scipy's ``2-point`` with ``diff_step=epsilon``; MINPACK's
``epsilon |q|``). Ties enter by the chain rule, ``dp_tied/dq`` from central
differences of the tie expressions evaluated on parameter arrays.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = [
    "NONLINEAR_FITTERS",
    "Data",
    "Problem",
    "batched_support",
    "fitter_kind",
    "model_support",
]

NONLINEAR_FITTERS = ("LevMarLSQFitter", "LMLSQFitter", "TRFLSQFitter", "DogBoxLSQFitter")
_EPS = np.finfo(float).eps


def fitter_kind(fitter: Any) -> str | None:
    """'nonlinear', 'linear' or None, by exact class (subclasses may change behaviour)."""
    from astropy.modeling import fitting

    if type(fitter) is fitting.LinearLSQFitter:
        return "linear"
    if type(fitter) in {getattr(fitting, name) for name in NONLINEAR_FITTERS}:
        return "nonlinear"
    return None


# --------------------------------------------------------------------------- support
def batched_support(model: Any, fitter: Any) -> str | None:
    """Say whether the batched engine can fit ``model`` with ``fitter``.

    Parameters
    ----------
    model : astropy.modeling.Model
        Unitless model with scalar parameters.
    fitter : astropy fitter instance

    Returns
    -------
    str or None
        ``None`` when supported, otherwise a sentence saying why not.
    """
    kind = fitter_kind(fitter)
    if kind == "linear":
        from xarray_modelfit.kernel.linear import linear_support

        return linear_support(model)
    if kind is None:
        return (
            f"the batched engine supports {', '.join(NONLINEAR_FITTERS)} and "
            f"LinearLSQFitter, not {type(fitter).__name__}"
        )
    return model_support(model)


def model_support(model: Any) -> str | None:
    """Checks common to both batched paths: model shape and broadcasting."""
    name = type(model).__name__
    if not getattr(model, "fittable", False):
        return f"{name} is not fittable"
    if model.n_outputs != 1 or len(model) != 1:
        return "the batched engine fits single models with one output only"
    if any(np.size(getattr(model, nm).value) != 1 for nm in model.param_names):
        return "the batched engine needs scalar parameters"
    p, x = probe_params(model), probe_x(model)
    try:
        batch = np.broadcast_to(model.evaluate(*x, *_cols(p)), (2, x[0].shape[1]))
        single = [np.broadcast_to(model.evaluate(*x, *row), x[0].shape)[0] for row in p]
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot broadcast"
        return (
            f"{name}.evaluate does not broadcast over (n, 1) parameter arrays "
            f"({type(exc).__name__}: {exc})"
        )
    if not np.allclose(batch, single, rtol=1e-10, atol=0, equal_nan=True):
        return f"{name}.evaluate gives other values for (n, 1) parameter arrays than for scalars"
    return None


def probe_params(model: Any) -> np.ndarray:
    """Two rows of parameters near the model's own values (data independent)."""
    p = np.asarray(model.parameters, dtype=float)
    p = np.where(p == 0, 0.25, p)
    return np.stack([p, p * 1.1 + 0.01])


def probe_x(model: Any) -> tuple[np.ndarray, ...]:
    """Seven world points per input, shape (1, 7)."""
    return tuple(np.linspace(0.3, 1.7, 7)[None, :] + 0.05 * k for k in range(model.n_inputs))


def _cols(p: np.ndarray) -> list[np.ndarray]:
    """Parameter columns of shape (n, 1) for ``model.evaluate``."""
    return [p[:, j : j + 1] for j in range(p.shape[1])]


# --------------------------------------------------------------------------- ties
class _ArrayParam(np.ndarray):
    """An array standing in for a Parameter inside tie expressions."""

    unit = None

    @property
    def value(self) -> np.ndarray:
        return self.view(np.ndarray)

    quantity = value


class _TieProxy:
    """Model stand-in whose parameters are arrays of shape (n,); ``m[i]`` works too."""

    def __init__(self, model: Any, values: dict[str, np.ndarray], names: dict[str, str]):
        self.__dict__.update(_model=model, _values=values, _names=names)

    def __getattr__(self, name: str) -> Any:
        if name in self._names:
            return self._values[self._names[name]].view(_ArrayParam)
        return getattr(self._model, name)

    def __getitem__(self, key: Any) -> _TieProxy:
        sub = self._model[key]
        (idx,) = [i for i in range(self._model.n_submodels) if self._model[i] is sub]
        names = {ln: cn for cn, (li, ln) in self._model._param_map.items() if li == idx}
        return _TieProxy(sub, self._values, names)


# --------------------------------------------------------------------------- derivatives
def _gauss1d_value(x: np.ndarray, amplitude: Any, mean: Any, stddev: Any) -> np.ndarray:
    """Gaussian1D.evaluate with in-place temporaries (the target model of the engine)."""
    z = x - mean
    z *= z
    z *= -0.5 / stddev**2
    np.exp(z, out=z)
    z *= amplitude
    return z


def _gauss1d_deriv(x: np.ndarray, amplitude: Any, mean: Any, stddev: Any) -> list[np.ndarray]:
    """Gaussian1D.fit_deriv with shared, in-place temporaries (3x faster)."""
    z = x - mean
    z *= 1.0 / stddev
    e = z * z
    e *= -0.5
    np.exp(e, out=e)
    d_mean = e * z
    d_mean *= amplitude / stddev
    return [e, d_mean, d_mean * z]


@functools.cache
def _fast_kernels() -> dict[type, tuple[Any, Any]]:
    """Exact model class -> (value, fit_deriv) replacements; checked by the probes."""
    from astropy.modeling.functional_models import Gaussian1D

    return {Gaussian1D: (_gauss1d_value, _gauss1d_deriv)}


class _NoAnalytic(Exception):
    """The analytic Jacobian is unavailable for this model."""


def _tree_deriv(model: Any, x: tuple, params: list, shape: tuple, value: bool = False) -> tuple:
    """Value (if asked for, else None) and derivatives, one (n, m) array per parameter."""
    from astropy.modeling.core import CompoundModel

    if isinstance(model, CompoundModel):
        op = model.op
        if op not in ("+", "-", "*", "/"):
            raise _NoAnalytic(f"operator {op!r}")
        nl = len(model.left.param_names)
        both = value or op in ("*", "/")
        lv, ld = _tree_deriv(model.left, x, params[:nl], shape, both)
        rv, rd = _tree_deriv(model.right, x, params[nl:], shape, both)
        if op == "+":
            return (lv + rv if value else None), ld + rd
        if op == "-":
            return (lv - rv if value else None), ld + [-d for d in rd]
        if op == "*":
            return lv * rv, [d * rv for d in ld] + [lv * d for d in rd]
        return lv / rv, [d / rv for d in ld] + [-lv * d / rv**2 for d in rd]
    if model.fit_deriv is None:
        raise _NoAnalytic(f"{type(model).__name__} has no fit_deriv")
    val = np.broadcast_to(model.evaluate(*x, *params), shape) if value else None
    fast = _fast_kernels().get(type(model))
    raw = (fast[1] if fast else model.fit_deriv)(*x, *params)
    if not model.col_fit_deriv:
        raw = np.moveaxis(np.asarray(raw), -1, 0)
    out = []
    for d in raw:
        d = np.asarray(d, dtype=float)
        try:
            out.append(np.broadcast_to(d, shape))
        except ValueError:
            if d.size != shape[0] * shape[1]:
                raise _NoAnalytic("fit_deriv output has an unexpected shape") from None
            out.append(d.reshape(shape))
    if len(out) != len(params):
        raise _NoAnalytic("fit_deriv returned the wrong number of derivatives")
    return val, out


def _fd_step(q: np.ndarray, hi: np.ndarray, rel: float) -> np.ndarray:
    """scipy's 2-point step for a given ``rel_step``, turned back at the upper bound."""
    sign = np.where(q >= 0, 1.0, -1.0)
    h = rel * sign * np.abs(q)
    h = np.where((q + h) - q == 0, rel * sign * np.maximum(1.0, np.abs(q)), h)
    return np.where(q + h > hi, -h, h)


# --------------------------------------------------------------------------- problem
class Data:
    """Arrays of a subset of fits: x, y, valid, w (or None), p0, lo/hi/pinned (free
    params), rows."""

    def __init__(self, **kw: Any):
        self.__dict__.update(kw)

    def take(self, sel: np.ndarray, skip: tuple[str, ...] = ()) -> Data:
        new = {
            k: (v[sel] if isinstance(v, np.ndarray) and k not in skip else v)
            for k, v in self.__dict__.items()
        }
        new["x"] = tuple(xx if xx.shape[0] == 1 else xx[sel] for xx in self.x)
        return Data(**new)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows.size, self.y.shape[1])  # y may be left untaken


class Problem:
    """Model and constraints; residuals and Jacobians over parameter arrays."""

    def __init__(self, model: Any, kwargs: dict[str, Any], minpack: bool = False):
        from astropy.modeling.optimizers import DEFAULT_EPS

        self.model = model
        # MINPACK fitters (astropy's use_min_max_bounds): the model sees the free
        # parameters clipped to their bounds; fit_deriv sees them as they are
        # unless the model has fixed or tied parameters (astropy's _wrap_deriv)
        self.clip = minpack
        self.fd_minpack = minpack
        names = list(model.param_names)
        self.P = len(names)
        self.ties = [(j, model.tied[nm]) for j, nm in enumerate(names) if model.tied[nm]]
        self.tied_idx = np.array([j for j, _ in self.ties], dtype=int)
        fixed = [j for j, nm in enumerate(names) if model.fixed[nm]]
        self.free = np.setdiff1d(np.arange(self.P), np.r_[fixed, self.tied_idx].astype(int))
        self.K = self.free.size
        self.jac_raw = minpack and not (fixed or self.ties)
        self.eps = float(kwargs.get("epsilon", DEFAULT_EPS))
        self.failed: dict[int, str] = {}  # block row -> message of the exception
        fast = _fast_kernels().get(type(model))
        self.evaluate = fast[0] if fast else model.evaluate
        self.tie_proxy = bool(self.ties) and self._check_proxy()
        self.analytic = not kwargs.get("estimate_jacobian", False) and self._check_analytic()

    def full(self, q: np.ndarray, p0: np.ndarray) -> np.ndarray:
        """Full parameters (n, P): p0 for fixed ones, q for free ones, ties applied."""
        p = p0.copy()
        p[:, self.free] = q
        if not self.ties:
            return p
        names = self.model.param_names
        if self.tie_proxy:
            proxy = _TieProxy(
                self.model, {nm: p[:, j] for j, nm in enumerate(names)}, {nm: nm for nm in names}
            )
            for j, fn in self.ties:
                p[:, j] = np.broadcast_to(np.asarray(fn(proxy), dtype=float), p.shape[:1])
            return p
        mc = self.model.copy()  # fall back to a real model, one fit at a time
        for i in range(p.shape[0]):
            mc.parameters = p[i]
            for j, fn in self.ties:
                p[i, j] = float(np.asarray(fn(mc)))
                setattr(mc, names[j], p[i, j])
        return p

    def _check_proxy(self) -> bool:
        """Do the tie expressions give on arrays what they give on a real model?"""
        p = probe_params(self.model)
        try:
            self.tie_proxy = True
            a = self.full(p[:, self.free], p)
        except Exception:  # noqa: BLE001 - the proxy cannot run this tie
            return False
        self.tie_proxy = False
        return bool(
            np.allclose(a, self.full(p[:, self.free], p), rtol=1e-12, atol=0, equal_nan=True)
        )

    def values(self, p: np.ndarray, d: Data) -> np.ndarray:
        """Model values (n, m); fits whose evaluation raises get NaN and join ``failed``."""
        with np.errstate(all="ignore"):
            try:
                return np.broadcast_to(self.evaluate(*d.x, *_cols(p)), d.shape)
            except Exception:  # noqa: BLE001 - isolate the failing fits
                one = lambda i: [self.model.evaluate(*d.take([i]).x, *_cols(p[i : i + 1]))]  # noqa: E731
                return self._per_fit(d, one, 1)[0]

    def _per_fit(self, d: Data, fn: Any, n_out: int) -> list[np.ndarray]:
        """``fn(i)`` (n_out arrays of shape (1, m)) fit by fit; raising fits get NaN."""
        out = [np.full(d.shape, np.nan) for _ in range(n_out)]
        for i in range(d.shape[0]):
            try:
                for o, v in zip(out, fn(i), strict=True):
                    o[i] = np.broadcast_to(v, (1, d.shape[1]))[0]
            except Exception as exc:  # noqa: BLE001
                self.failed[int(d.rows[i])] = f"{type(exc).__name__}: {exc}"
        return out

    def resid(self, q: np.ndarray, d: Data) -> np.ndarray:
        """Weighted residuals (n, m), zero at invalid points."""
        if self.clip:
            q = np.clip(q, d.lo, d.hi)
        f = self.values(self.full(q, d.p0), d)
        with np.errstate(all="ignore"):
            r = f - d.y
            if d.w is not None:
                r *= d.w
        return r if d.all_valid else np.where(d.valid, r, 0.0)

    def jac(self, q: np.ndarray, d: Data, r: np.ndarray | None) -> list[np.ndarray]:
        """Weighted Jacobian of the residuals: K arrays of shape (n, m).

        If ``fit_deriv`` raises for the batch, fits are redone one by one and the
        raising ones get NaN columns and join ``failed``.
        """
        try:
            return self._jac(q, d, r)
        except Exception:  # noqa: BLE001 - isolate the failing fits
            if d.shape[0] == 1:
                raise
        rr = (lambda i: None) if r is None else (lambda i: r[i : i + 1])  # noqa: E731
        return self._per_fit(d, lambda i: self._jac(q[i : i + 1], d.take([i]), rr(i)), self.K)

    def _jac(self, q: np.ndarray, d: Data, r: np.ndarray | None) -> list[np.ndarray]:
        n, m = d.shape
        with np.errstate(all="ignore"):
            if not self.analytic:
                if self.fd_minpack:  # lmdif: forward steps epsilon |q| (epsilon at 0)
                    h = self.eps * np.where(q == 0, 1.0, np.abs(q))
                else:
                    h = _fd_step(q, d.hi, self.eps)
                J = []
                for k in range(self.K):
                    qk = q.copy()
                    qk[:, k] += h[:, k]
                    J.append((self.resid(qk, d) - r) / (qk[:, k] - q[:, k])[:, None])
                return J
            if self.clip and not self.jac_raw:
                q = np.clip(q, d.lo, d.hi)
            derivs = _tree_deriv(self.model, d.x, _cols(self.full(q, d.p0)), (n, m))[1]
            J = [derivs[j] for j in self.free]
            if self.ties:
                dT = self._tie_grad(q, d.p0)  # (T, K, n)
                for k in range(self.K):
                    for t, j in enumerate(self.tied_idx):
                        J[k] = J[k] + dT[t, k][:, None] * derivs[j]
            if d.w is not None:
                J = [Jk * d.w for Jk in J]
            if not d.all_valid:
                J = [np.where(d.valid, Jk, 0.0) for Jk in J]
            return [np.broadcast_to(Jk, (n, m)) for Jk in J]

    def _tie_grad(self, q: np.ndarray, p0: np.ndarray) -> np.ndarray:
        """Central differences of the tied values w.r.t. the free ones: (T, K, n)."""
        out = np.empty((self.tied_idx.size, self.K, q.shape[0]))
        h = _fd_step(q, np.full_like(q, np.inf), _EPS ** (1 / 3))
        for k in range(self.K):
            qp, qm = q.copy(), q.copy()
            qp[:, k] += h[:, k]
            qm[:, k] -= h[:, k]
            diff = self.full(qp, p0)[:, self.tied_idx] - self.full(qm, p0)[:, self.tied_idx]
            out[:, k] = (diff / (2 * h[:, k, None])).T
        return out

    def _check_analytic(self) -> bool:
        """Probe fit_deriv: does it broadcast over parameter rows and agree with FD?"""
        if self.model.fit_deriv is None or self.K == 0:
            return False
        p, x = probe_params(self.model), probe_x(self.model)
        inf = np.full((2, self.K), np.inf)
        d = Data(x=x, y=np.zeros((2, x[0].shape[1])), valid=None, w=None, p0=p, lo=-inf, hi=inf,
                  rows=np.array([-1, -2]), all_valid=True)  # fmt: skip
        q = p[:, self.free]
        try:
            self.analytic = True
            Ja = np.array(self._jac(q, d, None))
            rows = [
                np.array(self._jac(q[i : i + 1], d.take(np.array([i])), None))[:, 0] for i in (0, 1)
            ]
            self.analytic = False
            Jf = np.array(self._jac(q, d, self.resid(q, d)))
        except Exception:  # noqa: BLE001 - _NoAnalytic or a fit_deriv failing on arrays
            return False
        finally:
            self.failed.clear()
        if not np.allclose(Ja, np.stack(rows, axis=1), rtol=1e-10, atol=0, equal_nan=True):
            return False
        ok = np.isfinite(Ja) & np.isfinite(Jf)
        err = np.sqrt(np.sum(np.where(ok, Ja - Jf, 0) ** 2, axis=2))
        scale = np.sqrt(np.sum(np.where(ok, Jf, 0) ** 2, axis=2))
        return bool(np.all(err <= 1e-3 * scale + 1e-6 * scale.max()))
