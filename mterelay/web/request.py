"""The relay's request class: Twisted's Request, its body streamed, its own state declared.

Everything the relay keeps about one request while it is answered - its id,
its route, when it started, whether its access line is written, why it was
refused - is a field declared here with its default, instead of attributes
stuck onto a Twisted object and read back with ``getattr`` defaults.  A typo
in a field name is then an AttributeError at the line that makes it, and
reading a field is a plain attribute lookup (no exception behind a default).

:class:`~mterelay.web.site.RelaySite` makes every request with this class;
the in-memory tests' Site does too (``tests/support.py``), so both run the
same code.
"""

from __future__ import annotations

from typing import Any

from mterelay.http.headers import REQUEST_ID_HEADER
from mterelay.http.streaming import StreamingRequest

__all__ = ["RelayRequest"]


class RelayRequest(StreamingRequest):
    """A :class:`StreamingRequest` with the relay's per-request fields."""

    #: The id every log line of the request carries: the caller's ``x-request-id``
    #: when usable, else a fresh one (RelaySite); the one sealed by an outbound
    #: relay once the headers item is open (web/inbound.adopt_request_id).
    #: None only for a request no RelaySite has seen.
    request_id: str | None = None
    #: DEBUG: send ``x-request-id`` back with the answer (RelaySite sets it).
    echo_request_id: bool = False
    #: The route taken, a metrics label (service/metrics.ROLES); web/root sets it.
    role: str = "other"
    #: The site clock's reading when the site first saw the request; None when
    #: Twisted answered it without the site (``OPTIONS *``).
    started_at: float | None = None
    #: The access line is written (the answer is complete); else it counts as 499.
    access_logged: bool = False
    #: The message of the relay's own refusal, counted by code once answered.
    refusal: str | None = None
    #: The connection the site tracks for this request (the outer protocol).
    site_channel: Any = None

    def write(self, data: bytes) -> None:
        if self.echo_request_id and not self.startedWriting and self.request_id is not None:
            # Set as the headers go out, so it replaces any the upstream sent.
            self.responseHeaders.setRawHeaders(REQUEST_ID_HEADER,
                                               [self.request_id.encode("ascii")])
        super().write(data)
