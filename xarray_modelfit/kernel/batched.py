"""Batched non-linear least squares: one block of fits solved together.

``fit_batched`` minimises, independently for every fit of a ``FitBlock``,
``F(q) = 1/2 sum_j r_j^2``, ``r_j = w_j (f(x_j; p(q)) - y_j)`` over the valid
points, ``q`` being the free parameters (``p`` adds fixed values and tied
expressions). All fits advance in lock-step through numpy operations over a
leading batch axis, each with its own state (no fit influences another), and
fits that terminate leave the working arrays. Blocks are processed in slices
of ~2**18 points to bound temporaries.

Algorithm: the fitter's own, step by step (:mod:`xarray_modelfit.kernel._lsq`),
so that each fit lands where astropy's fitter lands: scipy's TRF for
``TRFLSQFitter`` and ``DogBoxLSQFitter`` (``x_scale=1``, Coleman-Li scaling and
reflective, strictly feasible steps with bounds), MINPACK's ``lmder`` for
``LevMarLSQFitter`` and ``LMLSQFitter`` (column-norm scaling; bounds as
astropy's ``use_min_max_bounds``: the model sees the parameters clipped to
their bounds). Tolerances and limits as astropy passes them: ``xtol=acc``,
``maxfev=maxiter``, scipy's ``ftol``/``gtol`` (``leastsq``'s for LevMar);
``nfev`` counts residual evaluations as the fitter does. A non-finite model
value ends a fit as ``SINGULAR``, as astropy's ``NonFiniteValueError`` does.
A free parameter with equal bounds is held at that value, as the loop engine
fixes it.

Jacobian: analytic from ``fit_deriv`` (compound ``+ - * /`` models leaf by
leaf, since astropy's compound ``fit_deriv`` does not broadcast over parameter
arrays) unless absent, ``estimate_jacobian=True``, or a probe finds it does not
broadcast or disagrees with finite differences; then forward differences with
the fitter's steps (scipy's ``2-point`` with ``diff_step=epsilon``; MINPACK's
``epsilon |q|``). Ties enter by the chain rule, ``dp_tied/dq`` from central
differences of the tie expressions evaluated on parameter arrays.

Covariance as astropy's ``_NLLSQFitter``: ``pinv(J^T J)`` at the solution,
singular values below ``eps max(J.shape) s[0]`` dropped (on normalised columns
of J, so independent of the parameters' scale), times ``chi2 / (N - K)``
without weights, none if ``N <= K``. A Jacobian whose normalised columns are
dependent by that rule marks the fit ``SINGULAR`` (the loop engine's
:func:`~xarray_modelfit.kernel.loop.rank_deficient`).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from xarray_modelfit.kernel import _lsq
from xarray_modelfit.kernel.block import BlockResult, EngineSetup, FitBlock
from xarray_modelfit.kernel.status import Status

__all__ = ["NONLINEAR_FITTERS", "batched_support", "fit_batched"]

NONLINEAR_FITTERS = ("LevMarLSQFitter", "LMLSQFitter", "TRFLSQFitter", "DogBoxLSQFitter")
_EPS = np.finfo(float).eps
_CHUNK_ELEMENTS = 2**20  # fits x points per pass: bounds temporaries, keeps arrays in cache
_BLOCK_ELEMENTS = 2**14  # fits x points per row block of the fused Gaussian kernels


def _fitter_kind(fitter: Any) -> str | None:
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
    kind = _fitter_kind(fitter)
    if kind == "linear":
        from xarray_modelfit.kernel.linear import linear_support

        return linear_support(model)
    if kind is None:
        return (
            f"the batched engine supports {', '.join(NONLINEAR_FITTERS)} and "
            f"LinearLSQFitter, not {type(fitter).__name__}"
        )
    return _model_support(model)


def _model_support(model: Any) -> str | None:
    """Checks common to both batched paths: model shape and broadcasting."""
    name = type(model).__name__
    if not getattr(model, "fittable", False):
        return f"{name} is not fittable"
    if model.n_outputs != 1 or len(model) != 1:
        return "the batched engine fits single models with one output only"
    if any(np.size(getattr(model, nm).value) != 1 for nm in model.param_names):
        return "the batched engine needs scalar parameters"
    p, x = _probe_params(model), _probe_x(model)
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


def _probe_params(model: Any) -> np.ndarray:
    """Two rows of parameters near the model's own values (data independent)."""
    p = np.asarray(model.parameters, dtype=float)
    p = np.where(p == 0, 0.25, p)
    return np.stack([p, p * 1.1 + 0.01])


