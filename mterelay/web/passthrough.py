"""PASS_THROUGH_ROUTES: proxied to UPSTREAM in clear, bodies streamed both ways."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest, IResponse
from twisted.web.server import NOT_DONE_YET

from mterelay.http.upstream import (
    UpstreamError,
    UpstreamForwarder,
    copy_end_to_end,
    forwarded_for,
    stream_body,
)
from mterelay.web.responses import (MAYBE_REACHED, NOT_REACHED, request_id,
                                    unlogged_error_body)
from mterelay.http.streaming import request_body

log = Logger(namespace="mterelay.passthrough")

def relay_response(request: IRequest, response: IResponse, finishing: Any) -> Any:
    """Copy status and headers, then stream the body; relay-owned headers win."""
    request.setResponseCode(response.code, response.phrase or None)
    # Twisted's client parser keeps Connection, Content-Length and friends out
    # of ``response.headers`` (so headers a response's Connection header
    # nominates cannot be identified); the length survives as ``.length``.
    copy_end_to_end(
        response.headers,
        request.responseHeaders,
        drop_prefixes=(b"access-control-",),
    )
    if (
        isinstance(response.length, int)
        and request.method != b"HEAD"
        and response.code not in (204, 304)
    ):
        request.setHeader(b"content-length", b"%d" % response.length)
    return finishing(stream_body(response, request))


def render_passthrough(request: IRequest, forwarder: UpstreamForwarder) -> Any:
    gone: list[bool] = []
    started = forwarder.forward(
        request.method,
        request.uri,
        forwarder.outgoing_headers(request.requestHeaders, forwarded_for(request),
                                   request_id=request_id(request)),
        request_body(request),
    )

    def client_gone(_: Any) -> None:
        gone.append(True)
        started.cancel()

    request.notifyFinish().addErrback(client_gone)

    def finishing(streamed: Any) -> Any:
        def done(result: Any) -> None:
            if isinstance(result, Failure):
                log.info("upstream body interrupted: {why}", why=result.getErrorMessage(),
                         request_id=request_id(request))
                if not gone:
                    request.loseConnection()
                return
            if not gone:
                request.finish()

        return streamed.addBoth(done)

    def failed(failure: Failure) -> None:
        if gone or failure.check(CancelledError):
            return
        error = failure.value
        if isinstance(error, UpstreamError):
            log.warn(
                "upstream failed for {path}: {why}",
                path=request.path.decode("latin-1")[:200],
                why=str(error),
                request_id=request_id(request),
            )
            message = "Upstream timed out" if error.status == 504 else "Upstream unreachable"
            request.write(unlogged_error_body(request, error.status, message, str(error),
                                              NOT_REACHED if error.not_sent else MAYBE_REACHED))
            request.finish()
            return
        log.failure("pass-through failed", failure, request_id=request_id(request))
        request.write(unlogged_error_body(request, 502, "Bad gateway",
                                          "the relay failed to handle this request",
                                          MAYBE_REACHED))
        request.finish()

    started.addCallback(lambda response: relay_response(request, response, finishing))
    started.addErrback(failed)
    return NOT_DONE_YET
