"""Tests of xarray_modelfit.io_fits: FITS cubes to labelled DataArrays."""

from __future__ import annotations

import os
from pathlib import Path

import dask.array as dsa
import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.wcs import WCS

from xarray_modelfit.errors import ModelFitError
from xarray_modelfit.io_fits import from_wcs, open_fits, wcs_of

DATA = Path(
    os.environ.get("XARRAY_MODELFIT_DATA")
    or Path(__file__).parent.parent.parent / "shared" / "data"
)
L1448 = DATA / "l1448_13co.fits"
needs_l1448 = pytest.mark.skipif(not L1448.is_file(), reason=f"real data file absent: {L1448}")


def _header(axes: list[tuple[str, str, float, float, float]], **extra: object) -> fits.Header:
    """axes in FITS order: (ctype, cunit, crval, cdelt, crpix)."""
    h = fits.Header()
    for k, (ctype, cunit, crval, cdelt, crpix) in enumerate(axes, 1):
        h[f"CTYPE{k}"], h[f"CRVAL{k}"], h[f"CDELT{k}"], h[f"CRPIX{k}"] = ctype, crval, cdelt, crpix
        if cunit:
            h[f"CUNIT{k}"] = cunit
    h.update(extra)
    return h


RA_DEC = [("RA---TAN", "deg", 52.0, -0.01, 4.5), ("DEC--TAN", "deg", 31.0, 0.01, 3.5)]
GAL = [("GLON-CAR", "deg", 359.99, -0.01, 3.0), ("GLAT-CAR", "deg", 0.5, 0.01, 2.0)]


def _write(path: Path, data: np.ndarray, header: fits.Header) -> Path:
    fits.PrimaryHDU(data, header=header).writeto(path)
    return path


def _sky(wcs: WCS, ny: int, nx: int, **pix: int):
    y, x = np.mgrid[:ny, :nx]
    args = [x, y] + [np.zeros_like(x) + pix.get(f"p{k}", 0) for k in range(2, wcs.naxis)]
    return wcs.pixel_to_world(*args)


# ---------------------------------------------------------------- real data


@needs_l1448
def test_l1448_coordinates_match_astropy():
    cube = open_fits(L1448)
    wcs = WCS(fits.getheader(L1448))
    assert cube.dims == ("velocity", "y", "x")
    assert cube.shape == (53, 105, 105)
    assert cube.dtype == np.float32 and cube.dtype.isnative
    assert isinstance(cube.data, np.ndarray)
    assert "units" not in cube.attrs  # no BUNIT
    sky, spec = wcs.pixel_to_world(0, 0, np.arange(53))
    np.testing.assert_allclose(cube.velocity.values, spec.to_value(u.m / u.s), rtol=1e-12)
    assert u.Unit(cube.velocity.attrs["units"]) == u.m / u.s
    sky = _sky(wcs, 105, 105)[0]
    assert cube.ra.dims == ("y", "x") and cube.ra.attrs["units"] == "deg"
    np.testing.assert_allclose(cube.ra.values, sky.ra.deg, rtol=1e-12)
    np.testing.assert_allclose(cube.dec.values, sky.dec.deg, rtol=1e-12)
    np.testing.assert_array_equal(cube.values, fits.getdata(L1448))


