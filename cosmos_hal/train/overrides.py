"""The ``key=value`` override parser: typed values for dataclass fields, and range checks.

Why its own module: it knows dataclasses and type hints, not experiments, so experiments.py
holds only configs, their rules (_RANGES, _CHOICES, validate) and the registry.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from typing import Any, Callable


class ExperimentError(ValueError):
    """A bad experiment name or override; the message lists what is valid."""


def valid_keys(obj: Any, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += valid_keys(value, prefix + f.name + ".")
        else:
            out.append(f"{prefix}{f.name} ({_type_name(hints[f.name])})")
    return out


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(key: str, text: str, tp) -> Any:
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError("expected true/false")
        if tp is int:
            return int(text)
        if tp is float:
            return float(_eval_number(text))
        if tp is str:
            return text
        if origin is tuple:
            parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
            args = typing.get_args(tp)
            if len(parts) != len(args):
                raise ValueError(f"expected {len(args)} comma-separated values")
            return tuple(_parse(key, part.strip(), a) for part, a in zip(parts, args))
        if origin in (typing.Union, types.UnionType):
            for a in typing.get_args(tp):
                if a is type(None):
                    if text.lower() in ("none", "null", ""):
                        return None
                    continue
                return _parse(key, text, a)
    except ValueError as exc:
        raise ExperimentError(f"override {key}={text!r}: cannot read it as {_type_name(tp)} ({exc})") from None
    raise ExperimentError(f"override {key}: unsupported field type {tp}")


def _eval_number(text: str) -> float:
    """Floats, plus the power-of-two forms upstream writes (``2**-14.5``)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    if "**" in text:
        base, exp = text.split("**", 1)
        return float(base) ** float(exp)
    raise ValueError("expected a number")


def set_fields(obj: Any, overrides) -> Any:
    """A copy of the dataclass ``obj`` with each ``key=value`` (dotted keys reach nested
    dataclasses) parsed by the field's type; the caller validates the result."""
    obj = copy.deepcopy(obj)
    for item in overrides:
        if "=" not in item:
            raise ExperimentError(f"override {item!r} is not key=value; valid keys:\n  " + "\n  ".join(valid_keys(obj)))
        key, text = item.split("=", 1)
        key = key.strip().lstrip("-")
        target: Any = obj
        parts = key.split(".")
        for part in parts[:-1]:
            sub = getattr(target, part, None)
            if not dataclasses.is_dataclass(sub):
                target = None
                break
            target = sub
        if target is None or parts[-1] not in {f.name for f in dataclasses.fields(target)} or \
                dataclasses.is_dataclass(getattr(target, parts[-1])):
            raise ExperimentError(f"unknown key {key!r}; valid keys:\n  " + "\n  ".join(valid_keys(obj)))
        tp = typing.get_type_hints(type(target))[parts[-1]]
        setattr(target, parts[-1], _parse(key, text, tp))
    return obj


class Range(typing.NamedTuple):
    """A closed or half-open interval of finite numbers; ``str()`` says it the way a user reads it."""

    lo: float
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v) -> bool:
        return math.isfinite(v) and (v > self.lo if self.lo_open else v >= self.lo) and \
            (v < self.hi if self.hi_open else v <= self.hi)

    def __str__(self) -> str:
        low = f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo == -math.inf and self.hi == math.inf:
            return "a finite number"
        if self.hi == math.inf:
            return f"a finite number {low}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


def check_ranges(obj: Any, ranges: dict[str, tuple[Range, str]], reference: Callable[[], Any], label: str) -> None:
    """Raise ExperimentError for the first ``section.name`` of ``ranges`` whose value is outside
    its range, naming the key, the range, and the value ``reference()`` (``label``) has, to type instead."""
    for key, (allowed, hint) in ranges.items():
        section, name = key.split(".")
        value = getattr(getattr(obj, section), name)
        if all(v in allowed for v in (value if isinstance(value, tuple) else (value,))):
            continue
        default = getattr(getattr(reference(), section), name)
        shown = ",".join(f"{v:g}" for v in default) if isinstance(default, tuple) else f"{default:g}"
        raise ExperimentError(f"{key}={value}: must be {allowed}{f' ({hint})' if hint else ''}; "
                              f"{label} has {key}={shown}")
