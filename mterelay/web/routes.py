"""Route patterns of PASS_THROUGH_ROUTES and MTE_ROUTES: which paths a rule covers.

Pure and reactor-free: the settings compile them once at start-up, the
resource tree matches request paths against them.
"""

from __future__ import annotations

import re

import attrs

__all__ = ["RoutePattern", "matches_any"]


@attrs.frozen
class RoutePattern:
    """A route from PASS_THROUGH_ROUTES / MTE_ROUTES; ``*`` matches any run of characters."""

    pattern: str
    _regex: re.Pattern[str] = attrs.field(eq=False, repr=False)

    @classmethod
    def compile(cls, pattern: str) -> "RoutePattern":
        body = ".*".join(re.escape(part) for part in pattern.split("*"))
        return cls(pattern, re.compile(body + r"\Z"))

    def matches(self, path: str) -> bool:
        return self._regex.match(path) is not None


def matches_any(routes: tuple[RoutePattern, ...], path: str) -> bool:
    return any(route.matches(path) for route in routes)