@needs_l1448
def test_l1448_slicing_and_wcs_of():
    cube = open_fits(L1448)
    wcs = WCS(fits.getheader(L1448))
    sub = cube.isel(x=slice(35, 85))
    assert sub.ra.shape == (105, 50)
    np.testing.assert_array_equal(sub.ra.values, cube.ra.values[:, 35:85])
    sw = wcs_of(sub)
    assert sw.pixel_shape == (50, 105, 53)
    a, b = sw.pixel_to_world(0, 0, 0), wcs.pixel_to_world(35, 0, 0)
    assert a[0].separation(b[0]).arcsec < 1e-6
    assert a[1].to_value(u.m / u.s) == pytest.approx(b[1].to_value(u.m / u.s), rel=1e-12)
    # strided spectral slice + sky sub-box
    sub = cube.isel(velocity=slice(50, 2, -3), y=slice(10, 20), x=slice(35, 85, 2))
    sw = wcs_of(sub)
    assert sub.sizes == {"velocity": 16, "y": 10, "x": 25}
    spec = sw.pixel_to_world(0, 0, np.arange(16))[1]
    np.testing.assert_allclose(spec.to_value(u.m / u.s), sub.velocity.values, rtol=1e-12)
    sky = sw.pixel_to_world(np.arange(25), 4, 0)[0]
    np.testing.assert_allclose(sky.ra.deg, sub.ra.values[4], rtol=1e-12)
    np.testing.assert_allclose(sky.dec.deg, sub.dec.values[4], rtol=1e-12)
    # an integer isel drops the axis from the WCS
    plane = cube.isel(velocity=7)
    pw = wcs_of(plane)
    assert pw.naxis == 2 and pw.wcs.spec < 0
    np.testing.assert_allclose(pw.pixel_to_world(3, 5).ra.deg, cube.ra.values[5, 3], rtol=1e-12)
    spectrum = cube.isel(x=5, y=6)
    spw = wcs_of(spectrum)
    np.testing.assert_allclose(
        spw.pixel_to_world(np.arange(53)).to_value(u.m / u.s), cube.velocity.values, rtol=1e-12
    )
    # transposed: WCS axes follow the reversed dims
    tw = wcs_of(cube.transpose("x", "velocity", "y").isel(y=slice(2, None)))
    assert list(tw.wcs.ctype) == ["DEC--SFL", "VOPT", "RA---SFL"]
    assert tw.pixel_to_world(0, 0, 35)[0].separation(wcs.pixel_to_world(35, 2, 0)[0]).arcsec < 1e-6


@needs_l1448
def test_l1448_lazy_chunks():
    lazy = open_fits(L1448, chunks={"velocity": -1, "y": 50, "x": 50})
    assert isinstance(lazy.data, dsa.Array)
    assert lazy.data.chunks[0] == (53,) and lazy.data.chunks[1] == (50, 50, 5)
    assert lazy.dtype == np.float32 and lazy.dtype.isnative
    np.testing.assert_array_equal(lazy.values, open_fits(L1448).values)
    np.testing.assert_array_equal(lazy.isel(y=slice(40, 60)).values, fits.getdata(L1448)[:, 40:60])


# ---------------------------------------------------------------- synthetic


def test_stokes_freq_cube_squeezed(tmp_path):
    h = _header(
        [*RA_DEC, ("FREQ", "Hz", 1.1e11, 2.5e5, 1.0), ("STOKES", "", 1.0, 1.0, 1.0)],
        BUNIT="K",
        SPECSYS="LSRK",
    )
    data = np.random.default_rng(0).normal(size=(1, 6, 4, 5)).astype(">f4")
    cube = open_fits(_write(tmp_path / "c.fits", data, h))
    assert cube.dims == ("frequency", "y", "x")
    assert cube.attrs["squeezed_axes"] == "STOKES"
    assert cube.attrs["units"] == "K"
    assert cube.dtype == np.float32 and cube.dtype.isnative
    np.testing.assert_array_equal(cube.values, data[0])
    wcs = WCS(h)
    freq = wcs.pixel_to_world(0, 0, np.arange(6), 0)[1]
    np.testing.assert_allclose(cube.frequency.values, freq.to_value(u.Hz), rtol=1e-12)
    assert cube.frequency.attrs["units"] == "Hz" and cube.frequency.attrs["specsys"] == "LSRK"
    sky = _sky(wcs, 4, 5)[0]
    np.testing.assert_allclose(cube.dec.values, sky.dec.deg, rtol=1e-12)
    sw = wcs_of(cube.isel(y=slice(1, 3)))
    assert sw.naxis == 3 and "STOKES" not in sw.wcs.ctype
    assert sw.pixel_to_world(0, 0, 2)[0].separation(wcs.pixel_to_world(0, 1, 2, 0)[0]).arcsec < 1e-6


def test_wavelength_galactic(tmp_path):
    h = _header([*GAL, ("WAVE", "um", 2.1, 0.001, 1.0)])
    cube = open_fits(_write(tmp_path / "g.fits", np.ones((3, 4, 5), "f8"), h))
    assert cube.dims == ("wavelength", "y", "x")
    wcs = WCS(h)
    wave = wcs.pixel_to_world(0, 0, np.arange(3))[1]
    assert u.Unit(cube.wavelength.attrs["units"]) == u.m  # wcslib normalises to SI
    np.testing.assert_allclose(cube.wavelength.values, wave.to_value(u.m), rtol=1e-12)
    sky = _sky(wcs, 4, 5)[0]
    np.testing.assert_allclose(cube.glon.values, sky.l.deg, rtol=1e-12)  # wraps at 360
    np.testing.assert_allclose(cube.glat.values, sky.b.deg, rtol=1e-12)
    assert cube.glon.attrs["frame"] == "galactic"
    assert cube.dtype == np.float64


