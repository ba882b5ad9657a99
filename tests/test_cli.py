"""The command line: ``xarray-modelfit demo`` and ``xarray-modelfit fit``."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from xarray_modelfit import cli
from xarray_modelfit.io import load_result
from xarray_modelfit.testing import gaussian_cube

pytest.importorskip("matplotlib")


def _fits_cube(path, *, ny=4, nx=5, nchan=41, bunit="K"):
    """A small synthetic cube written as FITS with a spectral (VOPT) + celestial WCS."""
    from astropy.io import fits

    cube, truth = gaussian_cube(ny=ny, nx=nx, nchan=nchan, seed=3, dtype=np.float32)
    v_kms = cube.velocity.values
    header = fits.Header()
    header["CTYPE1"], header["CUNIT1"] = "RA---SFL", "deg"
    header["CRPIX1"], header["CRVAL1"], header["CDELT1"] = 1.0, 57.66, -0.0064
    header["CTYPE2"], header["CUNIT2"] = "DEC--SFL", "deg"
    header["CRPIX2"], header["CRVAL2"], header["CDELT2"] = 1.0, 30.5, 0.0064
    header["CTYPE3"], header["CUNIT3"] = "VOPT", "m s-1"
    header["CRPIX3"], header["CRVAL3"] = 1.0, v_kms[0] * 1000.0
    header["CDELT3"] = (v_kms[1] - v_kms[0]) * 1000.0
    header["SPECSYS"] = "LSRK"
    if bunit:
        header["BUNIT"] = bunit
    fits.PrimaryHDU(cube.values, header=header).writeto(path)
    truth = dict(truth, mean=truth["mean"] * 1000.0, stddev=truth["stddev"] * 1000.0)
    return truth


def _check_params(out, truth, *, mean_unit):
    result = load_result(out)
    assert result["amplitude"].dims == ("y", "x")
    assert result.attrs["n_fits"] == truth["amplitude"].size
    assert int((result.fit_status == 0).sum()) == truth["amplitude"].size
    for name in ("amplitude", "stddev"):
        np.testing.assert_allclose(result[name].values, truth[name], rtol=0.1)
    width = np.median(truth["stddev"])
    np.testing.assert_allclose(result["mean"].values, truth["mean"], rtol=0, atol=0.1 * width)
    assert result["mean"].attrs["units"] == mean_unit
    return result


def test_demo_in_process(tmp_path, capsys):
    assert cli.main(["demo", "--size", "12", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "144 fits" in printed
    assert re.search(r"[\d,]+ fits/s", printed)
    assert "error against the true parameters" in printed
    for name in ("amplitude", "mean", "stddev"):
        assert re.search(rf"{name}\s+median \|error\| = \d", printed)
    assert (tmp_path / "demo_maps.png").stat().st_size > 1000
    result = load_result(tmp_path / "demo_params.nc")
    assert result["amplitude"].shape == (12, 12)
    assert np.isfinite(result["amplitude"]).all()
    # the demo's claim: errors are of the size of the standard errors
    _, truth = gaussian_cube(ny=12, nx=12, nchan=64, noise=0.1, seed=0)
    err = np.abs(result["amplitude"].values - truth["amplitude"])
    assert np.median(err) < 3 * float(result["amplitude_stderr"].median())


def test_demo_no_plot(tmp_path):
    assert cli.main(["demo", "--size", "3", "--out", str(tmp_path), "--no-plot"]) == 0
    assert (tmp_path / "demo_params.nc").exists()
    assert not (tmp_path / "demo_maps.png").exists()


def test_module_help():
    proc = subprocess.run(
        [sys.executable, "-m", "xarray_modelfit", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout and "fit" in proc.stdout


def test_fit_fits_file(tmp_path, capsys):
    pytest.importorskip("astropy")
    truth = _fits_cube(tmp_path / "cube.fits")
    out, png = tmp_path / "params.nc", tmp_path / "maps.png"
    code = cli.main(
        ["fit", str(tmp_path / "cube.fits"), "--dim", "velocity", "--out", str(out)]
        + ["--plot", str(png)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "20 fits" in printed and "converged" in printed
    assert png.stat().st_size > 1000
    result = _check_params(out, truth, mean_unit="m / s")
    assert result["amplitude"].attrs["units"] == "K"
    assert "ra" in result.coords and "dec" in result.coords


def test_fit_fits_without_bunit(tmp_path):
    """No BUNIT: the data are dimensionless, the maps still carry the axis units."""
    truth = _fits_cube(tmp_path / "cube.fits", bunit=None)
    out = tmp_path / "params.nc"
    assert (
        cli.main(["fit", str(tmp_path / "cube.fits"), "--dim", "velocity", "--out", str(out)]) == 0
    )
    _check_params(out, truth, mean_unit="m / s")


def test_fit_netcdf_file(tmp_path, capsys):
    cube, truth = gaussian_cube(ny=3, nx=4, nchan=41, seed=5)
    ds = xr.Dataset({"intensity": cube, "other": cube.isel(velocity=0)})
    ds.to_netcdf(tmp_path / "cube.nc")
    out = tmp_path / "params.nc"
    code = cli.main(
        ["fit", str(tmp_path / "cube.nc"), "--dim", "velocity", "--out", str(out), "--progress"]
    )
    assert code == 0
    assert "12 fits" in capsys.readouterr().out
    _check_params(out, truth, mean_unit="km / s")


def test_fit_netcdf_variable(tmp_path):
    cube, truth = gaussian_cube(ny=2, nx=2, nchan=41, seed=5)
    xr.Dataset({"a": cube * 0 + 1.0, "b": cube}).to_netcdf(tmp_path / "two.nc")
    out = tmp_path / "params.nc"
    args = ["fit", str(tmp_path / "two.nc"), "--dim", "velocity", "--variable", "b"]
    assert cli.main([*args, "--out", str(out)]) == 0
    _check_params(out, truth, mean_unit="km / s")


def test_moment_guesses_close_to_truth():
    cube, truth = gaussian_cube(ny=5, nx=6, nchan=64, noise=0.1, seed=2)
    cube[:, 0, 0] = np.nan  # no data: filled with the median of the others
    guesses = cli.moment_guesses(cube, "velocity")
    for name in ("amplitude", "mean", "stddev"):
        assert guesses[name].dims == ("y", "x")
        assert np.isfinite(guesses[name]).all()
        err = np.abs(guesses[name].values - truth[name])[1:, 1:]
        assert np.median(err) < 0.15 * np.median(np.abs(truth["amplitude"]))
    lazy = cli.moment_guesses(cube.chunk({"y": 2}), "velocity")
    xr.testing.assert_allclose(lazy["mean"], guesses["mean"])


def test_fit_missing_file(tmp_path, capsys):
    code = cli.main(["fit", str(tmp_path / "nope.fits"), "--dim", "velocity", "--out", "p.nc"])
    assert code != 0
    err = capsys.readouterr().err
    assert "nope.fits" in err and "no such file" in err.lower()
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["corrupt.fits", "corrupt.nc"])
def test_fit_corrupt_file(tmp_path, capsys, name):
    (tmp_path / name).write_bytes(b"this is not a data file\n" * 20)
    out = tmp_path / "params.nc"
    code = cli.main(["fit", str(tmp_path / name), "--dim", "velocity", "--out", str(out)])
    assert code != 0
    err = capsys.readouterr().err
    assert name in err and "error" in err
    assert not out.exists()


def test_fit_truncated_fits(tmp_path, capsys):
    _fits_cube(tmp_path / "cube.fits")
    raw = (tmp_path / "cube.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(raw[: len(raw) // 2])
    code = cli.main(["fit", str(tmp_path / "cut.fits"), "--dim", "velocity", "--out", "p.nc"])
    assert code != 0
    assert "truncated" in capsys.readouterr().err


def test_fit_unknown_dim(tmp_path, capsys):
    _fits_cube(tmp_path / "cube.fits")
    code = cli.main(
        ["fit", str(tmp_path / "cube.fits"), "--dim", "frequency", "--out", str(tmp_path / "p.nc")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "'frequency'" in err and "velocity" in err


def test_fit_bad_output_suffix(tmp_path, capsys):
    _fits_cube(tmp_path / "cube.fits")
    code = cli.main(
        ["fit", str(tmp_path / "cube.fits"), "--dim", "velocity", "--out", str(tmp_path / "p.txt")]
    )
    assert code == 2
    assert ".nc or .zarr" in capsys.readouterr().err


def test_console_script_missing_file(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "xarray_modelfit", "fit", str(tmp_path / "x.fits")]
        + ["--dim", "velocity", "--out", str(tmp_path / "p.nc")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_fit_refuses_to_write_over_its_input_or_into_a_file(tmp_path, capsys):
    """Checked before fitting: the zarr input survives."""
    cube, _ = gaussian_cube(ny=2, nx=2)
    cube.to_dataset(name="intensity").to_zarr(tmp_path / "cube.zarr")
    code = cli.main(["fit", str(tmp_path / "cube.zarr"), "--dim", "velocity",
                     "--out", str(tmp_path / "cube.zarr")])  # fmt: skip
    assert code == 2 and "is the input cube" in capsys.readouterr().err
    assert "intensity" in xr.open_zarr(tmp_path / "cube.zarr")
    (tmp_path / "notes.nc").write_text("a file")
    code = cli.main(["fit", str(tmp_path / "cube.zarr"), "--dim", "velocity",
                     "--out", str(tmp_path / "notes.nc" / "p.nc")])  # fmt: skip
    assert code == 2 and "is a file, not a folder" in capsys.readouterr().err
