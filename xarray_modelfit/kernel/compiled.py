"""Compiled TRF and LM for the commonest models: one fit at a time, no temporaries.

The batched engine's numpy solver (:mod:`xarray_modelfit.kernel._lsq`) pays
for every iteration with some 25 passes over the ``(n, m)`` points and the
fixed cost of each numpy call; on a spectral cube that is most of its time.
For sums of ``Gaussian1D``, ``Const1D`` and ``Linear1D`` (one line, one line
on a baseline, several lines) this module runs the same algorithms compiled by
numba: each fit evaluates its model, residuals and normal equations in one
pass over its points per trial step, and the trust-region algebra on
``K x K`` matrices runs on small scratch arrays instead of ``(n, K, K)`` arrays.

The kernels are :func:`xarray_modelfit.kernel._lsq.trf` (``TRFLSQFitter``,
``DogBoxLSQFitter``) and :func:`xarray_modelfit.kernel._lsq.minpack`
(``LevMarLSQFitter``, ``LMLSQFitter``, with astropy's clipping of bounded
parameters) step by step, per fit: the same trust-region and LM-parameter
iterations, Coleman-Li scaling and ``select_step``, termination tests,
``nfev`` count, power-of-two rescaling of J where ``J^T J`` would under- or
overflow, statuses and messages, so a fit lands where the numpy solver and
astropy's fitter land. They release the GIL, so chunks run in parallel on
threads.

Used by :func:`xarray_modelfit.kernel.batched.fit_batched` when :func:`spec`
accepts the problem: analytic Jacobian (no ``estimate_jacobian``), no tied
parameters, one input. Everything else runs on the numpy solver.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = ["eigh", "inv", "solve", "spec"]

#: leaf codes and their parameter counts
GAUSSIAN1D, CONST1D, LINEAR1D = 0, 1, 2

#: per-fit message codes -> the numpy solver's messages (first one wins)
MESSAGES = {
    1: "the model is non-finite at the initial parameters",
    2: "the model became non-finite during the fit",
    3: "the Jacobian is non-finite",
    4: "MINPACK: the tolerances are too small, no further improvement is possible",
}


def _leaf_codes() -> dict[type, int]:
    from astropy.modeling.functional_models import Const1D, Gaussian1D, Linear1D

    return {Gaussian1D: GAUSSIAN1D, Const1D: CONST1D, Linear1D: LINEAR1D}


def _leaves(model: Any, codes: dict[type, int]) -> list[int] | None:
    """Leaf codes of a sum of supported models, left to right; None otherwise."""
    from astropy.modeling.core import CompoundModel

    if isinstance(model, CompoundModel):
        if model.op != "+":
            return None
        left, right = _leaves(model.left, codes), _leaves(model.right, codes)
        return None if left is None or right is None else left + right
    code = codes.get(type(model))  # exact class: a subclass may change evaluate
    return None if code is None else [code]


def spec(prob: Any, n_inputs: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Leaf codes and parameter offsets when the compiled solvers can fit ``prob``."""
    if prob.ties or not prob.analytic or n_inputs != 1 or _numba() is None:
        return None
    codes = _leaves(prob.model, _leaf_codes())
    if codes is None:
        return None
    sizes = np.array([(3, 1, 2)[c] for c in codes], dtype=np.int64)
    return np.array(codes, dtype=np.int64), np.concatenate([[0], np.cumsum(sizes)[:-1]])


@functools.cache
def _numba() -> Any:
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency; keep the numpy path working
        return None
    return numba


def solve(
    codes: np.ndarray, offs: np.ndarray, prob: Any, data: Any, q0: np.ndarray,
    opts: dict[str, Any], messages: dict[int, str],
) -> dict[str, np.ndarray]:  # fmt: skip
    """The fits of ``data`` by the compiled TRF, or MINPACK's LM if ``prob.clip``
    (astropy's MINPACK fitters); outputs as :func:`_lsq.trf` / :func:`_lsq.minpack`."""
    n, K = q0.shape
    m = data.y.shape[1]
    f64 = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
    x = f64(data.x[0])
    w = np.ones((1, m)) if data.w is None else f64(data.w)
    out = {
        "q": np.empty((n, K)), "status": np.empty(n, np.int64), "nfev": np.empty(n, np.int64),
        "F": np.empty(n), "A": np.empty((n, K, K)), "sig": np.empty(n), "A0": np.empty((n, K, K)),
    }  # fmt: skip
    msg = np.zeros(n, np.int64)
    kern = _kernels()
    kern.fit_all(
        bool(prob.clip), codes, offs, prob.free.astype(np.int64), x, f64(data.y), w,
        np.ascontiguousarray(data.valid, dtype=np.bool_), f64(data.p0), f64(q0),
        f64(data.lo), f64(data.hi), np.ascontiguousarray(data.pinned, dtype=np.bool_),
        data.valid.sum(axis=1).astype(np.int64), bool(prob.jac_raw),
        float(opts["ftol"]), float(opts["xtol"]), float(opts["gtol"]),
        int(opts["maxfev"]), out["q"], out["status"], out["nfev"], out["F"], out["A"],
        out["sig"], out["A0"], msg, kern.scratch(m, data.p0.shape[1], K),
    )  # fmt: skip
    for i in np.flatnonzero(msg):
        messages.setdefault(int(data.rows[i]), MESSAGES[int(msg[i])])
    return out


def eigh(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.linalg.eigh`` of a stack of small symmetric matrices (n, K, K), by
    Jacobi rotations: several times faster for the K of a model's free parameters,
    eigenvalues to a few eps of the largest, NaN for a matrix with NaN or inf."""
    A = np.ascontiguousarray(A, dtype=np.float64)
    if _numba() is None:
        return np.linalg.eigh(A)
    w, V = np.empty(A.shape[:2]), np.empty(A.shape)
    _kernels().eigh_all(A, w, V, np.empty(A.shape[1:]))
    return w, V


def inv(A: np.ndarray) -> np.ndarray:
    """``np.linalg.inv`` of a stack of small matrices (n, K, K); NaN where singular."""
    A = np.ascontiguousarray(A, dtype=np.float64)
    if _numba() is None:
        return np.linalg.inv(A)
    out = np.empty(A.shape)
    _kernels().inv_all(A, out, np.empty(A.shape[1:]), np.empty((2, A.shape[1])))
    return out


@functools.cache
def _kernels() -> Any:
    """Compile (or load from numba's cache) the kernels on first use."""
    from xarray_modelfit.kernel import _compiled_kernels

    return _compiled_kernels