def test_image_spectrum_and_single_channel(tmp_path):
    img = open_fits(_write(tmp_path / "i.fits", np.zeros((4, 5), "f4"), _header(RA_DEC)))
    assert img.dims == ("y", "x") and set(img.coords) == {"ra", "dec", "pix_y", "pix_x"}
    iw = wcs_of(img.isel(x=slice(2, None)))
    assert (
        iw.pixel_to_world(0, 0).separation(WCS(_header(RA_DEC)).pixel_to_world(2, 0)).arcsec < 1e-6
    )
    h = _header([("VRAD", "km/s", 10.0, 0.5, 1.0)])
    spec = open_fits(_write(tmp_path / "s.fits", np.zeros(7, "f4"), h))
    assert spec.dims == ("velocity",)
    np.testing.assert_allclose(spec.velocity.values, 1e4 + 500.0 * np.arange(7))
    assert u.Unit(spec.velocity.attrs["units"]) == u.m / u.s
    one = open_fits(
        _write(
            tmp_path / "one.fits",
            np.zeros((1, 4, 5), "f4"),
            _header([*RA_DEC, ("FREQ", "Hz", 1e9, 1e6, 1.0)]),
        )
    )
    assert one.dims == ("y", "x") and one.attrs["squeezed_axes"] == "FREQ"
    assert one.frequency.ndim == 0 and float(one.frequency) == 1e9


def test_scaled_integers_lazy_equals_eager(tmp_path):
    raw = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    h = _header([*RA_DEC, ("FREQ", "Hz", 1e9, 1e6, 1.0)], BSCALE=0.5, BZERO=3.0, BLANK=7)
    path = tmp_path / "int.fits"
    hdu = fits.PrimaryHDU(raw, header=h)
    hdu.header["BSCALE"], hdu.header["BZERO"], hdu.header["BLANK"] = 0.5, 3.0, 7
    hdu.writeto(path)
    expected = fits.getdata(path)
    eager, lazy = open_fits(path), open_fits(path, chunks=2)
    assert isinstance(lazy.data, dsa.Array) and lazy.data.chunks[0] == (2, 1)
    assert eager.dtype == lazy.dtype == expected.dtype == np.float32
    np.testing.assert_array_equal(eager.values, expected)
    np.testing.assert_array_equal(lazy.values, expected)
    assert np.isnan(lazy.values.ravel()[7])
    upath = _write(
        tmp_path / "u.fits",
        np.arange(60, dtype=np.uint16).reshape(3, 4, 5) * 1000,
        _header([*RA_DEC, ("FREQ", "Hz", 1e9, 1e6, 1.0)]),
    )
    lazy = open_fits(upath, chunks=(1, 4, 5))
    assert lazy.dtype == np.uint16
    np.testing.assert_array_equal(lazy.values, fits.getdata(upath))


def test_large_file_opens_lazily(tmp_path, monkeypatch):
    import pickle

    import xarray_modelfit.io_fits as io_fits

    path = _write(
        tmp_path / "big.fits",
        np.arange(120, dtype=">f8").reshape(2, 3, 4, 5),
        _header([*RA_DEC, ("FREQ", "Hz", 1e9, 1e6, 1.0), ("STOKES", "", 1.0, 1.0, 1.0)]),
    )
    with pytest.raises(ModelFitError, match="axis 4 .*'STOKES', length 2"):
        open_fits(path)
    fits.PrimaryHDU(
        np.arange(60, dtype=">f8").reshape(1, 3, 4, 5), header=fits.getheader(path)
    ).writeto(path, overwrite=True)
    monkeypatch.setattr(io_fits, "LAZY_BYTES", 100)
    cube = open_fits(path)
    assert isinstance(cube.data, dsa.Array) and cube.dims == ("frequency", "y", "x")
    clone = pickle.loads(pickle.dumps(cube.data))  # the reader travels to dask workers
    np.testing.assert_array_equal(clone.compute(), np.arange(60.0).reshape(3, 4, 5))


