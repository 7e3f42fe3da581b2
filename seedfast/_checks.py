"""Argument checks shared by ops, modules, models and configs; torch-free, so configs can use
them without importing torch."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def is_int(value: object) -> bool:
    """A Python int that is not a bool (``True`` is an int to Python, never a size or a seed here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_ints(owner: str, **values: object) -> None:
    """Check that each keyword value is an int >= 1.

    Raises
    ------
    TypeError
        A value is not an int (bools included), naming ``owner`` and the argument.
    ValueError
        A value below 1.
    """
    for arg, value in values.items():
        if not is_int(value):
            raise TypeError(f"{owner}: {arg} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{owner}: {arg} must be >= 1, got {value}")


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """``cls(**data)`` for a config dataclass, refusing field names it does not have.

    Raises
    ------
    ValueError
        Unknown field names (listed with the known ones), or what ``cls`` itself raises.
    """
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known: {sorted(known)}")
    return cls(**data)
