"""Models to and from JSON text, so a result's attrs rebuild its model (no pickles).

A simple model is stored as its import path, constructor-free parameter values
(with units), ``fixed`` and ``bounds``; a compound model as its operator tree.
Tie functions are code and cannot be stored: they are recorded by name and the
rebuilt model has the parameter untied (with its fitted value), which is what
evaluating the fitted model needs.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import astropy.units as u
import numpy as np

from xarray_modelfit.errors import ModelFitError


def _node(model) -> dict[str, Any]:
    from astropy.modeling.core import CompoundModel

    if isinstance(model, CompoundModel):
        return {
            "op": model.op,
            "left": _node(model.left),
            "right": _node(model.right),
            "name": model.name,
        }
    cls = type(model)
    params = {}
    for name in model.param_names:
        p = getattr(model, name)
        value = np.asarray(p.value)
        params[name] = {
            "value": float(value) if value.ndim == 0 else None,
            "unit": None if p.unit is None else p.unit.to_string(),
            "fixed": bool(p.fixed),
            "tied": bool(p.tied),
            "bounds": [
                None if b is None else float(np.asarray(getattr(b, "value", b))) for b in p.bounds
            ],
        }
    node = {"class": f"{cls.__module__}.{cls.__qualname__}", "params": params, "name": model.name}
    if getattr(model, "n_inputs", 1) and hasattr(model, "degree"):
        node["degree"] = int(model.degree)
    return node


def model_to_json(model) -> str:
    """JSON text describing ``model`` (parameters as given, units included)."""
    return json.dumps(_node(model))


_OPS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "**": lambda a, b: a**b,
    "|": lambda a, b: a | b,
    "&": lambda a, b: a & b,
}


def _build(node: dict[str, Any]):
    if "op" in node:
        if node["op"] not in _OPS:
            raise ModelFitError(f"cannot rebuild a compound model with operator {node['op']!r}")
        model = _OPS[node["op"]](_build(node["left"]), _build(node["right"]))
        if node.get("name"):
            model.name = node["name"]
        return model
    module, _, qualname = node["class"].rpartition(".")
    try:
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError):
        raise ModelFitError(
            f"cannot rebuild model class {node['class']!r}: it is not importable here"
        ) from None
    kwargs = {}
    if "degree" in node:
        kwargs["degree"] = node["degree"]
    for name, p in node["params"].items():
        value = p["value"]
        if value is None:
            continue
        kwargs[name] = value * u.Unit(p["unit"]) if p["unit"] else value
    model = cls(**kwargs, name=node.get("name"))
    for name, p in node["params"].items():
        param = getattr(model, name)
        param.fixed = p["fixed"]
        if any(b is not None for b in p["bounds"]):
            param.bounds = tuple(p["bounds"])
    return model


def model_from_json(text: str):
    """Rebuild the model stored by :func:`model_to_json`."""
    return _build(json.loads(text))