def test_from_wcs_numpy_and_dask():
    wcs = WCS(_header([*GAL, ("VOPT", "m/s", 0.0, 100.0, 1.0)]))
    arr = np.arange(60.0).reshape(3, 4, 5)
    da = from_wcs(arr, wcs, name="tb", units="K")
    assert da.dims == ("velocity", "y", "x") and da.name == "tb" and da.attrs["units"] == "K"
    np.testing.assert_allclose(da.velocity.values, [0.0, 100.0, 200.0])
    w = wcs_of(da.isel(velocity=slice(1, None)))
    assert w.pixel_to_world(0, 0, 0)[1].to_value(u.m / u.s) == pytest.approx(100.0)
    lazy = from_wcs(dsa.from_array(arr.astype(">f4"), chunks=2), wcs)
    assert isinstance(lazy.data, dsa.Array) and lazy.dtype.isnative
    with pytest.raises(ModelFitError, match="3 axes but the data has 2 dims"):
        from_wcs(arr[0], wcs)
    with pytest.raises(TypeError, match="astropy.wcs.WCS"):
        from_wcs(arr, "not a wcs")


# ---------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.fits"):
        open_fits(tmp_path / "nope.fits")


def test_no_wcs(tmp_path):
    path = _write(tmp_path / "plain.fits", np.zeros((3, 4, 5), "f4"), fits.Header())
    with pytest.raises(ModelFitError, match=r"plain\.fits.*no WCS.*from_wcs"):
        open_fits(path)


def test_non_spectral_third_axis(tmp_path):
    path = _write(
        tmp_path / "lin.fits",
        np.zeros((3, 4, 5), "f4"),
        _header([*RA_DEC, ("LINEAR", "", 0.0, 1.0, 1.0)]),
    )
    with pytest.raises(
        ModelFitError, match=r"lin\.fits.*axis 3 \(CTYPE3 = 'LINEAR'.*neither celestial"
    ):
        open_fits(path)
    path = _write(tmp_path / "two.fits", np.zeros((2, 3, 4, 5), "f4"), _header([*RA_DEC, *GAL]))
    with pytest.raises(ModelFitError, match=r"two\.fits.*invalid WCS.*GLON-CAR.*CTYPE3"):
        open_fits(path)
    wcs = WCS(_header([*RA_DEC, ("LINEAR", "", 0.0, 1.0, 1.0)]))
    with pytest.raises(ModelFitError, match="from_wcs: axis 3"):
        from_wcs(np.zeros((3, 4, 5)), wcs)


def test_table_hdu(tmp_path):
    path = tmp_path / "tab.fits"
    table = fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.ones(3))], name="EVENTS")
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    with pytest.raises(ModelFitError, match=r"tab\.fits: HDU 1 \('EVENTS'\) is a BinTableHDU"):
        open_fits(path, hdu=1)
    with pytest.raises(ModelFitError, match=r"HDU 0.*no data.*'EVENTS'"):
        open_fits(path)


def test_hdu_out_of_range(tmp_path):
    path = _write(tmp_path / "one.fits", np.zeros((4, 5), "f4"), _header(RA_DEC))
    with pytest.raises(
        ModelFitError, match=r"one\.fits: no HDU 3; the file has 0: 'PRIMARY' \(PrimaryHDU"
    ):
        open_fits(path, hdu=3)
    with pytest.raises(ModelFitError, match="no HDU 'SCI'"):
        open_fits(path, hdu="SCI")


def test_corrupt_and_truncated(tmp_path):
    bad = tmp_path / "junk.fits"
    bad.write_bytes(b"this is not FITS" * 300)
    with pytest.raises(ModelFitError, match=r"junk\.fits: not a readable FITS file"):
        open_fits(bad)
    good = _write(
        tmp_path / "full.fits",
        np.zeros((30, 40, 50), "f4"),
        _header([*RA_DEC, ("FREQ", "Hz", 1e9, 1e6, 1.0)]),
    )
    cut = tmp_path / "cut.fits"
    cut.write_bytes(good.read_bytes()[:100_000])
    for chunks in (None, -1):
        with pytest.raises(ModelFitError, match=r"cut\.fits: file is truncated"):
            open_fits(cut, chunks=chunks)


def test_wcs_of_errors():
    da = from_wcs(np.zeros((4, 5)), WCS(_header(RA_DEC)))
    with pytest.raises(ModelFitError, match="not a regular slice"):
        wcs_of(da.isel(x=[0, 1, 3]))
    with pytest.raises(ModelFitError, match="coupled to a kept axis"):
        wcs_of(da.isel(x=2))
    with pytest.raises(ModelFitError, match="fits_header"):
        wcs_of(da.drop_attrs())
