"""What every relayed request shares, whichever role relays it.

An exchange owns one incoming request while something is outstanding on its
behalf: a forwarded request (``pending``) and, once answered, a streamed body
(``streaming``).  When the client leaves, both are cancelled so nothing keeps
running for nobody; a crash in the role's own code still gets one answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest, IResponse

from mterelay.http.twistedinternals import is_disconnected
from mterelay.http.upstream import stream_body

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

    async def stream_answer(self, response: IResponse, consumer: Any, clock: IReactorTime,
                            idle_timeout: float | None,
                            interrupted: Callable[[Exception], None]) -> bool:
        """Stream ``response``'s body into ``consumer``; True when it all arrived
        and the client is still there to be answered (the caller finishes).

        A body cut short (the connection behind it broke, a chunk did not
        authenticate, it went idle) is reported to ``interrupted`` once, and
        the client's connection is cut: a client must never take a cut body
        for a whole one.
        """
        self.streaming = stream_body(response, consumer, clock, idle_timeout)
        try:
            await self.streaming
        except Exception as error:
            interrupted(error)
            if not self.gone:
                self.request.loseConnection()
            return False
        finally:
            self.streaming = None
        return not self.gone
