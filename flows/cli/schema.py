"""Checking TOML values against what a builder takes, without calling it.

A builder (a problem, a data set, an update rule, a flow) says what it takes by its
signature or its dataclass fields: the top level of each annotation (``"Sequence[int] |
None"`` → a list), else the kind of its default, decides which kinds of TOML values
(integer, number, boolean, string, list) a key may have. Every failure is a
`ConfigError` of one line that names the table and the key.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from ..options import ConfigError

__all__ = [
    "fmt",
    "where",
    "fail",
    "is_int",
    "is_number",
    "positive_int",
    "positive_number",
    "representable",
    "in_dtype",
    "choice",
    "table",
    "check_no_nesting",
    "allowed_kinds",
    "check_kind",
    "check_kwargs",
    "one_line",
]


def fmt(value: Any) -> str:
    """A value as it appears in a message: its repr, on one line, at most 60 characters."""
    text = repr(value).replace("\n", "\\n")
    return text if len(text) <= 60 else text[:57] + "..."


def where(table: str, key: str | None = None) -> str:
    """``[table] key``, or ``[table]``."""
    return f"[{table}]" if key is None else f"[{table}] {key}"


def fail(place: str, message: str) -> ConfigError:
    return ConfigError(f"{place}: {message}")


def one_line(err: BaseException) -> str:
    """An exception's message on one line (at most 300 characters)."""
    text = str(err).strip() or type(err).__name__
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text if len(text) <= 300 else text[:297] + "..."


# ----------------------------------------------------------------- plain values


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(place: str, value: Any, *, minimum: int = 1) -> int:
    if not is_int(value) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
        raise fail(place, f"expected {what}, got {fmt(value)}")
    return value


def positive_number(place: str, value: Any) -> float:
    if not is_number(value) or not math.isfinite(value) or value <= 0:
        raise fail(place, f"expected a positive number, got {fmt(value)}")
    return float(value)


def representable(place: str, value: Any, dtype: str, *, underflow: bool = True) -> None:
    """Refuse a number the run's floating-point type cannot hold: beyond its largest value
    (inf once cast) or, if ``underflow``, nonzero but below its smallest normal number (0,
    or a subnormal that the computations flush to 0). Lists are checked item by item."""
    if isinstance(value, list):
        for item in value:
            representable(place, item, dtype, underflow=underflow)
        return
    if not is_number(value) or not math.isfinite(value):
        return
    info = np.finfo(dtype)
    size = abs(value)
    if size > float(info.max):
        raise fail(place, f"{fmt(value)} is not representable in {dtype}: it overflows to "
                   f"inf (the largest {dtype} is {float(info.max):.4g})")
    if underflow and 0 < size < float(info.tiny):
        raise fail(place, f"{fmt(value)} is not representable in {dtype}: it rounds to 0 "
                   f"(the smallest positive normal {dtype} is {float(info.tiny):.4g})")


def in_dtype(value: float, dtype: str) -> float:
    """``value`` rounded to ``dtype`` (a representable number, see `representable`)."""
    return float(np.asarray(value, dtype=dtype))


def choice(place: str, value: Any, choices: Iterable[str]) -> str:
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise fail(place, f"unknown value {fmt(value)}; choose one of {', '.join(choices)}")
    return value


def table(place: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(place, f"expected a table, got {fmt(value)}")
    return value


def check_no_nesting(table_name: str, key: str, value: Any) -> None:
    """TOML values a builder can take: no tables or dates, lists of plain values."""
    if isinstance(value, Mapping):
        raise fail(where(table_name, key), f"expected a value, got a table {fmt(dict(value))}")
    if isinstance(value, (datetime.date, datetime.time)):
        raise fail(where(table_name, key), f"expected a number, string or list, got {fmt(value)}")
    if isinstance(value, list):
        for item in value:
            check_no_nesting(table_name, key, item)


# ------------------------------------------------------------------------ kinds

# Kinds of TOML values an annotation (or a default) allows.
_KINDS_OF_NAMES = {
    "int": {"int"},
    "float": {"int", "float"},
    "bool": {"bool"},
    "str": {"str"},
    "Path": {"str"},
    "Sequence": {"list"},
    "list": {"list"},
    "tuple": {"list"},
    "ArrayLike": {"int", "float", "list"},
    "Float": {"int", "float", "list"},
    "Array": {"int", "float", "list"},
    "Int": {"int", "list"},
    "None": set(),
}
_KIND_TEXT = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "list": "a list",
}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def allowed_kinds(annotation: Any, default: Any) -> set[str] | None:
    """The value kinds a parameter takes, or None when any value may be passed.

    From the top level of its annotation (``"Sequence[int] | None"`` → a list), else
    from its default. An empty set means it cannot be set from a file (a function).
    """
    if isinstance(annotation, type):
        annotation = annotation.__name__
    if isinstance(annotation, str) and annotation.strip():
        top = annotation
        while True:  # drop bracketed parts: Sequence[int] -> Sequence
            stripped = re.sub(r"\[[^\[\]]*\]", "", top)
            if stripped == top:
                break
            top = stripped
        names = [n.split(".")[-1] for n in re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", top)]
        kinds: set[str] = set()
        for name in names:
            kinds |= _KINDS_OF_NAMES.get(name, set())
        if kinds:
            return kinds
        if any(name not in _KINDS_OF_NAMES for name in names):
            return set()  # a function, a module, …
    if default is None or default is inspect.Parameter.empty or default is dataclasses.MISSING:
        return None
    if isinstance(default, bool):
        return {"bool"}
    if isinstance(default, int):
        return {"int"}
    if isinstance(default, float):
        return {"int", "float"}
    if isinstance(default, str):
        return {"str"}
    if isinstance(default, (list, tuple)):
        return {"list"}
    return set()


def check_kind(place: str, value: Any, kinds: set[str] | None) -> None:
    """Refuse ``value`` unless its kind is one of ``kinds`` (None: anything)."""
    if kinds is None:
        return
    if not kinds:
        raise fail(place, f"cannot be set in a config file (got {fmt(value)})")
    if _kind(value) not in kinds:
        shown = kinds - {"int"} if "float" in kinds else kinds  # a number covers integers
        expected = " or ".join(_KIND_TEXT[k] for k in sorted(shown, key=list(_KIND_TEXT).index))
        raise fail(place, f"expected {expected}, got {fmt(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise fail(place, f"expected a finite number, got {fmt(value)}")


def _name_of(builder) -> str:
    return getattr(builder, "__name__", str(builder))


def check_kwargs(
    table_name: str, builder: Callable[..., Any], kwargs: Mapping[str, Any],
    skip: tuple[str, ...] = (),
) -> None:
    """Names and value kinds of keyword arguments against the builder's signature, and
    the required ones present."""
    parameters = {
        name: p
        for name, p in inspect.signature(builder).parameters.items()
        if name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    for key, value in kwargs.items():
        if key not in parameters:
            accepted = ", ".join(sorted(parameters)) or "none"
            raise fail(where(table_name, key), f"unknown key; {table_name} "
                       f"{_name_of(builder)!r} takes: {accepted}")
        check_no_nesting(table_name, key, value)
        p = parameters[key]
        check_kind(where(table_name, key), value, allowed_kinds(p.annotation, p.default))
    missing = [
        name for name, p in parameters.items() if p.default is p.empty and name not in kwargs
    ]
    if missing:
        raise fail(where(table_name), f"missing required key(s): {', '.join(missing)}")

