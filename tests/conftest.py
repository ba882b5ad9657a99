from __future__ import annotations

import pytest

from xarray_modelfit.testing import gaussian_cube, shared_data_dir


@pytest.fixture(scope="session")
def data_dir():
    path = shared_data_dir()
    if path is None:
        pytest.skip("real test data folder ../shared/data is absent (set XARRAY_MODELFIT_DATA)")
    return path


def _data_file(data_dir, name):
    path = data_dir / name
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="session")
def l1448_path(data_dir):
    return _data_file(data_dir, "l1448_13co.fits")


@pytest.fixture(scope="session")
def histalp_path(data_dir):
    return _data_file(data_dir, "HISTALP_oetztal.nc")


@pytest.fixture
def cube():
    """A small Gaussian cube (velocity, y, x) with known truth."""
    return gaussian_cube(ny=4, nx=5, nchan=41, seed=1)
