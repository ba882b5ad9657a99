"""Models to and from JSON text, so a result's attrs rebuild its model (no pickles).

A simple model is stored as its import path, its scalar parameter values (with
units), ``fixed``, ``tied`` and ``bounds``, and the constructor arguments that
are not parameters (``degree``, ``x_degree``, ``domain``, ``window``,
``mapping``, ...) when they are plain numbers, strings or tuples of them (a
model with other settings is recorded, but rebuilding it raises). A compound
model is stored as its operator tree (``fix_inputs`` included).

Tie functions are code and cannot be stored: a tied parameter is recorded as
tied, and the rebuilt model has it untied (with the value it is given), which
is what evaluating the fitted model needs. Array-valued parameters are not
stored (the result's maps hold the fitted values); the rebuilt model has the
class default there.
"""

from __future__ import annotations

import importlib
import inspect
import json
import warnings
from typing import Any

import astropy.units as u
import numpy as np

from xarray_modelfit.errors import ModelFitError

#: constructor arguments that are never model settings
_NOT_SETTINGS = {"self", "name", "meta", "n_models", "model_set_axis", "params", "kwargs", "args"}


def _jsonable(value: Any) -> tuple[bool, Any]:
    """``(True, json_value)`` for numbers, strings, None and (nested) tuples of them."""
    if value is None or isinstance(value, bool | str):
        return True, value
    if isinstance(value, int | np.integer):
        return True, int(value)
    if isinstance(value, float | np.floating):
        return True, float(value)
    if isinstance(value, tuple | list) or (isinstance(value, np.ndarray) and value.ndim == 1):
        items = [_jsonable(v) for v in value]
        if all(ok for ok, _ in items):
            return True, {"tuple": [v for _, v in items]}
    return False, None


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"tuple"}:
        return tuple(_from_jsonable(v) for v in value["tuple"])
    return value


def _settings(model) -> tuple[dict[str, Any], list[str]]:
    """Non-parameter constructor arguments of ``model`` that it exposes as attributes."""
    try:
        signature = inspect.signature(type(model).__init__)
    except (TypeError, ValueError):  # pragma: no cover - builtin constructors
        return {}, []
    stored: dict[str, Any] = {}
    skipped: list[str] = []
    for name, arg in signature.parameters.items():
        if (
            name in _NOT_SETTINGS
            or name in model.param_names
            or arg.kind in (arg.VAR_POSITIONAL, arg.VAR_KEYWORD)
            or not hasattr(model, name)
        ):
            continue
        try:
            value = getattr(model, name)
        except Exception:  # noqa: BLE001 - a property that cannot be read is not a setting
            continue
        ok, text = _jsonable(value)
        if ok:
            stored[name] = text
        else:
            skipped.append(name)
    return stored, skipped


def _constructs(cls, settings: dict[str, Any]) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls(**{k: _from_jsonable(v) for k, v in settings.items()})
    except Exception:  # noqa: BLE001 - any failure means these settings do not rebuild it
        return False
    return True


def _verified(cls, settings: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The settings the constructor accepts back, and those it does not.

    An attribute does not always hold the value its constructor argument took
    (``Voigt1D.method`` is a function name): such a setting is not stored.
    """
    if not settings or _constructs(cls, settings):
        return settings, []
    rejected = [
        name
        for name in settings
        if _constructs(cls, {k: v for k, v in settings.items() if k != name})
    ] or list(settings)
    return {k: v for k, v in settings.items() if k not in rejected}, rejected


def _bound(value: Any) -> float | None:
    if value is None:
        return None
    return float(np.asarray(getattr(value, "value", value)))


def _node(model) -> dict[str, Any]:
    from astropy.modeling.core import CompoundModel

    if isinstance(model, CompoundModel):
        if model.op == "fix_inputs":
            ok, fixed = _jsonable(tuple(model.right.items()))
            if not ok:
                raise ModelFitError(
                    "cannot store a fix_inputs model whose fixed values are not plain numbers"
                )
            return {"op": "fix_inputs", "left": _node(model.left), "fixed": fixed}
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
            "bounds": [_bound(b) for b in p.bounds],
        }
    settings, skipped = _settings(model)
    settings, rejected = _verified(cls, settings)
    skipped += rejected
    node = {"class": f"{cls.__module__}.{cls.__qualname__}", "params": params, "name": model.name}
    if settings:
        node["settings"] = settings
    if skipped:
        node["not_stored"] = skipped
    return node


def model_to_json(model) -> str:
    """JSON text describing ``model`` (parameters as given, units included).

    Parameters
    ----------
    model : astropy.modeling.Model
        A simple or compound model.

    Returns
    -------
    str
        Text that :func:`model_from_json` turns back into an equivalent model.

    Examples
    --------
    >>> from astropy.modeling import models
    >>> text = model_to_json(models.Gaussian1D(2, 0, 1) + models.Const1D(0.5))
    >>> model_from_json(text).param_names
    ('amplitude_0', 'mean_0', 'stddev_0', 'amplitude_1')
    """
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


def _import(path: str):
    module, _, qualname = path.rpartition(".")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError):
        raise ModelFitError(
            f"cannot rebuild model class {path!r}: it is not importable here (a model made "
            "with custom_model or defined in a script must be importable by that path)"
        ) from None
    return obj


def _build(node: dict[str, Any]):
    if "op" in node:
        if node["op"] == "fix_inputs":
            from astropy.modeling import fix_inputs

            return fix_inputs(_build(node["left"]), dict(_from_jsonable(node["fixed"])))
        if node["op"] not in _OPS:
            raise ModelFitError(f"cannot rebuild a compound model with operator {node['op']!r}")
        model = _OPS[node["op"]](_build(node["left"]), _build(node["right"]))
        if node.get("name"):
            model.name = node["name"]
        return model
    cls = _import(node["class"])
    if node.get("not_stored"):
        raise ModelFitError(
            f"cannot rebuild {node['class']}: its settings {node['not_stored']} were not "
            "plain numbers, strings or tuples, so they were not stored"
        )
    kwargs = {k: _from_jsonable(v) for k, v in node.get("settings", {}).items()}
    if "degree" in node:  # written by earlier versions
        kwargs.setdefault("degree", node["degree"])
    for name, p in node["params"].items():
        value = p["value"]
        if value is None:
            continue
        kwargs[name] = value * u.Unit(p["unit"]) if p["unit"] else value
    try:
        model = cls(**kwargs, name=node.get("name"))
    except Exception as exc:  # noqa: BLE001 - any constructor failure gets the same message
        raise ModelFitError(f"cannot rebuild {node['class']}: {exc}") from None
    for name, p in node["params"].items():
        param = getattr(model, name)
        param.fixed = p["fixed"]
        if any(b is not None for b in p["bounds"]):
            param.bounds = tuple(p["bounds"])
    return model


def model_from_json(text: str):
    """Rebuild the model stored by :func:`model_to_json`.

    Parameters
    ----------
    text : str
        JSON text from :func:`model_to_json` (e.g. a result's ``attrs["model"]``).

    Returns
    -------
    astropy.modeling.Model
        The model, with ``fixed`` and ``bounds`` restored and tied parameters
        untied.

    Raises
    ------
    ModelFitError
        If the text is not JSON, or the model class cannot be imported or
        constructed.
    """
    try:
        node = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise ModelFitError(f"the stored model is not valid JSON text: {exc}") from None
    return _build(node)
