"""What every relayed request shares, whichever role relays it.

An exchange owns one incoming request while something is outstanding on its
behalf: a forwarded request (``pending``) and, once answered, a streamed body
(``streaming``).  When the client leaves, both are cancelled so nothing keeps
running for nobody; a crash in the role's own code still gets one answer.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from mterelay.http.twistedinternals import is_disconnected

__all__ = ["Exchange", "finish_with"]


def finish_with(request: IRequest, body: bytes) -> None:
    """Send ``body`` as the whole answer, unless the client left or it was answered."""
    if is_disconnected(request) or request.finished:
        return
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


class Exchange:
    """The base of the inbound and outbound exchanges: start, client gone, crash."""

    def __init__(self, request: IRequest) -> None:
        self.request = request
        self.gone = False
        #: The request sent on the client's behalf (UPSTREAM or the remote relay).
        self.pending: Deferred[Any] | None = None
        #: The answer's body being streamed to the client (cancel: close it).
        self.streaming: Deferred[None] | None = None

    def start(self) -> None:
        self.request.notifyFinish().addErrback(self._client_gone)
        ensureDeferred(self.run()).addErrback(self._crashed)

    async def run(self) -> None:
        raise NotImplementedError

    def _crashed(self, failure: Failure) -> None:
        raise NotImplementedError

    def _client_gone(self, _: Failure) -> None:
        self.gone = True
        if self.pending is not None:
            self.pending.cancel()
        if self.streaming is not None:
            # A live stream's client left: end the request behind it too.
            self.streaming.cancel()

    def _send(self, body: bytes) -> None:
        if not self.gone:
            finish_with(self.request, body)
