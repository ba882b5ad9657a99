"""Command line: ``xarray-modelfit demo`` and ``xarray-modelfit fit CUBE ...``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

def _write_outputs(result, out: Path, plot: Path | None) -> None:
    from xarray_modelfit.io import save_result

    save_result(result, out)
    print(f"wrote parameter maps to {out}")
    if plot is not None:
        from xarray_modelfit.plot import plot_maps

        fig = plot_maps(result)
        fig.savefig(plot, dpi=110, bbox_inches="tight")
        print(f"wrote map figure to {plot}")


def demo(args) -> int:
    """Fit a synthetic cube with known parameters and report errors against the truth."""
    from astropy.modeling import models

    import xarray_modelfit
    from xarray_modelfit.testing import gaussian_cube

    cube, truth = gaussian_cube(ny=args.size, nx=args.size, nchan=64, noise=0.1, seed=0)
    print(f"synthetic cube {dict(cube.sizes)}: one Gaussian line per spectrum, noise sigma 0.1 K")
    model = models.Gaussian1D(amplitude=2.0, mean=0.0, stddev=1.2)
    start = time.perf_counter()
    result = xarray_modelfit.modelfit(cube, model, "velocity", engine=args.engine)
    elapsed = time.perf_counter() - start
    print(result.modelfit.summary(n_worst=3))
    n = result.attrs["n_fits"]
    print(f"\n{n} fits in {elapsed:.2f} s: {n / elapsed:,.0f} fits/s (engine={result.attrs['engine']})")
    good = result.fit_status.values < int(xarray_modelfit.Status.SINGULAR)
    print("error against the true parameters (median |fit - truth| / median stderr):")
    for name in model.param_names:
        err = np.abs(result[name].values - truth[name])[good]
        se = result[f"{name}_stderr"].values[good]
        print(f"  {name:<10} median |error| = {np.median(err):.4f}   median stderr = {np.median(se):.4f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_outputs(result, out / "demo_params.nc", out / "demo_maps.png" if not args.no_plot else None)
    return 0


def fit(args) -> int:
    """Fit a model along a dim of a user's FITS / netCDF / zarr cube."""
    import xarray_modelfit
    from xarray_modelfit.io import open_cube

    path = Path(args.cube)
    cube = open_cube(path, variable=args.variable)
    if args.dim not in cube.dims:
        print(f"error: {path} has no dim {args.dim!r}; its dims are {list(cube.dims)}", file=sys.stderr)
        return 2
    from astropy.modeling import models

    v = cube[args.dim].values if args.dim in cube.coords else np.arange(cube.sizes[args.dim], dtype=float)
    peak = float(np.nanmax(np.abs(cube.max(args.dim).values)))
    model = models.Gaussian1D(peak / 2 or 1.0, float(np.mean(v)), float(np.ptp(v) / 8 or 1.0))
    start = time.perf_counter()
    result = xarray_modelfit.modelfit(cube, model, args.dim, engine=args.engine)
    elapsed = time.perf_counter() - start
    print(result.modelfit.summary(n_worst=3))
    print(f"\n{result.attrs['n_fits']} fits in {elapsed:.2f} s")
    _write_outputs(result, Path(args.out), Path(args.plot) if args.plot else None)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="xarray-modelfit",
        description="Fit astropy models along a dim of every position of a cube.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="fit an embedded synthetic cube with known parameters")
    d.add_argument("--size", type=int, default=100, help="map size: size x size spectra (default 100)")
    d.add_argument("--engine", default="auto", choices=["auto", "loop", "batched"])
    d.add_argument("--out", default="modelfit-demo", help="output folder (default ./modelfit-demo)")
    d.add_argument("--no-plot", action="store_true", help="do not write the PNG of the maps")
    d.set_defaults(func=demo)
    f = sub.add_parser("fit", help="fit a Gaussian along DIM of a FITS, netCDF or zarr cube")
    f.add_argument("cube", help="FITS (.fits), netCDF (.nc) or zarr (.zarr) file")
    f.add_argument("--model", default="gaussian", choices=["gaussian"])
    f.add_argument("--dim", required=True, help="the dim to fit along (e.g. velocity)")
    f.add_argument("--variable", help="data variable of a netCDF/zarr file (default: the first)")
    f.add_argument("--engine", default="auto", choices=["auto", "loop", "batched"])
    f.add_argument("--out", required=True, help="netCDF file for the parameter maps")
    f.add_argument("--plot", help="PNG file for a figure of the maps")
    f.set_defaults(func=fit)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
