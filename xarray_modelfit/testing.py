"""Synthetic cubes with known parameters, for tests, benchmarks and the demo."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import xarray as xr


def gaussian_cube(
    ny: int = 8,
    nx: int = 9,
    nchan: int = 53,
    *,
    n_components: int = 1,
    noise: float = 0.05,
    continuum: float | None = None,
    seed: int = 0,
    velocity_unit: str = "km s-1",
    dtype=np.float64,
) -> tuple[xr.DataArray, dict[str, np.ndarray]]:
    """A spectral cube ``(velocity, y, x)`` of Gaussian lines with known truth.

    Component ``k`` has an amplitude of about 1.1..2.9, a mean that moves across
    the map and a width of about 1.2..1.6 (velocity units), all smooth over the
    map with a little scatter. Returns the cube and
    the true parameters keyed like the fitted model's ``param_names``
    (``amplitude``/``mean``/``stddev`` for one component, ``amplitude_0``,
    ... for several, ``amplitude_{n}`` for the continuum).
    """
    rng = np.random.default_rng(seed)
    v = np.linspace(-12.0, 12.0, nchan)
    yy, xx = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    data = np.zeros((nchan, ny, nx))
    truth: dict[str, np.ndarray] = {}
    spacing = 16.0 / max(n_components, 1)
    for k in range(n_components):
        amp = (
            2.0
            + 0.9 * np.cos(2.5 * (xx - 0.3 * k)) * np.sin(2.0 * yy + 1.0)
            + rng.normal(0, 0.05, (ny, nx))
        )
        mean = (
            -8.0 + spacing * (k + 0.5) + 1.5 * (0.6 * yy + 0.4 * xx) + rng.normal(0, 0.1, (ny, nx))
        )
        std = (
            1.2
            + 0.35 * np.exp(-((xx - 0.2) ** 2 + (yy + 0.1) ** 2) / 0.3)
            + rng.normal(0, 0.02, (ny, nx))
        )
        data += amp * np.exp(-0.5 * ((v[:, None, None] - mean) / std) ** 2)
        suffix = f"_{k}" if n_components > 1 or continuum is not None else ""
        truth[f"amplitude{suffix}"] = amp
        truth[f"mean{suffix}"] = mean
        truth[f"stddev{suffix}"] = std
    if continuum is not None:
        cont = continuum + 0.1 * yy
        data += cont
        truth[f"amplitude_{n_components}"] = cont
    data += rng.normal(0.0, noise, data.shape)
    cube = xr.DataArray(
        data.astype(dtype),
        dims=("velocity", "y", "x"),
        coords={
            "velocity": ("velocity", v, {"units": velocity_unit}),
            "y": np.arange(ny),
            "x": np.arange(nx),
        },
        name="intensity",
        attrs={"units": "K"},
    )
    return cube, truth


def shared_data_dir() -> Path | None:
    """The folder of real test data (``$XARRAY_MODELFIT_DATA`` or ``../shared/data``)."""
    import os

    env = os.environ.get("XARRAY_MODELFIT_DATA")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent.parent
    candidates.append(here.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def fit_reference(model, fitter, x, spectra, weights=None, **kwargs):
    """Fit each row of ``spectra`` (n, m) with the astropy fitter: the independent reference."""
    out = []
    for i, y in enumerate(spectra):
        good = np.isfinite(y)
        kw = dict(kwargs)
        if weights is not None:
            kw["weights"] = weights[i][good]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = fitter(model.copy(), x[good], y[good], **kw)
        out.append([getattr(fitted, n).value for n in fitted.param_names])
    return np.array(out)
