"""Argument checks shared by the core: each raises ``ValueError`` naming the argument and what is allowed."""

from __future__ import annotations

import math
import numbers
from collections.abc import Container, Iterable
from typing import Any

import torch


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """An integer in ``[minimum, maximum]`` (bools and non-integral floats are refused)."""
    integral = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral:
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    v = int(value)
    if v < minimum or (maximum is not None and v > maximum):
        hi = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name}: must be >= {minimum}{hi}, got {v}")
    return v


def check_number(name: str, value: Any, minimum: float | None = None, maximum: float | None = None) -> float:
    """A finite real number in ``[minimum, maximum]``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v):
        raise ValueError(f"{name}: must be a finite number, got {value!r}")
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise ValueError(f"{name}: must lie in [{minimum}, {maximum}], got {v}")
    return v


def check_positive(name: str, value: Any) -> float:
    """A finite number > 0."""
    v = check_number(name, value)
    if v <= 0:
        raise ValueError(f"{name}: must be > 0, got {v}")
    return v


def check_finite(name: str, t: torch.Tensor | Iterable[float]) -> torch.Tensor:
    """A tensor without NaN or infinity."""
    tt = torch.as_tensor(t)
    if tt.is_floating_point() and not bool(torch.isfinite(tt).all()):
        raise ValueError(f"{name}: contains NaN or infinity")
    return tt


def check_choice(name: str, value: Any, allowed: Container[str] | Iterable[str]) -> str:
    """One of a fixed set of names."""
    if value not in allowed:  # type: ignore[operator]
        raise ValueError(f"{name}: unknown {value!r}; allowed: {', '.join(map(str, allowed))}")  # type: ignore[arg-type]
    return value


def check_sigmas(name: str, sigmas: Any) -> torch.Tensor:
    """A 1-D float64 sigma sequence: finite, >= 0, strictly decreasing, at least 2 entries."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    if s.dim() != 1 or s.numel() < 2:
        raise ValueError(f"{name}: must be a 1-D sequence of at least 2 sigmas, got shape {tuple(s.shape)}")
    check_finite(name, s)
    if bool((s < 0).any()):
        raise ValueError(f"{name}: sigmas must be >= 0")
    if not bool((s[1:] < s[:-1]).all()):
        raise ValueError(f"{name}: must be strictly decreasing")
    return s
