"""Model selection: several candidate models, the best per position by AIC/BIC."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from astropy.modeling import models

from xarray_modelfit import ModelFitError, modelfit
from xarray_modelfit.testing import gaussian_cube

CANDIDATES = [
    models.Gaussian1D(),
    models.Gaussian1D() + models.Gaussian1D(),
    models.Gaussian1D() + models.Gaussian1D() + models.Gaussian1D(),
]


@pytest.fixture(scope="module")
def mixed():
    """A map whose thirds hold 1, 2 and 3 Gaussian components (S/N >= 10)."""
    parts, counts, truths = [], [], []
    for k in (1, 2, 3):
        cube, truth = gaussian_cube(8, 8, 100, n_components=k, noise=0.1, seed=10 + k)
        parts.append(cube.assign_coords(x=np.arange(8) + 8 * (k - 1)))
        counts.append(np.full((8, 8), k))
        truths.append(truth)
    return xr.concat(parts, "x"), np.concatenate(counts, axis=1), truths


def test_recovers_number_of_components_and_parameters(mixed):
    cube, counts, truths = mixed
    criterion = "bic"
    res = modelfit(cube, CANDIDATES, "velocity", p0="auto", scheduler="threads")
    chosen = res.fit_model_index.values + 1
    assert (chosen == counts).mean() >= 0.95
    assert res[f"fit_{criterion}_candidates"].dims == ("y", "x", "model")
    within, total = 0, 0
    for k, truth in zip((1, 2, 3), truths, strict=True):
        cols = slice(8 * (k - 1), 8 * k)
        right = chosen[:, cols] == k
        for name, value in truth.items():
            fitted, se = res[name].values[:, cols], res[f"{name}_stderr"].values[:, cols]
            ok = np.abs(fitted - value) <= 3 * se
            within += int(ok[right].sum())
            total += int(right.sum())
    assert within / total >= 0.95
    # parameters a chosen model lacks are NaN
    one = chosen == 1
    assert np.isnan(res["mean_2"].values[one]).all() and np.isfinite(res["mean"].values[one]).all()


def test_aic_never_picks_fewer_components_than_needed(mixed):
    cube, counts, _ = mixed
    res = modelfit(cube, CANDIDATES, "velocity", p0="auto", select="aic", scheduler="threads")
    chosen = res.fit_model_index.values + 1
    assert (chosen >= counts).all() and (chosen[counts == 3] == 3).all()
    assert res.attrs["select"] == "aic" and "fit_aic_candidates" in res


def test_lazy_selection_equals_eager(mixed):
    cube, _, _ = mixed
    small = cube.isel(y=slice(0, 3))
    eager = modelfit(small, CANDIDATES[:2], "velocity", p0="auto", scheduler="synchronous")
    lazy = modelfit(small.chunk({"x": 5}), CANDIDATES[:2], "velocity", p0="auto", compute=False)
    assert lazy.fit_model_index.chunks is not None
    xr.testing.assert_allclose(
        lazy.compute(), eager.drop_attrs().assign_attrs(lazy.attrs).compute()
    )


def test_selection_errors(mixed):
    cube, _, _ = mixed
    with pytest.raises(ModelFitError, match="select must be 'aic' or 'bic'"):
        modelfit(cube, CANDIDATES, "velocity", select="r2")
    with pytest.raises(ModelFitError, match="empty list"):
        modelfit(cube, [], "velocity")
    with pytest.raises(TypeError, match="model selection takes a DataArray"):
        modelfit(cube.to_dataset(name="v"), CANDIDATES, "velocity")


def test_result_helpers_on_a_selection_result(tmp_path):
    """evaluate/residuals use each position's chosen model; to_model takes candidate=k."""
    import matplotlib

    matplotlib.use("Agg")
    one, _ = gaussian_cube(2, 3, 100, n_components=1, noise=0.05, seed=1)
    two, _ = gaussian_cube(2, 3, 100, n_components=2, noise=0.05, seed=2)
    cube = xr.concat([one, two.assign_coords(x=np.arange(3, 6))], "x")
    res = modelfit(cube, CANDIDATES[:2], "velocity", p0="auto", scheduler="synchronous")
    index = res.fit_model_index.values
    assert set(index.ravel()) == {0, 1}
    curve = res.modelfit.evaluate(cube)
    v = cube.velocity.values
    for (iy, ix), k in np.ndenumerate(index):  # against the closed form of the chosen model
        comps = [""] if k == 0 else ["_0", "_1"]
        ref = sum(
            float(res[f"amplitude{c}"][iy, ix])
            * np.exp(
                -0.5
                * ((v - float(res[f"mean{c}"][iy, ix])) / float(res[f"stddev{c}"][iy, ix])) ** 2
            )
            for c in comps
        )
        np.testing.assert_allclose(curve.values[iy, ix], ref, rtol=1e-10, err_msg=f"y={iy}, x={ix}")
    resid = res.modelfit.residuals(cube)
    assert float(abs(resid).max()) < 0.3  # noise 0.05: every position is fitted by its model
    with pytest.raises(ModelFitError, match="model-selection result of 2 candidate models"):
        res.modelfit.to_model()
    pair = res.modelfit.to_model(candidate=1)
    chosen = index == 1
    np.testing.assert_array_equal(np.isnan(pair.amplitude_0.value), ~chosen)
    np.testing.assert_allclose(pair.amplitude_0.value[chosen], res.amplitude_0.values[chosen])
    with pytest.raises(ModelFitError, match="candidate=2 is not a candidate"):
        res.modelfit.to_model(candidate=2)
    y, x = (int(c) for c in np.argwhere(chosen)[0])
    fig = cube.modelfit.plot_fit(res, y=res.y.values[y], x=res.x.values[x])
    fig.savefig(tmp_path / "fit.png")
    assert (tmp_path / "fit.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def one_or_two():
    """Columns x=0..2 hold one Gaussian, x=3..5 two; the fit picks by BIC."""
    one, _ = gaussian_cube(2, 3, 100, n_components=1, noise=0.05, seed=1)
    two, _ = gaussian_cube(2, 3, 100, n_components=2, noise=0.05, seed=2)
    cube = xr.concat([one, two.assign_coords(x=np.arange(3, 6))], "x")
    res = modelfit(cube, CANDIDATES[:2], "velocity", p0="auto", scheduler="synchronous")
    return cube, res


def _chosen_model(res, y, x, v):
    """The closed form of the candidate chosen at label (y, x), from the parameter maps."""
    point = res.sel(y=y, x=x)
    comps = [""] if int(point.fit_model_index) == 0 else ["_0", "_1"]
    return sum(
        float(point[f"amplitude{c}"])
        * np.exp(-0.5 * ((v - float(point[f"mean{c}"])) / float(point[f"stddev{c}"])) ** 2)
        for c in comps
    )


@pytest.mark.parametrize("chunked", [False, True])
def test_selection_evaluate_on_a_subset_of_positions(one_or_two, chunked):
    """da covering some positions, reordered: each gets its own chosen model, by label."""
    cube, res = one_or_two
    sub = cube.isel(y=[1], x=[4, 0, 5])
    assert sorted(res.fit_model_index.sel(y=sub.y, x=sub.x).values.ravel()) == [0, 1, 1]
    if chunked:
        sub = sub.chunk({"x": 1})
    curve = res.modelfit.evaluate(sub)
    resid = res.modelfit.residuals(sub)
    assert curve.sizes == sub.sizes and (curve.chunks is not None) == chunked
    v = cube.velocity.values
    for x in sub.x.values:
        y = int(sub.y[0])
        ref = _chosen_model(res, y, x, v)
        got = curve.sel(y=y, x=x).transpose("velocity").values
        np.testing.assert_allclose(got, ref, rtol=1e-10, err_msg=f"x={x}")
        np.testing.assert_allclose(
            resid.sel(y=y, x=x).transpose("velocity").values,
            sub.sel(y=y, x=x).transpose("velocity").values - ref,
            rtol=1e-9,
            atol=1e-12,
        )


def test_selection_refusals_share_one_message(one_or_two):
    _, res = one_or_two
    tail = r"model-selection result of 2 candidate models; pass candidate=k \(0 to 1\)"
    with pytest.raises(ModelFitError, match=rf"no single model: it is a {tail}"):
        res.modelfit.to_model()
    with pytest.raises(ModelFitError, match=rf"candidate=-1 is not a candidate .*: it is a {tail}"):
        res.modelfit.to_model(candidate=-1)
