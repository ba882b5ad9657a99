"""Side-by-side benchmark on the L1448 13CO cube (astropy's parallel-fitting walkthrough).

Every tool fits ``Gaussian1D(amplitude=1, mean=4000 m/s, stddev=500 m/s)`` with
``mean`` bounded to (3000, 6000) m/s along the velocity axis of every pixel,
with the tool's default settings, in this one process:

* astropy ``parallel_fit_dask`` (default scheduler "processes", and "synchronous"),
* ``DataArray.modelfit(engine="loop")`` (default scheduler "processes", and "synchronous"),
* ``DataArray.modelfit(engine="batched")`` (default scheduler "threads"), if available,
* xarray ``DataArray.curvefit`` (scipy ``curve_fit`` per pixel) on numpy input, and
  on dask input chunked over (y, x) computed with dask's threaded scheduler.

Each is timed as the best of ``--repeat`` runs (process-pool start-up included).
Peak memory: RSS of this process plus all its child processes, sampled every
20 ms by a thread (see ``_common.PeakRSS``). Agreement is measured against
astropy's default run. Writes ``results/l1448.json`` (``l1448_subcube.json``
with ``--subcube``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("PYTHONWARNINGS", "ignore")  # inherited by spawned dask workers
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PeakRSS, machine_info, markdown_table, write_json  # noqa: E402

DEFAULT_FITS = Path("/work/shared/data/l1448_13co.fits")
SUB = (slice(None), slice(25, 75), slice(35, 85))
NAMES = ("amplitude", "mean", "stddev")
COLUMNS = [
    ("tool", "tool"),
    ("scheduler", "scheduler"),
    ("wall_s", "wall (s)", ".2f"),
    ("fits_per_s", "fits/s", ".0f"),
    ("speedup", "speed-up vs astropy", ".2f"),
    ("peak_rss_mb", "peak RSS (MB)", ".0f"),
    ("delta_rss_mb", "ΔRSS (MB)", ".0f"),
    ("n_converged", "converged"),
    ("nan_frac", "NaN params", "%"),
    ("mean_agree", "mean agree", "%"),
    ("chi2_ratio_median", "χ²/χ²_astropy median", ".8f"),
    ("chi2_worse", "χ² worse >0.1%", "%"),
    ("chi2_better", "χ² better >0.1%", "%"),
]


def walkthrough_model():
    import astropy.units as u
    from astropy.modeling import models

    model = models.Gaussian1D(amplitude=1 * u.one, mean=4000 * u.m / u.s, stddev=500 * u.m / u.s)
    model.mean.bounds = (3000, 6000)
    return model


def gauss(v, amplitude, mean, stddev):
    import numpy as np

    return amplitude * np.exp(-0.5 * ((v - mean) / stddev) ** 2)


# ---------------------------------------------------------------- the tools
def run_astropy(inputs, scheduler):
    import astropy.units as u
    from astropy.modeling import fitting

    fitted = fitting.parallel_fit_dask(
        data=inputs["data"], model=walkthrough_model(), fitter=fitting.TRFLSQFitter(),
        world=inputs["wcs"], fitting_axes=0, data_unit=u.one, scheduler=scheduler,
    )
    units = {"amplitude": u.one, "mean": u.m / u.s, "stddev": u.m / u.s}
    return {n: getattr(fitted, n).quantity.to_value(units[n]) for n in NAMES}, None


def run_modelfit(inputs, engine, scheduler):
    import astropy.units as u
    from astropy.modeling import fitting

    ds = inputs["cube"].modelfit(
        walkthrough_model(), "velocity", fitter=fitting.TRFLSQFitter(),
        data_unit=u.one, engine=engine, scheduler=scheduler,
    )
    extra = {k: int(ds.attrs[k]) for k in ("n_fits", "n_converged", "n_failed") if k in ds.attrs}
    return {n: ds[n].values for n in NAMES}, (ds["fit_chi2"].values, extra)


def run_curvefit(inputs, use_dask):
    import numpy as np

    cube = inputs["cube"]
    if use_dask:  # ~500 fits per chunk, like the other tools' default
        cube = cube.chunk({"velocity": -1, "y": max(1, 500 // cube.sizes["x"]), "x": -1})
    lower_std = float(walkthrough_model().stddev.bounds[0])
    res = cube.curvefit(
        "velocity", gauss,
        p0={"amplitude": 1.0, "mean": 4000.0, "stddev": 500.0},
        bounds={"mean": (3000.0, 6000.0), "stddev": (lower_std, np.inf)},
    )
    if use_dask:
        res = res.compute()  # dask's default scheduler for arrays: threads
    coef = res["curvefit_coefficients"]
    return {n: coef.sel(param=n).values for n in NAMES}, None


def tools(batched_ok):
    out = [
        ("astropy parallel_fit_dask", "processes (default)", lambda i: run_astropy(i, None)),
        ("astropy parallel_fit_dask", "synchronous", lambda i: run_astropy(i, "synchronous")),
        ("modelfit loop", "processes (default)", lambda i: run_modelfit(i, "loop", None)),
        ("modelfit loop", "synchronous", lambda i: run_modelfit(i, "loop", "synchronous")),
    ]
    if batched_ok:
        out.append(("modelfit batched", "threads (default)", lambda i: run_modelfit(i, "batched", None)))
    out += [
        ("xarray curvefit (numpy)", "none (numpy)", lambda i: run_curvefit(i, False)),
        ("xarray curvefit (dask)", "threads (dask default)", lambda i: run_curvefit(i, True)),
    ]
    return out


# ---------------------------------------------------------------- helpers
def load(path, subcube):
    import numpy as np
    from astropy.io import fits
    from astropy.wcs import WCS

    from xarray_modelfit.io_fits import open_fits

    with fits.open(path) as hdul:
        data, wcs = np.array(hdul[0].data), WCS(hdul[0].header)
    cube = open_fits(path).load()
    if subcube:
        data, wcs, cube = data[SUB], wcs[SUB], cube[SUB]
    return {"data": data, "wcs": wcs, "cube": cube}


def chi2_of(params, inputs):
    """Sum over channels of (data - model)^2 for the given parameter maps (unit weights)."""
    import numpy as np

    v = inputs["cube"]["velocity"].values.astype(float)[:, None, None]
    y = np.asarray(inputs["cube"].values, dtype=float)
    resid = y - gauss(v, *(params[n][None] for n in NAMES))
    return np.nansum(np.where(np.isfinite(y), resid, np.nan) ** 2, axis=0)


def warm_up(inputs, batched_ok):
    """Import everything and fit a 2x2 corner with each tool (not timed)."""
    tiny = {
        "data": inputs["data"][:, :2, :2], "wcs": inputs["wcs"][:, :2, :2],
        "cube": inputs["cube"][:, :2, :2],
    }
    run_astropy(tiny, "synchronous")
    run_modelfit(tiny, "loop", "synchronous")
    run_curvefit(tiny, False)
    run_curvefit(tiny, True)
    if batched_ok:
        run_modelfit(tiny, "batched", "synchronous")


def batched_available(inputs):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_modelfit({"cube": inputs["cube"][:, :2, :2]}, "batched", "synchronous")
        return None
    except Exception as err:  # noqa: BLE001 - any failure means "not usable now"
        return f"{type(err).__name__}: {err}"


def timed(fn, inputs, repeat):
    best, peak, delta, result = float("inf"), 0.0, 0.0, None
    for _ in range(repeat):
        with warnings.catch_warnings(), PeakRSS() as mem:
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            result = fn(inputs)
            elapsed = time.perf_counter() - t0
        best = min(best, elapsed)
        peak, delta = max(peak, mem.peak_mb), max(delta, mem.delta_mb)
    return best, peak, delta, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subcube", action="store_true", help="use the 50x50 walkthrough sub-cube data[:, 25:75, 35:85]")
    parser.add_argument("--repeat", type=int, default=1, help="time each tool as the best of N runs (default 1)")
    parser.add_argument("--fits", type=Path, default=DEFAULT_FITS, help=f"the L1448 FITS file (default {DEFAULT_FITS})")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default results/l1448[_subcube].json)")
    args = parser.parse_args(argv)

    import numpy as np

    import xarray_modelfit  # noqa: F401  (registers .modelfit)

    t_start = time.perf_counter()
    machine = machine_info()  # load average before the benchmark starts
    inputs = load(args.fits, args.subcube)
    n_fits = int(np.prod(inputs["data"].shape[1:]))
    unavailable = batched_available(inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm_up(inputs, unavailable is None)

    rows, ref, ref_chi2 = [], None, None
    for name, scheduler, fn in tools(unavailable is None):
        row = {"tool": name, "scheduler": scheduler, "n_fits": n_fits}
        print(f"running {name} [{scheduler}] ...", flush=True)
        try:
            wall, peak, delta, (params, extra) = timed(fn, inputs, args.repeat)
        except Exception as err:  # noqa: BLE001 - report and go on with the other tools
            row["error"] = f"{type(err).__name__}: {err}"
            row["traceback"] = traceback.format_exc()
            print(row["traceback"], file=sys.stderr)
            rows.append(row)
            continue
        if ref is None:  # the first tool is astropy with its default scheduler
            ref, ref_chi2 = params, chi2_of(params, inputs)
        chi2 = chi2_of(params, inputs)
        if extra is not None:  # modelfit: its own fit_chi2, checked against the recomputed one
            row.update(extra[1])
            row["fit_chi2_vs_recomputed_max_rel"] = float(np.nanmax(np.abs(extra[0] - chi2) / chi2))
            chi2 = extra[0]
        ratio = chi2 / ref_chi2
        row.update(
            wall_s=wall, fits_per_s=n_fits / wall, peak_rss_mb=peak, delta_rss_mb=delta,
            nan_frac=float(np.mean(~np.isfinite(params["mean"]))),
            mean_agree=float(np.mean(np.abs(params["mean"] - ref["mean"]) < 1e-4 * np.abs(ref["mean"]))),
            chi2_ratio_median=float(np.nanmedian(ratio)),
            chi2_worse=float(np.mean(ratio > 1.001)), chi2_better=float(np.mean(ratio < 0.999)),
            chi2_source="fit_chi2" if extra is not None else "recomputed from parameters",
        )
        rows.append(row)
    base = next((r["wall_s"] for r in rows if "wall_s" in r), None)
    for r in rows:
        if "wall_s" in r and base:
            r["speedup"] = base / r["wall_s"]
    if unavailable is not None:
        rows.append({"tool": "modelfit batched", "scheduler": "threads (default)", "error": f"unavailable: {unavailable}"})

    table = markdown_table(rows, COLUMNS)
    shape = inputs["data"].shape
    print(f"\nL1448 13CO {'sub-cube' if args.subcube else 'full cube'} {shape}: {n_fits} fits, best of {args.repeat}\n")
    print(table)
    for r in rows:
        if "error" in r:
            print(f"\n{r['tool']} [{r['scheduler']}]: {r['error']}")
    notes = (
        "speed-up = wall(astropy parallel_fit_dask, default scheduler) / wall(tool). "
        "mean agree = fraction of pixels with |mean - mean_astropy| < 1e-4 |mean_astropy|. "
        "χ² ratio = tool's χ² (modelfit: fit_chi2; others: recomputed from the fitted parameters) "
        "over χ² recomputed from astropy's parameters; worse/better = fraction of pixels with ratio "
        "> 1.001 / < 0.999 (pixels with NaN χ² count in neither). NaN params = fraction of pixels "
        "with a non-finite fitted mean (failed fits). Peak RSS: this process + all children, psutil sampled every 20 ms; "
        "ΔRSS = peak minus the value at the start of the run."
    )
    out = args.output or Path(f"l1448{'_subcube' if args.subcube else ''}.json")
    path = write_json(str(out) if args.output is None else str(out.resolve()), {
        "benchmark": "bench_l1448", "cube_shape": list(shape), "subcube": args.subcube,
        "n_fits": n_fits, "repeat": args.repeat, "machine": machine,
        "memory_method": "psutil RSS sum of process + descendants, sampled every 20 ms in a thread",
        "notes": notes, "results": rows, "markdown": table,
        "total_script_s": time.perf_counter() - t_start,
    })
    print(f"\n{notes}\nwrote {path} (script took {time.perf_counter() - t_start:.1f} s)")


if __name__ == "__main__":
    main()
