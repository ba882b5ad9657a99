"""The one place that parses and converts units.

CF and FITS spell units their own way (``m s-1``, ``degC``, ``degrees_north``,
``days``); :func:`parse_unit` maps those spellings onto :mod:`astropy.units`.
:func:`strip_model_units` does to a model with Quantity parameters exactly what
astropy's fitters do (``without_units_for_data``), so the kernel only sees plain
numbers, and remembers how to put the units back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import astropy.units as u
import numpy as np

from xarray_modelfit.errors import ModelFitError

# CF / udunits spellings astropy does not read, token by token
_ALIASES = {
    "dimensionless": "",
    "ppm": "1e-6",
    "ppmv": "1e-6",
    "ppb": "1e-9",
    "ppbv": "1e-9",
    "degC": "deg_C",
    "degreeC": "deg_C",
    "degreesC": "deg_C",
    "degree_C": "deg_C",
    "degrees_C": "deg_C",
    "degree_Celsius": "deg_C",
    "degrees_Celsius": "deg_C",
    "celsius": "deg_C",
    "degK": "K",
    "degree_K": "K",
    "degrees_K": "K",
    "kelvin": "K",
    "degrees_north": "deg",
    "degree_north": "deg",
    "degrees_N": "deg",
    "degree_N": "deg",
    "degrees_east": "deg",
    "degree_east": "deg",
    "degrees_E": "deg",
    "degree_E": "deg",
    "degrees": "deg",
    "degree": "deg",
    "days": "d",
    "day": "d",
    "hours": "h",
    "hour": "h",
    "hr": "h",
    "minutes": "min",
    "minute": "min",
    "seconds": "s",
    "second": "s",
    "sec": "s",
    "years": "yr",
    "year": "yr",
    "meters": "m",
    "meter": "m",
    "metres": "m",
    "metre": "m",
}
_TOKEN = re.compile(r"^([A-Za-z_%]+)(\^?-?\d+)?$")


def parse_unit(value: Any, *, what: str = "units") -> u.UnitBase | None:
    """Parse a unit given as a string (CF or FITS spelling), Unit or None.

    >>> parse_unit("m s-1")
    Unit("m / s")
    >>> parse_unit("degC")
    Unit("deg_C")
    """
    if value is None:
        return None
    if isinstance(value, u.UnitBase):
        return value
    if isinstance(value, u.Quantity):
        return value.unit
    if not isinstance(value, str):
        raise ModelFitError(f"{what} must be a unit string or astropy Unit, got {value!r}")
    text = value.strip()
    try:
        return u.Unit(text)
    except ValueError:
        pass
    tokens = []
    for token in text.replace("*", " ").replace(".", " ").split():
        match = _TOKEN.match(token)
        if match and match.group(1) in _ALIASES:
            token = _ALIASES[match.group(1)] + (match.group(2) or "")
        tokens.append(token)
    try:
        return u.Unit(" ".join(tokens))
    except ValueError:
        raise ModelFitError(
            f"{what} {value!r} is not a unit astropy.units can parse; "
            "set attrs['units'] to a valid unit string or pass the unit explicitly"
        ) from None


def unit_string(unit: u.UnitBase | None) -> str | None:
    """A spelling of ``unit`` that :func:`parse_unit` reads back."""
    if unit is None:
        return None
    return unit.to_string()


@dataclass(frozen=True)
class UnitContext:
    """How units were stripped from a model, and how to restore them.

    ``rename_data`` is astropy's mapping of model inputs/outputs to zero
    Quantities in the data units (``None`` when the model and data are
    unitless); ``param_units`` gives each parameter's unit in the unitless
    model (``None`` for plain numbers).
    """

    rename_data: dict[str, Any] | None
    input_units: tuple[u.UnitBase | None, ...]
    data_unit: u.UnitBase | None
    param_units: dict[str, u.UnitBase | None]

    def restore(self, model):
        """Put units back on a unitless model (``with_units_from_data``)."""
        if self.rename_data is None:
            return model
        return model.with_units_from_data(**self.rename_data)


def strip_model_units(
    model,
    world_units: list[u.UnitBase | None],
    data_unit: u.UnitBase | None,
    equivalencies=None,
) -> tuple[Any, list[tuple[u.UnitBase | None, u.UnitBase | None]], UnitContext]:
    """Strip units from ``model`` the way astropy's parallel fitter does.

    Returns the unitless model, the ``(from, to)`` conversion of every world
    input (apply with :func:`convert_values`), and the :class:`UnitContext`.
    """
    from astropy.modeling.utils import _combine_equivalency_dict

    n_inputs = model.n_inputs
    if not model._has_units and not _knows_data_units(model):
        data_unit = None
    elif data_unit is None and any(unit is not None for unit in world_units):
        # data without units on world inputs with units: dimensionless data, as
        # parallel_fit_dask(..., data_unit=u.one), so the maps still get their units
        data_unit = u.dimensionless_unscaled
    if not (model._has_units or data_unit is not None):
        params = {name: None for name in model.param_names}
        conversions = [(None, None)] * n_inputs
        return model, conversions, UnitContext(None, tuple(world_units), None, params)

    if data_unit is None:
        data_unit = u.dimensionless_unscaled
    if equivalencies is not None and not isinstance(equivalencies, dict):
        equivalencies = {name: list(equivalencies) for name in model.inputs}  # astropy's list form
    equiv = _combine_equivalency_dict(model.inputs, equivalencies, model.input_units_equivalencies)
    if model.input_units is None:
        target = list(world_units)
        conversions = [(None, None)] * n_inputs
    else:
        target = [model.input_units[model.inputs[i]] for i in range(n_inputs)]
        conversions = []
        for i, (unit, tgt) in enumerate(zip(world_units, target, strict=True)):
            name = model.inputs[i]
            if unit is not None and tgt is not None:
                try:
                    unit.to(tgt, equivalencies=equiv[name])
                except u.UnitConversionError as exc:
                    raise ModelFitError(
                        f"coordinate of model input {name!r} has units {unit}, which cannot be "
                        f"converted to the model's input units {tgt}: {exc}"
                    ) from None
                conversions.append((unit, tgt, equiv[name]))
            else:
                conversions.append((None, None))
    rename_data: dict[str, Any] = {
        model.inputs[0]: (0,) * _as_unit(target[0]),
        model.outputs[0]: (0,) * data_unit,
    }
    if n_inputs == 2:
        rename_data[model.inputs[1]] = (0,) * _as_unit(target[1])
    else:
        rename_data["z"] = None
    try:
        unitless = model.without_units_for_data(**rename_data)
        with_units = unitless.with_units_from_data(**rename_data)
    except (u.UnitsError, TypeError, ValueError) as exc:
        if not model._has_units:
            # a model given in plain numbers: fit in plain numbers, no units on the maps
            params = {name: None for name in model.param_names}
            return (
                model,
                [(None, None)] * n_inputs,
                UnitContext(None, tuple(world_units), None, params),
            )
        raise ModelFitError(
            f"the model's parameter units do not match the data units ({data_unit}) and the "
            f"coordinate units ({', '.join(str(t) for t in target)}): {exc}. Set the data's "
            "attrs['units'] or data_unit=, and the coordinates' attrs['units']"
        ) from None
    param_units = {}
    for name in model.param_names:
        unit = getattr(with_units, name).unit
        param_units[name] = None if unit is None else unit
    ctx = UnitContext(rename_data, tuple(target), data_unit, param_units)
    return unitless, conversions, ctx


def _knows_data_units(model) -> bool:
    """Whether astropy can give this model's parameters units from the data's."""
    try:
        model._parameter_units_for_data_units(
            {name: u.dimensionless_unscaled for name in model.inputs},
            {name: u.dimensionless_unscaled for name in model.outputs},
        )
    except (AttributeError, NotImplementedError):
        return False
    except Exception:
        return True
    return True


def _as_unit(unit: u.UnitBase | None) -> u.UnitBase:
    return u.dimensionless_unscaled if unit is None else unit


def convert_values(values, conversion):
    """Convert plain numbers between units given as ``(from, to[, equivalencies])``."""
    src, dst, *equiv = conversion
    if src is None or dst is None or src == dst:
        return values
    return src.to(dst, values, equivalencies=(equiv[0] if equiv else None) or [])


def to_param_unit(value, unit: u.UnitBase | None, *, what: str) -> np.ndarray:
    """Numbers of ``value`` in ``unit``; Quantities are converted, numbers kept."""
    if isinstance(value, u.Quantity):
        if unit is None:
            if value.unit.physical_type == "dimensionless":
                return np.asarray(value.to_value(u.dimensionless_unscaled))
            raise ModelFitError(
                f"{what} is a Quantity in {value.unit}, but the parameter has no units "
                "(the model was given plain numbers)"
            )
        try:
            return np.asarray(value.to_value(unit))
        except u.UnitConversionError:
            raise ModelFitError(
                f"{what} has units {value.unit}, which cannot be converted to the "
                f"parameter's units {unit}"
            ) from None
    return np.asarray(value)
