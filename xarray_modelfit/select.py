"""Model selection: fit several candidate models, keep the best per position.

Each candidate is fitted as usual (lazily); the one with the lowest information
criterion (``"aic"`` or ``"bic"``) among the successful fits wins at each
position. Parameter maps are the union of the candidates' parameters, NaN
where the chosen model has no such parameter; ``fit_model_index`` says which
candidate was chosen and ``fit_{criterion}_candidates`` keeps every score.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import xarray as xr

from xarray_modelfit.errors import ModelFitError
from xarray_modelfit.kernel.status import FIRST_FAILURE
from xarray_modelfit.serialize import model_to_json

MODEL_DIM = "model"
CRITERIA = ("aic", "bic")


def select_best(results: Sequence[xr.Dataset], models: Sequence, criterion: str) -> xr.Dataset:
    """Combine per-candidate results into the best-per-position result."""
    if criterion not in CRITERIA:
        raise ModelFitError(f"select must be 'aic' or 'bic', got {criterion!r}")
    scores = xr.concat(
        [r[f"fit_{criterion}"].where(r["fit_status"] < int(FIRST_FAILURE)) for r in results],
        dim=MODEL_DIM,
    )
    best = scores.fillna(np.inf).argmin(MODEL_DIM)
    names: list[str] = []
    for r in results:
        names += [n for n in r.data_vars if n not in names]
    out = {}
    for name in names:
        template = next(r[name] for r in results if name in r)
        parts = [
            r[name] if name in r else xr.full_like(template, np.nan, dtype=np.float64)
            for r in results
        ]
        chosen = parts[0]
        for k in range(1, len(parts)):
            chosen = xr.where(best == k, parts[k], chosen)  # lazy, elementwise selection
        out[name] = chosen.astype(
            template.dtype if name in results[0] else np.float64
        ).assign_attrs(template.attrs)
    out["fit_model_index"] = best.astype(np.int16).assign_attrs(
        long_name="index of the chosen candidate model", criterion=criterion
    )
    out[f"fit_{criterion}_candidates"] = scores.transpose(..., MODEL_DIM).assign_attrs(
        long_name=f"{criterion.upper()} of every candidate (NaN where it failed)"
    )
    ds = xr.Dataset(out)
    attrs = dict(results[0].attrs)
    attrs.pop("model", None)
    attrs["param_names"] = json.dumps([n for n in names if n in _param_names(results)])
    attrs["model_candidates"] = json.dumps([model_to_json(m) for m in models])
    attrs["candidate_param_names"] = json.dumps(
        [json.loads(r.attrs["param_names"]) for r in results]
    )
    attrs["select"] = criterion
    ds.attrs = attrs
    return ds


def _param_names(results) -> list[str]:
    out: list[str] = []
    for r in results:
        out += [n for n in json.loads(r.attrs["param_names"]) if n not in out]
    return out
