"""progress=True: a bar of fits done."""

from __future__ import annotations

import pytest
import xarray as xr
from astropy.modeling import models

from xarray_modelfit import modelfit
from xarray_modelfit.progress import FitProgress
from xarray_modelfit.testing import gaussian_cube

pytest.importorskip("tqdm")


@pytest.mark.parametrize("engine", ["loop", "auto"])
def test_progress_counts_every_fit(engine, capsys, monkeypatch):
    cube, _ = gaussian_cube(ny=5, nx=6, nchan=30)
    seen = []
    original = FitProgress._finish

    def record(self, dsk, state, errored):
        seen.append((self.done, self.bar.total))
        original(self, dsk, state, errored)

    monkeypatch.setattr(FitProgress, "_finish", record)
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    res = modelfit(
        cube, model, "velocity", engine=engine, scheduler="threads", chunk_n_max=7, progress=True
    )
    assert seen == [(30, 30)]
    assert "30/30" in capsys.readouterr().err
    plain = modelfit(cube, model, "velocity", engine=engine, scheduler="threads", chunk_n_max=7)
    xr.testing.assert_identical(res, plain)
