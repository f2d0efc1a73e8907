"""Saying what went wrong with an HTTP request, once for every caller.

Twisted wraps the real cause of a failed request (``ResponseFailed``,
``RequestGenerationFailed``, ``ResponseNeverReceived`` carry a list of
``reasons``).  Logs, error answers and the CLI all want the cause, short, and
never the request's data; they get it here so their wording cannot drift.
"""

from __future__ import annotations

from typing import Union

from twisted.python.failure import Failure

__all__ = ["describe_failure", "innermost", "wrapped"]

ExceptionTypes = Union[type[BaseException], tuple[type[BaseException], ...]]


def wrapped(error: BaseException, kinds: ExceptionTypes) -> BaseException | None:
    """A cause of one of ``kinds`` directly inside a Twisted wrapper, else None."""
    for reason in getattr(error, "reasons", None) or ():
        if reason.check(*(kinds if isinstance(kinds, tuple) else (kinds,))):
            return reason.value
    return None


def innermost(error: BaseException, prefer: ExceptionTypes = ()) -> BaseException:
    """The first meaningful cause inside Twisted's wrappers, however deeply nested.

    At each level a cause of a ``prefer`` type wins over the first one (a relay
    error sealed inside a generation failure says more than the wrapper).
    """
    while getattr(error, "reasons", None):
        if prefer:
            found = wrapped(error, prefer)
            if found is not None:
                return found
        error = error.reasons[0].value  # type: ignore[attr-defined]
    return error


def describe_failure(error: BaseException | Failure, limit: int = 300) -> str:
    """``Type: message`` of the failure's first cause, at most ``limit`` characters."""
    value = error.value if isinstance(error, Failure) else error
    reasons = getattr(value, "reasons", None)
    if reasons:
        value = reasons[0].value
    return f"{type(value).__name__}: {value}"[:limit]
