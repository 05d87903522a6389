"""The Driver's checks of what its calls are given, each answering why a value is refused.

Nothing here raises for a wrong value except :func:`drain_limit` (``drain`` raises
TypeError); the others answer the refusal's message ("" if none), which the Driver's calls
return with flag 9.
"""

from __future__ import annotations

import math
from typing import Any

from .options import is_int, is_real
from .protocol import describe, encode_arguments


def check_features(
    float_names: list[str], str_names: list[str], float_features: Any, str_features: Any, int_feature: Any
) -> tuple[str, tuple[list[float], list[str], int] | None]:
    """``("", (floats, strs, n))`` converted to exact types, or ``(why, None)``."""
    if not isinstance(float_features, (list, tuple)):
        return f"float_features must be a list of floats, got {describe(float_features)}", None
    if not isinstance(str_features, (list, tuple)):
        return f"str_features must be a list of str, got {describe(str_features)}", None
    if len(float_features) != len(float_names):
        return (
            f"wrong number of float features: expected {len(float_names)} "
            f"({', '.join(float_names)}), got {len(float_features)}"
        ), None
    if len(str_features) != len(str_names):
        return (
            f"wrong number of str features: expected {len(str_names)} ({', '.join(str_names)}), got {len(str_features)}"
        ), None
    floats: list[float] = []
    for i, v in enumerate(float_features):
        if type(v) is float:
            floats.append(v)
            continue
        if not is_real(v):
            return f"float feature {i} ({float_names[i]}) must be a real number, got {describe(v)}", None
        try:
            floats.append(float(v))
        except (OverflowError, ValueError, TypeError) as exc:
            return f"float feature {i} ({float_names[i]}) cannot be converted to float: {exc}", None
    strs: list[str] = []
    for i, s in enumerate(str_features):
        if type(s) is str:
            strs.append(s)
            continue
        if not isinstance(s, str):
            return f"str feature {i} ({str_names[i]}) must be a str, got {describe(s)}", None
        strs.append(str(s))
    if not is_int(int_feature):
        return f"int_feature must be an int, got {describe(int_feature)}", None
    return "", (floats, strs, int(int_feature))


def encode_call_arguments(args: Any, kwargs: Any) -> tuple[str, bytes | None]:
    """``("", payload)``, the pickled ``(args, kwargs)`` of ``submit_call``, or ``(why, None)``."""
    if not isinstance(args, (tuple, list)):
        return f"submit_call: args must be a tuple or list, got {describe(args)}", None
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        return f"submit_call: kwargs must be a dict or None, got {describe(kwargs)}", None
    for name in kwargs:
        if not isinstance(name, str):
            return f"submit_call: keyword names must be str, got {describe(name)}", None
    try:
        return "", encode_arguments(tuple(args), dict(kwargs))
    except Exception as exc:
        return f"submit_call: the arguments cannot be pickled: {type(exc).__name__}: {exc}", None


def wait_limit(timeout: Any) -> tuple[str, float | None]:
    """``wait``'s timeout as ``("", seconds)``: None for no limit (None, +inf), 0.0 for do
    not block (``<= 0``, NaN); or ``(why, None)`` for a timeout that is not a number."""
    if timeout is None:
        return "", None
    if not is_real(timeout):
        return f"wait: timeout must be a number of seconds or None, got {describe(timeout)}", None
    try:
        limit = float(timeout)
    except OverflowError:  # an int beyond float's range: no limit, or none at all
        limit = math.inf if timeout > 0 else -math.inf
    if math.isnan(limit) or limit <= 0:
        return "", 0.0
    if math.isinf(limit):
        return "", None
    return "", limit


def drain_limit(timeout: Any) -> float | None:
    """``drain``'s timeout in seconds, None for no limit (None, +inf), 0.0 for ``<= 0`` and
    NaN; raises TypeError if it is not a number."""
    if timeout is not None and not is_real(timeout):
        raise TypeError(f"drain: timeout must be a number of seconds or None, got {describe(timeout)}")
    if timeout is None:
        return None
    try:
        limit = float(timeout)
    except OverflowError:  # an int beyond float's range
        limit = math.inf if timeout > 0 else 0.0
    if math.isnan(limit) or limit < 0:
        limit = 0.0
    if math.isinf(limit):
        return None
    return limit
