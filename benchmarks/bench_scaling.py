"""Scaling of ``DataArray.modelfit`` with the number of spectra (synthetic Gaussian cubes).

Cubes of 64 channels (float32, dims velocity, y, x) holding one Gaussian line
per spectrum with known parameters (amplitude in [1, 3], mean in about
[-1.6, 1.6], stddev in [0.8, 1.6], noise sigma 0.05, velocity -12..12) are
fitted with ``Gaussian1D(2, 0, 1)`` and the default fitter (TRFLSQFitter) by
``engine="batched"`` (if available) and ``engine="loop"`` (only up to
``--loop-max`` spectra; larger sizes are reported as n/a, never extrapolated),
each with its default scheduler and chunking.

Sizes: 1e4 and 1e5 spectra, plus 1e6 with ``--large``. Cubes of at least
``--lazy-min`` spectra (default 1e6) are built lazily as a dask array (every
chunk generated from its own seed, ``--rows-per-chunk`` rows of the map per
chunk) and the result is written to a zarr store in a temporary folder
(``cube.modelfit(..., compute=False).to_zarr(path)``), so memory stays bounded
by the chunk size; smaller cubes are generated in memory before timing.

Each (engine, size) case runs in a fresh Python process so its peak memory is
its own: RSS of that process plus its children, sampled every 20 ms (psutil,
``_common.PeakRSS``), only while the timed fit runs. The arithmetic limit of
the batched engine is estimated from a flop count per iteration (see
``flops_per_iteration``) times the mean ``fit_nfev``, against the machine's
peak measured with a 2000x2000 float64 numpy matmul (2 n^3 / t).
Writes ``results/scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("PYTHONWARNINGS", "ignore")  # inherited by spawned dask workers
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PeakRSS, machine_info, markdown_table, write_json  # noqa: E402

NCHAN, P, NOISE, SEED = 64, 3, 0.05, 12345
MARKER = "CASE-RESULT:"
COLUMNS = [
    ("engine", "engine"), ("n_spectra", "spectra"), ("wall_s", "wall (s)", ".2f"),
    ("fits_per_s", "fits/s", ".0f"), ("fits_per_s_per_core", "fits/s/core", ".0f"),
    ("peak_rss_mb", "peak RSS (MB)", ".0f"), ("delta_rss_mb", "ΔRSS (MB)", ".0f"),
    ("converged", "converged", "%"), ("mean_nfev", "mean nfev", ".2f"),
    ("median_mean_err", "median |mean-true|", ".4f"),
    ("arith_limit_fits_per_s", "arith. limit fits/s", ".3g"), ("frac_of_limit", "of limit", "%"),
    ("note", "note"),
]


def flops_per_iteration(m: int = NCHAN, p: int = P) -> dict:
    """Flops of one LM iteration of one Gaussian fit (one ``nfev``), exp counted as 1 flop.

    model eval + residual: 7 m (x-mean, /stddev, square, *-0.5, exp, *amplitude, y-model);
    analytic Jacobian: 3 m p; J^T J (symmetric half, 2 m flops per entry): m p (p+1);
    J^T r: 2 m p; 0.5 r^T r: 2 m; damped solve (LU): 2/3 p^3 + 2 p^2.
    For m=64, p=3: 64 (7 + 9 + 12 + 6 + 2) + 18 + 18 = 2340.
    """
    terms = {
        "model_eval_and_residual": 7 * m, "jacobian": 3 * m * p, "JtJ": m * p * (p + 1),
        "Jtr": 2 * m * p, "rTr": 2 * m, "solve": 2 * p**3 / 3 + 2 * p**2,
    }
    return {"terms": terms, "total": sum(terms.values()),
            "formula": "m(7 + 3p + p(p+1) + 2p + 2) + 2p^3/3 + 2p^2, exp = 1 flop"}


def peak_flops(n: int = 2000, repeat: int = 5) -> float:
    import numpy as np

    a, b = np.random.default_rng(0).random((2, n, n))
    a @ b  # warm-up (BLAS threads)
    best = min(_timeit(lambda: a @ b) for _ in range(repeat))
    return 2 * n**3 / best


def _timeit(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---------------------------------------------------------------- synthetic cube
def map_shape(n: int) -> tuple[int, int]:
    nx = 10 ** math.ceil(math.log10(n) / 2)
    return math.ceil(n / nx), nx


def _params(y0: int, rows: int, ny: int, nx: int, seed: int):
    """Known parameters of map rows y0 .. y0+rows (reproducible from (seed, y0))."""
    import numpy as np

    rng = np.random.default_rng([seed, y0])
    yy = np.linspace(-1, 1, ny)[y0 : y0 + rows, None]
    xx = np.linspace(-1, 1, nx)[None, :]
    amp = rng.uniform(1.0, 3.0, (rows, nx))
    std = rng.uniform(0.8, 1.6, (rows, nx))
    mean = 1.5 * (0.6 * yy + 0.4 * xx) + rng.normal(0.0, 0.1, (rows, nx))
    return rng, amp, mean, std


def _block(y0: int, rows: int, ny: int, nx: int, seed: int):
    import numpy as np

    rng, amp, mean, std = _params(y0, rows, ny, nx, seed)
    v = np.linspace(-12.0, 12.0, NCHAN)[:, None, None]
    data = amp * np.exp(-0.5 * ((v - mean) / std) ** 2) + rng.normal(0.0, NOISE, (NCHAN, rows, nx))
    return data.astype(np.float32)


def _true_mean(y0: int, rows: int, ny: int, nx: int, seed: int):
    return _params(y0, rows, ny, nx, seed)[2]


def synthetic(n: int, rows_per_chunk: int, seed: int = SEED):
    """(cube, true mean) as lazy dask-backed DataArrays, one chunk per ``rows_per_chunk`` rows."""
    import dask
    import dask.array as da
    import numpy as np
    import xarray as xr

    ny, nx = map_shape(n)
    starts = range(0, ny, rows_per_chunk)
    sizes = [min(rows_per_chunk, ny - y0) for y0 in starts]
    cube = da.concatenate([
        da.from_delayed(dask.delayed(_block)(y0, r, ny, nx, seed), (NCHAN, r, nx), np.float32)
        for y0, r in zip(starts, sizes, strict=True)], axis=1)
    true = da.concatenate([
        da.from_delayed(dask.delayed(_true_mean)(y0, r, ny, nx, seed), (r, nx), np.float64)
        for y0, r in zip(starts, sizes, strict=True)], axis=0)
    v = np.linspace(-12.0, 12.0, NCHAN)
    cube = xr.DataArray(cube, dims=("velocity", "y", "x"), name="intensity", attrs={"units": "K"},
                        coords={"velocity": ("velocity", v, {"units": "km s-1"})})
    return cube, xr.DataArray(true, dims=("y", "x"))


# ---------------------------------------------------------------- one case (child process)
def run_case(engine: str, n: int, lazy: bool, rows_per_chunk: int) -> dict:
    import numpy as np
    import xarray as xr
    from astropy.modeling import models

    import xarray_modelfit  # noqa: F401  (registers .modelfit)

    model = models.Gaussian1D(amplitude=2.0, mean=0.0, stddev=1.0)
    with warnings.catch_warnings():  # warm-up: imports and first-call costs, not timed
        warnings.simplefilter("ignore")
        tiny, _ = synthetic(16, 4)
        tiny.load().modelfit(model, "velocity", engine=engine, scheduler="synchronous")
    cube, true = synthetic(n, rows_per_chunk)
    if not lazy:
        cube, true = cube.compute(scheduler="synchronous"), true.compute(scheduler="synchronous")
    row = {"engine": engine, "n_spectra": int(cube.sizes["y"] * cube.sizes["x"]),
           "map_shape": [cube.sizes["y"], cube.sizes["x"]], "lazy_zarr": lazy}
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        store = Path(tmp) / "fit.zarr"
        with warnings.catch_warnings(), PeakRSS() as mem:
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            if lazy:
                cube.modelfit(model, "velocity", engine=engine, compute=False).to_zarr(store, mode="w")
            else:
                result = cube.modelfit(model, "velocity", engine=engine)
            wall = time.perf_counter() - t0
        if lazy:
            result = xr.open_zarr(store).compute()
            row["zarr_store_mb"] = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20
        status = result["fit_status"].values
        row.update(
            wall_s=wall, peak_rss_mb=mem.peak_mb, delta_rss_mb=mem.delta_mb,
            converged=float(np.mean(status <= 1)), mean_nfev=float(result["fit_nfev"].mean()),
            median_mean_err=float(np.nanmedian(np.abs(result["mean"].values - true.values))),
            max_mean_err=float(np.nanmax(np.abs(result["mean"].values - true.values))),
            status_counts={int(k): int(c) for k, c in zip(*np.unique(status, return_counts=True), strict=True)},
        )
    return row


def spawn_case(engine: str, n: int, lazy: bool, rows_per_chunk: int) -> dict:
    cmd = [sys.executable, __file__, "--_case", engine, str(n), str(int(lazy)), str(rows_per_chunk)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        row = {"engine": engine, "n_spectra": n, "note": "error", "error": "\n".join(tail)}
    else:
        row = json.loads(lines[-1][len(MARKER):])
    row["case_process_s"] = time.perf_counter() - t0
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", action="store_true", help="also run 1e6 spectra (lazy dask cube -> zarr)")
    parser.add_argument("--sizes", type=float, nargs="+", help="override the sizes (numbers of spectra)")
    parser.add_argument("--loop-max", type=float, default=1e4, help="largest size run with engine='loop' (default 1e4)")
    parser.add_argument("--lazy-min", type=float, default=1e6, help="sizes >= this use the lazy cube + zarr path (default 1e6)")
    parser.add_argument("--rows-per-chunk", type=int, default=20, help="map rows per generated chunk (default 20: 20000 spectra per chunk at 1e6)")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default results/scaling.json)")
    parser.add_argument("--_case", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._case:
        engine, n, lazy, rows = args._case
        print(MARKER + json.dumps(run_case(engine, int(n), bool(int(lazy)), int(rows))))
        return

    t_start = time.perf_counter()
    sizes = [int(s) for s in (args.sizes or ([1e4, 1e5, 1e6] if args.large else [1e4, 1e5]))]
    machine = machine_info()
    ncores = machine["nproc"]
    peak = peak_flops()
    flops = flops_per_iteration()
    print(f"measured peak: {peak / 1e9:.1f} GFLOP/s (2000x2000 float64 matmul); "
          f"{flops['total']:.0f} flops per fit iteration ({flops['formula']})", flush=True)
    rows, batched_error = [], None
    for n in sizes:
        for engine in ("batched", "loop"):
            if engine == "loop" and n > args.loop_max:
                rows.append({"engine": engine, "n_spectra": n, "note": f"n/a (loop only up to {args.loop_max:.0e})"})
                continue
            if engine == "batched" and batched_error:
                rows.append({"engine": engine, "n_spectra": n, "note": "unavailable", "error": batched_error})
                continue
            print(f"running {engine} n={n} ...", flush=True)
            row = spawn_case(engine, n, n >= args.lazy_min, args.rows_per_chunk)
            if "error" in row:
                print(row["error"], file=sys.stderr)
                if engine == "batched" and "ModelFitError" in row["error"]:  # engine refused
                    row["note"], batched_error = "unavailable", row["error"]
            else:
                row["fits_per_s"] = row["n_spectra"] / row["wall_s"]
                row["fits_per_s_per_core"] = row["fits_per_s"] / ncores
                row["note"] = "lazy -> zarr" if row.get("lazy_zarr") else "in memory"
                if engine == "batched":
                    row["flops_per_fit"] = flops["total"] * row["mean_nfev"]
                    row["arith_limit_fits_per_s"] = peak / row["flops_per_fit"]
                    row["frac_of_limit"] = row["fits_per_s"] / row["arith_limit_fits_per_s"]
                    row["achieved_gflops"] = row["fits_per_s"] * row["flops_per_fit"] / 1e9
            rows.append(row)

    table = markdown_table(rows, COLUMNS)
    print(f"\nsynthetic Gaussian cubes, {NCHAN} channels float32, {ncores} cores, "
          f"peak {peak / 1e9:.1f} GFLOP/s\n")
    print(table)
    notes = (
        "fits/s/core = fits/s / nproc. Peak RSS: fresh process per case, RSS of it plus children "
        "sampled every 20 ms during the timed fit; ΔRSS = peak minus RSS at the start of the fit "
        "(the in-memory cube is already allocated). arith. limit = peak flops / (flops per iteration "
        "x mean nfev); 'of limit' = achieved fits/s over that limit. converged = status <= 1."
    )
    path = write_json(str(args.output.resolve()) if args.output else "scaling.json", {
        "benchmark": "bench_scaling", "nchan": NCHAN, "dtype": "float32", "noise": NOISE,
        "sizes": sizes, "machine": machine, "peak_flops": peak,
        "peak_flops_method": "best of 5 numpy matmul 2000x2000 float64, 2 n^3 / t",
        "flops_per_iteration": flops, "memory_method": "psutil RSS sum of process + descendants, 20 ms sampling, per-case process",
        "notes": notes, "results": rows, "markdown": table, "total_script_s": time.perf_counter() - t_start,
    })
    print(f"\n{notes}\nwrote {path} (script took {time.perf_counter() - t_start:.1f} s)")


if __name__ == "__main__":
    main()
