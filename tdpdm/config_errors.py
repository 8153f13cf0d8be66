"""Config refusals as one line naming the dotted key, from pydantic's structured errors: the
config's models (`tdpdm.config`) say what is valid, this module only words what is not."""

from __future__ import annotations

import reprlib
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A configuration value or file is invalid."""


_M = TypeVar("_M", bound=BaseModel)

_NOT_A = {"int": "int", "float": "float", "bool": "bool", "string": "str", "tuple": "list"}
_BOUNDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def validated(model: type[_M], data: Any) -> _M:
    """`model` validated from `data`, or one ConfigError line (typos reported first)."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        first = min(errors, key=lambda e: e["type"] != "extra_forbidden")  # typos first
        raise ConfigError(_message(model, first)) from None


def _message(model: type[BaseModel], error: Any) -> str:
    loc, kind, value = error["loc"], error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if kind == "extra_forbidden":
        known = ", ".join(sorted(_model_at(model, loc[:-1]).model_fields))
        return f"unknown config key {path!r}; known: {known}"
    if kind == "invalid_key":
        return f"config keys must be text, got {short(value)}"
    if kind == "value_error":  # our validators: a rule over several keys, or one key's range
        text = str(ctx.get("error", error["msg"]))
        return f"{path} {text}" if path else text
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{path or 'config'} must be a mapping, got {type(value).__name__}"
    if value is None:
        return f"{path} must not be empty"
    if kind == "literal_error":
        return f"{path} must be one of {ctx['expected']}, got {short(value)}"
    if kind in _BOUNDS:
        return f"{path} must be {_range(model, loc, ctx)}, got {_shown(value)}"
    if kind == "multiple_of":
        return f"{path} must be a multiple of {ctx['multiple_of']}, got {_shown(value)}"
    if kind == "too_short":
        return f"{path} must list at least one value"
    if kind == "finite_number":
        return f"{path} must be a finite number, got {_shown(value)}"
    if kind == "not_a_list":
        return f"{path}: {short(value)} is not a list (write e.g. [1, 2])"
    if kind == "not_a_number":
        return f"{path}: {short(value)} is not a number"
    name = _NOT_A.get(kind.split("_")[0])
    if name:
        return f"{path}: {short(value)} is not a valid {name}"
    return f"{path}: {' '.join(str(error['msg']).split())}"


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    for part in loc:
        model = model.model_fields[part].annotation  # type: ignore[assignment]
    return model


def _range(model: type[BaseModel], loc: tuple[Any, ...], ctx: dict[str, Any]) -> str:
    """The key's whole declared range (`in (0, 1)`), not only the side that was crossed."""
    bounds: dict[str, Any] = {}
    if loc and not isinstance(loc[-1], int):  # a key (list items: the crossed side only)
        for meta in _model_at(model, loc[:-1]).model_fields[loc[-1]].metadata:
            bounds |= {b: getattr(meta, b) for b in ("gt", "ge", "lt", "le") if hasattr(meta, b)}
    bounds = bounds or ctx
    low = ("(", bounds["gt"]) if "gt" in bounds else ("[", bounds.get("ge"))
    high = (")", bounds["lt"]) if "lt" in bounds else ("]", bounds.get("le"))
    if low[1] is not None and high[1] is not None:
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low[1] is not None:
        return "positive" if low == ("(", 0) else f"{'>' if low[0] == '(' else '>='} {low[1]}"
    return f"{'<' if high[0] == ')' else '<='} {high[1]}"


def short(value: Any) -> str:
    """A bounded repr for error messages: YAML aliases can nest a value exponentially."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict = 2, 4, 4
    short.maxstring = short.maxother = 60
    return short.repr(value)


def _shown(value: Any) -> str:
    """A number as written (`--set stage2.epochs=-2` arrives as text), anything else bounded."""
    if isinstance(value, str):
        try:
            float(value)
            return value.strip()
        except ValueError:
            pass
    return short(value)