def _probe_x(model: Any) -> tuple[np.ndarray, ...]:
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
class _Data:
    """Arrays of a subset of fits: x, y, valid, w (or None), p0, lo/hi/pinned (free
    params), rows."""

    def __init__(self, **kw: Any):
        self.__dict__.update(kw)

    def take(self, sel: np.ndarray, skip: tuple[str, ...] = ()) -> _Data:
        new = {
            k: (v[sel] if isinstance(v, np.ndarray) and k not in skip else v)
            for k, v in self.__dict__.items()
        }
        new["x"] = tuple(xx if xx.shape[0] == 1 else xx[sel] for xx in self.x)
        return _Data(**new)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows.size, self.y.shape[1])  # y may be left untaken


class _Problem:
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
        p = _probe_params(self.model)
        try:
            self.tie_proxy = True
            a = self.full(p[:, self.free], p)
        except Exception:  # noqa: BLE001 - the proxy cannot run this tie
            return False
        self.tie_proxy = False
        return bool(
            np.allclose(a, self.full(p[:, self.free], p), rtol=1e-12, atol=0, equal_nan=True)
        )

    def values(self, p: np.ndarray, d: _Data) -> np.ndarray:
        """Model values (n, m); fits whose evaluation raises get NaN and join ``failed``."""
        with np.errstate(all="ignore"):
            try:
                return np.broadcast_to(self.evaluate(*d.x, *_cols(p)), d.shape)
            except Exception:  # noqa: BLE001 - isolate the failing fits
                one = lambda i: [self.model.evaluate(*d.take([i]).x, *_cols(p[i : i + 1]))]  # noqa: E731
                return self._per_fit(d, one, 1)[0]

    def _per_fit(self, d: _Data, fn: Any, n_out: int) -> list[np.ndarray]:
        """``fn(i)`` (n_out arrays of shape (1, m)) fit by fit; raising fits get NaN."""
        out = [np.full(d.shape, np.nan) for _ in range(n_out)]
        for i in range(d.shape[0]):
            try:
                for o, v in zip(out, fn(i), strict=True):
                    o[i] = np.broadcast_to(v, (1, d.shape[1]))[0]
            except Exception as exc:  # noqa: BLE001
                self.failed[int(d.rows[i])] = f"{type(exc).__name__}: {exc}"
        return out

    def resid(self, q: np.ndarray, d: _Data) -> np.ndarray:
        """Weighted residuals (n, m), zero at invalid points."""
        if self.clip:
            q = np.clip(q, d.lo, d.hi)
        f = self.values(self.full(q, d.p0), d)
        with np.errstate(all="ignore"):
            r = f - d.y
            if d.w is not None:
                r *= d.w
        return r if d.all_valid else np.where(d.valid, r, 0.0)

    def jac(self, q: np.ndarray, d: _Data, r: np.ndarray | None) -> list[np.ndarray]:
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

    def _jac(self, q: np.ndarray, d: _Data, r: np.ndarray | None) -> list[np.ndarray]:
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
        p, x = _probe_params(self.model), _probe_x(self.model)
        inf = np.full((2, self.K), np.inf)
        d = _Data(x=x, y=np.zeros((2, x[0].shape[1])), valid=None, w=None, p0=p, lo=-inf, hi=inf,
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


# --------------------------------------------------------------------------- engine
class _Evaluator:
    """The residual side of :mod:`xarray_modelfit.kernel._lsq` for the running fits."""

    def __init__(self, prob: _Problem, data: _Data):
        self.prob, self.d = prob, data
        # Gaussian1D with three free, untied parameters and the analytic Jacobian:
        # the residual keeps ``z = (x - mean) / stddev`` and ``exp(-z^2 / 2)`` so
        # that J at an accepted trial point reuses them
        from astropy.modeling.functional_models import Gaussian1D

        self.fast = (
            type(prob.model) is Gaussian1D and prob.analytic and not prob.ties
            and not prob.clip and prob.K == 3 and len(data.x) == 1
        )  # fmt: skip
        self.cache: tuple | None = None

    @property
    def rows(self) -> np.ndarray:
        return self.d.rows

    @property
    def pinned(self) -> np.ndarray:
        return self.d.pinned

    def take(self, keep: np.ndarray) -> None:
        self.d = self.d.take(keep)
        self.cache = None

    def failed(self) -> np.ndarray:
        if not self.prob.failed:
            return np.zeros(self.d.rows.size, bool)
        return np.isin(self.d.rows, list(self.prob.failed))

    def resid(self, q: np.ndarray) -> np.ndarray:
        if not self.fast:
            return self.prob.resid(q, self.d)
        d = self.d
        n, m = d.shape
        x = d.x[0]
        amp, mean = q[:, 0:1], q[:, 1:2]
        z, e = np.empty((n, m)), np.empty((n, m))
        r = np.empty((n, m))
        bs = max(1, _BLOCK_ELEMENTS // max(1, m))
        with np.errstate(all="ignore"):
            inv = 1.0 / q[:, 2:3]
            for i in range(0, n, bs):  # row blocks: temporaries stay in cache
                j = slice(i, i + bs)
                zb, eb, rb = z[j], e[j], r[j]
                np.subtract(x if x.shape[0] == 1 else x[j], mean[j], out=zb)
                zb *= inv[j]
                np.multiply(zb, zb, out=eb)
                eb *= -0.5
                np.exp(eb, out=eb)
                np.multiply(eb, amp[j], out=rb)
                rb -= d.y[j]
                if d.w is not None:
                    rb *= d.w[j]
        self.cache = (q.copy(), z, e)
        return r if d.all_valid else np.where(d.valid, r, 0.0)

    def _cached(self, q: np.ndarray, idx: np.ndarray) -> tuple | None:
        """Cached ``z`` and ``exp(-z^2/2)`` at ``idx`` if ``q`` is the last residual's point."""
        if self.cache is None:
            return None
        cq, z, e = self.cache
        full = idx.size == cq.shape[0]
        if not np.array_equal(q, cq if full else cq[idx]):
            return None
        return z, e, (None if full else idx)

    def _fast_jac(self, q: np.ndarray, z: np.ndarray, e: np.ndarray, idx, d: _Data) -> list:
        """J from ``z`` and ``e`` (as :func:`_gauss1d_deriv`, weights, mask, pins)."""
        if idx is not None:
            z, e = z[idx], e[idx]
        with np.errstate(all="ignore"):
            d_mean = e * z
            d_mean *= q[:, 0:1] / q[:, 2:3]
            J = [e.copy(), d_mean, d_mean * z]
        if d.w is not None:
            for Jk in J:
                Jk *= d.w
        if not d.all_valid:
            for Jk in J:
                np.copyto(Jk, 0.0, where=~d.valid)
        if d.pinned.any():
            J = [np.where(d.pinned[:, k : k + 1], 0.0, Jk) for k, Jk in enumerate(J)]
        return J

    def _fast_normal(self, q, z, e, idx, r) -> tuple[np.ndarray, np.ndarray]:
        """``J^T J`` and ``J^T r`` of the plain Gaussian (no weights, mask or pins) by
        row blocks, J never formed in full."""
        n, m = r.shape
        A, g = np.empty((n, 3, 3)), np.empty((n, 3))
        c = q[:, 0:1] / q[:, 2:3]
        bs = max(1, _BLOCK_ELEMENTS // max(1, m))
        ein = np.einsum
        with np.errstate(all="ignore"):
            for i in range(0, n, bs):
                j = slice(i, i + bs)
                if idx is None:
                    zb, eb = z[j], e[j]
                else:
                    zb, eb = z[idx[j]], e[idx[j]]
                rb = r[j]
                j1 = eb * zb
                j1 *= c[j]
                j2 = j1 * zb
                Ab, gb = A[j], g[j]
                Ab[:, 0, 0] = ein("nm,nm->n", eb, eb)
                Ab[:, 0, 1] = Ab[:, 1, 0] = ein("nm,nm->n", j1, eb)
                Ab[:, 0, 2] = Ab[:, 2, 0] = ein("nm,nm->n", j2, eb)
                Ab[:, 1, 1] = ein("nm,nm->n", j1, j1)
                Ab[:, 1, 2] = Ab[:, 2, 1] = ein("nm,nm->n", j2, j1)
                Ab[:, 2, 2] = ein("nm,nm->n", j2, j2)
                gb[:, 0] = ein("nm,nm->n", eb, rb)
                gb[:, 1] = ein("nm,nm->n", j1, rb)
                gb[:, 2] = ein("nm,nm->n", j2, rb)
        return A, g

    def normal(self, q: np.ndarray, r: np.ndarray, idx: np.ndarray) -> tuple:
        d = self.d
        if idx.size != d.rows.size:
            d = d.take(idx, skip=("y",) if self.prob.analytic else ())
        ze = self._cached(q, idx) if self.fast else None
        if ze is None:
            J = _jac(self.prob, q, d, r)
            A, g = _lsq.normal(J, r)
        elif d.w is None and d.all_valid and not d.pinned.any():
            A, g = self._fast_normal(q, *ze, r)
            J = None
        else:
            J = self._fast_jac(q, *ze, d)
            A, g = _lsq.normal(J, r)
        # J^T J under- or overflows for a model far from the data (a Gaussian
        # 30 sigma away): those rows get J scaled by a power of two ``sig``
        diag = np.einsum("nkk->nk", A)
        with np.errstate(invalid="ignore"):
            big, small = diag.max(axis=1, initial=0.0), diag.min(axis=1, initial=1.0)
        sig = np.ones(len(A))
        redo = np.flatnonzero(~(big < 1e200) | (small < 1e-200))
        if redo.size:
            if J is None:
                J = self._fast_jac(q, *ze, d)
            mx = np.max([np.max(np.abs(Jk[redo]), axis=1) for Jk in J], axis=0)
            e = np.frexp(np.where(np.isfinite(mx) & (mx > 0), mx, 1.0))[1]
            sig[redo] = np.ldexp(1.0, np.clip(-e, -900, 900))
            A[redo], g[redo] = _lsq.normal([Jk[redo] * sig[redo, None] for Jk in J], r[redo])
        bad = ~(np.all(np.isfinite(A), axis=(1, 2)) & np.all(np.isfinite(g), axis=1))
        return A, g, sig, bad


def _jac(prob: _Problem, q: np.ndarray, d: _Data, r: np.ndarray | None) -> list[np.ndarray]:
    """J of the residuals; columns of pinned parameters (lower == upper) are zero."""
    J = prob.jac(q, d, r)
    if d.pinned.any():
        J = [np.where(d.pinned[:, k : k + 1], 0.0, Jk) for k, Jk in enumerate(J)]
    return J


def fit_batched(block: FitBlock, setup: EngineSetup) -> BlockResult:
    """Fit every active row of ``block`` as ``setup.fitter`` would, all rows at once.

    Parameters
    ----------
    block : FitBlock
        ``n`` fits sharing ``setup.model``.
    setup : EngineSetup
        Unitless model; fitter of :data:`NONLINEAR_FITTERS` (``LevMarLSQFitter``
        and ``LMLSQFitter`` run MINPACK's algorithm, ``TRFLSQFitter`` and
        ``DogBoxLSQFitter`` scipy's TRF; ``LinearLSQFitter`` dispatches to
        :func:`xarray_modelfit.kernel.linear.fit_linear`); ``fitter_kwargs``
        ``maxiter``, ``acc``, ``epsilon``, ``estimate_jacobian`` with astropy's
        defaults (others are ignored).

    Returns
    -------
    BlockResult
        ``CONVERGED``; ``CONVERGED_WITH_WARNINGS`` (MINPACK's info 6-8, which
        make astropy warn); ``MAX_ITERATIONS`` (parameters kept); ``SINGULAR``
        (non-finite model or Jacobian, as astropy's ``NonFiniteValueError``, or
        Jacobian with dependent normalised columns at the solution: NaN
        parameters); ``FAILED`` (the model raised, message in ``messages``);
        ``SKIPPED_NO_DATA`` / ``SKIPPED_TOO_FEW_POINTS`` for active rows with
        no or fewer valid points than free parameters.
    """
    from astropy.modeling.optimizers import DEFAULT_ACC, DEFAULT_MAXITER

    kind = _fitter_kind(setup.fitter)
    if kind == "linear":
        from xarray_modelfit.kernel.linear import fit_linear

        return fit_linear(block, setup)
    if kind is None:
        raise ValueError(batched_support(setup.model, setup.fitter))
    kw = dict(setup.fitter_kwargs or {})
    name = type(setup.fitter).__name__
    minpack = name in ("LevMarLSQFitter", "LMLSQFitter")
    prob = _Problem(setup.model, kw, minpack=minpack)
    res = BlockResult.empty(block.n, prob.P, setup.covariance)
    rows = _triage(block, prob.K, res)
    if rows.size == 0:
        return res
    levmar = name == "LevMarLSQFitter"  # scipy.optimize.leastsq's defaults
    opts = {
        "maxfev": int(kw.get("maxiter", DEFAULT_MAXITER)),
        "xtol": float(kw.get("acc", DEFAULT_ACC)),
        "ftol": 1.49012e-8 if levmar else 1e-8,
        "gtol": 0.0 if levmar else 1e-8,
    }
    step = max(1, _CHUNK_ELEMENTS // max(1, block.y.shape[1]))
    for start in range(0, rows.size, step):  # bounded temporaries, cache-friendly arrays
        data = _block_data(block, rows[start : start + step], prob)
        q0 = np.clip(data.p0[:, prob.free], data.lo, data.hi)
        ev = _Evaluator(prob, data)
        if minpack:
            out = _lsq.minpack(ev, q0, opts, res.messages)
        else:
            nval = data.valid.sum(axis=1)
            out = _lsq.trf(ev, q0, data.lo, data.hi, nval, opts, res.messages)
        if prob.clip:
            out["q"] = np.clip(out["q"], data.lo, data.hi)
        _finalise(prob, data, out, res, weighted=block.weights is not None)
    res.messages.update(prob.failed)
    return res


def _block_data(block: FitBlock, rows: np.ndarray, prob: _Problem) -> _Data:
    """The arrays of some rows; a free parameter with equal bounds is pinned
    (held at its bound with infinite bounds, as the loop engine fixes it)."""
    valid = block.valid[rows]
    all_valid = bool(valid.all())
    w = None if block.weights is None else block.weights[rows]
    lo, hi = block.lower[rows][:, prob.free], block.upper[rows][:, prob.free]
    pinned = lo == hi
    p0 = block.p0[rows].astype(float)
    p0[:, prob.free] = np.where(pinned, lo, p0[:, prob.free])
    return _Data(
        x=tuple(xx if xx.shape[0] == 1 else xx[rows] for xx in block.x),
        y=block.y[rows] if all_valid else np.where(valid, block.y[rows], 0.0),
        valid=valid,
        w=w if w is None or all_valid else np.where(valid, w, 0.0),
        p0=p0,
        lo=np.where(pinned, -np.inf, lo),
        hi=np.where(pinned, np.inf, hi),
        pinned=pinned,
        rows=rows,
        all_valid=all_valid,
    )


def _triage(block: FitBlock, K: int, res: BlockResult) -> np.ndarray:
    """Mark active rows with no / too few valid points; return the rows to fit."""
    rows = np.flatnonzero(block.active)
    nval = block.valid[rows].sum(axis=1)
    res.status[rows[nval == 0]] = Status.SKIPPED_NO_DATA
    res.status[rows[(nval > 0) & (nval < K)]] = Status.SKIPPED_TOO_FEW_POINTS
    return rows[(nval > 0) & (nval >= K)]


def _finalise(prob: _Problem, data: _Data, out: dict, res: BlockResult, weighted: bool) -> None:
    """Write parameters, chi2, nfev, rank check and covariance of the fitted rows."""
    rows, K, free, status = data.rows, prob.K, prob.free, out["status"]
    res.status[rows] = np.where(status < 0, Status.FAILED, status)
    res.nfev[rows] = out["nfev"]
    usable = (Status.CONVERGED, Status.CONVERGED_WITH_WARNINGS, Status.MAX_ITERATIONS)
    sel = np.flatnonzero(np.isin(status, usable))
    d, ab = data.take(sel), rows[sel]
    p = prob.full(out["q"][sel], d.p0)
    chi2 = 2 * out["F"][sel]
    nval = d.valid.sum(axis=1)
    cov = np.full((sel.size, K, K), np.nan)
    ok = np.isfinite(chi2)

    def jac(i: np.ndarray) -> list[np.ndarray]:  # J of some of the selected rows
        di, qi = d.take(i), out["q"][sel[i]]
        return _jac(prob, qi, di, None if prob.analytic else prob.resid(qi, di))

    if K and sel.size:
        cov, rank_ok = _lsq.pinv_cov(out["A"][sel], out["sig"][sel], jac, nval, d.pinned)
        if not weighted:
            with np.errstate(all="ignore"):
                cov *= (chi2 / (nval - K))[:, None, None]
        cov[nval <= K] = np.nan  # astropy: no covariance unless N > K
        for i in np.flatnonzero(ok & ~rank_ok):
            res.messages[int(ab[i])] = (
                "the Jacobian is rank-deficient at the solution: "
                "some parameters are not constrained by the data"
            )
        ok &= rank_ok
    res.status[ab[~ok]] = Status.SINGULAR
    res.params[ab[ok]] = p[ok]
    res.chi2[ab[ok]] = chi2[ok]
    st = np.full((sel.size, prob.P), np.nan)
    st[:, free] = np.sqrt(np.einsum("nkk->nk", cov))
    res.stderr[ab[ok]] = st[ok]
    if res.covariance is not None:
        full = np.full((sel.size, prob.P, prob.P), np.nan)
        full[:, free[:, None], free[None, :]] = cov
        res.covariance[ab[ok]] = full[ok]
