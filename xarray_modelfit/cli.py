"""Command line: ``xarray-modelfit demo`` and ``xarray-modelfit fit CUBE ...``.

Exit codes: 0 success, 1 the input could not be read or the fit could not run,
2 a usage error (unknown option, a dim the cube does not have, an output path of
an unknown type).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _UsageError(Exception):
    """A command-line argument that does not fit the input (exit code 2)."""


def _output_kind(path: Path, what: str, suffixes: tuple[str, ...]) -> None:
    if not path.name.lower().endswith(suffixes):
        raise _UsageError(f"{what} {str(path)!r} must end with {' or '.join(suffixes)}")


def _check_writable(path: Path, what: str, source: Path) -> None:
    """Before any fitting: the output is not the input, and its folder can hold it."""
    if path.resolve() == source.resolve():
        raise _UsageError(f"{what} {str(path)!r} is the input cube; give another path")
    for parent in path.resolve().parents:  # the first existing ancestor must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise _UsageError(f"{what} {str(path)!r}: {str(parent)!r} is a file, not a folder")
            break


def _write_outputs(result, out: Path, plot: Path | None) -> None:
    from xarray_modelfit.io import save_result

    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    save_result(result, out)
    print(f"wrote parameter maps to {out}")
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")  # a file is written, no window is opened
        import matplotlib.pyplot as plt

        from xarray_modelfit.plot import plot_maps

        fig = plot_maps(result)
        if plot.parent != Path(""):
            plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot, dpi=110, bbox_inches="tight")
        plt.close(fig)
        print(f"wrote map figure to {plot}")


def demo(args) -> int:
    """Fit a synthetic cube with known parameters and report errors against the truth."""
    from astropy.modeling import models

    import xarray_modelfit
    from xarray_modelfit.testing import gaussian_cube

    if args.size < 1:
        raise _UsageError(f"--size must be a positive integer, got {args.size}")
    cube, truth = gaussian_cube(ny=args.size, nx=args.size, nchan=64, noise=0.1, seed=0)
    print(f"synthetic cube {dict(cube.sizes)}: one Gaussian line per spectrum, noise sigma 0.1 K")
    model = models.Gaussian1D(amplitude=2.0, mean=0.0, stddev=1.2)
    start = time.perf_counter()
    result = xarray_modelfit.modelfit(cube, model, "velocity", engine=args.engine)
    elapsed = time.perf_counter() - start
    print(result.modelfit.summary(n_worst=3))
    n = result.attrs["n_fits"]
    print(
        f"\n{n} fits in {elapsed:.2f} s: {n / elapsed:,.0f} fits/s (engine={result.attrs['engine']})"
    )
    good = result.fit_status.values < int(xarray_modelfit.Status.SINGULAR)
    print("error against the true parameters (median |fit - truth| / median stderr):")
    for name in model.param_names:
        err = np.abs(result[name].values - truth[name])[good]
        se = result[f"{name}_stderr"].values[good]
        print(
            f"  {name:<10} median |error| = {np.median(err):.4f}   "
            f"median stderr = {np.median(se):.4f}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot = None if args.no_plot else out / "demo_maps.png"
    _write_outputs(result, out / "demo_params.nc", plot)
    return EXIT_OK


def moment_guesses(cube, dim: str) -> dict:
    """Per-position initial values of a Gaussian along ``dim``, from the data.

    ``amplitude`` is the peak; ``mean`` is the intensity-weighted mean of the
    world coordinate over the samples above half the peak; ``stddev`` is the
    width above half the peak (number of such samples times the median sample
    spacing) divided by 2.355, the FWHM of a unit Gaussian. Thresholding at half
    the peak keeps the noise in line-free samples out of the estimates.
    Positions without a positive peak get the median of the others. Returns
    DataArrays over the iterated dims, in the world coordinate's units, ready
    for ``p0=``. A dask-backed cube is reduced chunk by chunk.
    """
    import warnings

    import xarray as xr

    from xarray_modelfit.coords import world_inputs

    world = world_inputs(cube, [dim], None)[0].values
    data = cube.drop_vars(list(cube.coords))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN positions
        peak = data.max(dim)
        w = data.where(data >= peak / 2, 0.0)  # NaN and low samples weigh nothing
        total = w.sum(dim)
        moments = xr.Dataset(
            {
                "peak": peak,
                "mean": (w * world).sum(dim) / total,
                "n_above": (w > 0).sum(dim),
            }
        ).compute()
    spacing = np.abs(np.diff(np.asarray(world.transpose(dim, ...).values), axis=0))
    step = float(np.nanmedian(spacing)) if spacing.size else 1.0
    step = step if np.isfinite(step) and step > 0 else 1.0
    ok = np.isfinite(moments.peak) & (moments.peak > 0) & np.isfinite(moments["mean"])
    std = moments.n_above * step / (2 * np.sqrt(2 * np.log(2)))
    std = std.clip(step / 2, None)

    def fill(da, default):
        good = da.where(ok)
        value = float(good.median()) if bool(good.notnull().any()) else default
        out = da.where(ok, value).astype(float)
        out.attrs = {}  # plain numbers in the parameter's units (no data units)
        return out

    return {
        "amplitude": fill(moments.peak, 1.0),
        "mean": fill(moments["mean"], float(world.mean())),
        "stddev": fill(std, step),
    }


def fit(args) -> int:
    """Fit a Gaussian along a dim of a user's FITS / netCDF / zarr cube."""
    from astropy.modeling import models

    import xarray_modelfit
    from xarray_modelfit.io import open_cube

    out = Path(args.out)
    plot = Path(args.plot) if args.plot else None
    _output_kind(out, "--out", (".nc", ".zarr"))
    if plot is not None:
        _output_kind(plot, "--plot", (".png", ".pdf", ".svg"))
    path = Path(args.cube)
    _check_writable(out, "--out", path)
    if plot is not None:
        _check_writable(plot, "--plot", path)
    cube = open_cube(path, variable=args.variable)
    if args.dim not in cube.dims:
        raise _UsageError(f"{path} has no dim {args.dim!r}; its dims are {list(cube.dims)}")
    print(f"{path}: {cube.name or 'data'} {dict(cube.sizes)}, fitting along {args.dim!r}")
    p0 = moment_guesses(cube, args.dim)
    model = models.Gaussian1D(1.0, 0.0, 1.0)
    kwargs = {"engine": args.engine, "p0": p0}
    if not args.no_bounds:
        kwargs["bounds"] = "auto"  # the mean on the axis, the width from half a channel to its span
    if "units" not in cube.attrs:
        kwargs["data_unit"] = ""  # dimensionless data: the maps still get the axis units
    start = time.perf_counter()
    if args.progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            result = xarray_modelfit.modelfit(cube, model, args.dim, **kwargs)
    else:
        result = xarray_modelfit.modelfit(cube, model, args.dim, **kwargs)
    elapsed = time.perf_counter() - start
    print(result.modelfit.summary(n_worst=3))
    n = result.attrs["n_fits"]
    print(f"\n{n} fits in {elapsed:.2f} s: {n / max(elapsed, 1e-9):,.0f} fits/s")
    _write_outputs(result, out, plot)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xarray-modelfit",
        description="Fit astropy models along a dim of every position of a cube.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,fit}")
    d = sub.add_parser(
        "demo",
        help="fit an embedded synthetic cube with known parameters",
        description="Fit a synthetic cube of Gaussian lines with known parameters; print the "
        "summary, the speed and the error against the truth; write the maps.",
    )
    d.add_argument(
        "--size", type=int, default=100, help="map size: size x size spectra (default 100)"
    )
    d.add_argument("--engine", default="auto", choices=["auto", "loop", "batched"])
    d.add_argument("--out", default="modelfit-demo", help="output folder (default ./modelfit-demo)")
    d.add_argument("--no-plot", action="store_true", help="do not write the PNG of the maps")
    d.set_defaults(func=demo)
    f = sub.add_parser(
        "fit",
        help="fit a Gaussian along DIM of a FITS, netCDF or zarr cube",
        description="Fit a Gaussian along DIM at every other position of CUBE. Initial values "
        "come from the data (peak, intensity-weighted mean and width per position); the mean "
        "is bounded to the range of the axis and the width to between half a channel and its span (bounds='auto').",
    )
    f.add_argument("cube", help="FITS (.fits), netCDF (.nc) or zarr (.zarr) file")
    f.add_argument("--model", default="gaussian", choices=["gaussian"])
    f.add_argument("--dim", required=True, help="the dim to fit along (e.g. velocity)")
    f.add_argument(
        "--variable",
        help="data variable of a netCDF/zarr file (default: the first with two or more dims)",
    )
    f.add_argument("--engine", default="auto", choices=["auto", "loop", "batched"])
    f.add_argument("--out", required=True, help="netCDF (.nc) or zarr (.zarr) file for the maps")
    f.add_argument("--plot", help="image file (.png, .pdf, .svg) for a figure of the maps")
    f.add_argument(
        "--no-bounds",
        action="store_true",
        help="do not bound the mean to the axis range and the width to its span",
    )
    f.add_argument("--progress", action="store_true", help="show a progress bar while fitting")
    f.set_defaults(func=fit)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except _UsageError as exc:
        print(f"xarray-modelfit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError, TypeError) as exc:
        # FileNotFoundError, unreadable files (ModelFitError is a ValueError), bad input
        print(f"xarray-modelfit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
