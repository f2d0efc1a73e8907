"""Real headless Chromium for the browser tests, driven by Playwright for Python.

Debian's ``/usr/bin/chromium`` (``.ci/run`` installs it), never a browser
Playwright downloads: ``PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1`` is set and
``playwright install`` is never run; the browser is launched by path with a
fresh user-data directory per launch, so no cache (HTTP or preflight)
survives from one test to the next.

Playwright's sync API blocks its thread, and the test's reactor must keep
serving the page origin and the upstream meanwhile: run browser code with
:func:`in_browser` (a thread).  Without Chromium the tests skip, except when
``MTERELAY_REQUIRE_BROWSER=1`` (set by ``.ci/run``), where they fail.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet import threads
from twisted.trial.unittest import SkipTest

os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"

CHROMIUM = os.environ.get("MTERELAY_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_browser() -> None:
    """Skip (or fail in CI) when Chromium or Playwright is missing."""
    problem = None
    if not os.access(CHROMIUM, os.X_OK):
        problem = f"{CHROMIUM} not found (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "playwright is not installed (pip install -e '.[test]')"
    if problem is None:
        return
    if os.environ.get("MTERELAY_REQUIRE_BROWSER") == "1":
        raise AssertionError(f"browser tests required but {problem}")
    raise SkipTest(problem)


@contextmanager
def chromium(ignore_https_errors: bool = False) -> Iterator[Any]:
    """A Chromium browser context with a fresh, temporary user-data directory."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="mterelay-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                ignore_https_errors=ignore_https_errors)
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def in_browser(function: Callable[..., Any], *args: Any) -> Any:
    """Run ``function(context, *args)`` in a thread with its own Chromium; a Deferred."""
    def run() -> Any:
        with chromium() as context:
            return function(context, *args)
    return threads.deferToThread(run)
