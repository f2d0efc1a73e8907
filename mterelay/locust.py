"""Load-test an API through mterelay with Locust: ``MteRelayUser`` and ``MteRelaySession``.

    from locust import task
    from mterelay.locust import MteRelayUser

    class Patient(MteRelayUser):
        host = "https://relay.example"

        @task
        def login(self):
            self.client.post("/api/login", json={"user": "a", "password": "b"}, name="login")

``self.client`` is used exactly like Locust's ``HttpSession`` (``name=``,
``catch_response=``, ``json=``, ``params=``), but
every request travels sealed as :class:`~mterelay.client.RelayClient`
seals it: the user validates and pairs once (those requests are reported
under ``/api/mte-relay`` and ``/api/mte-pair``), seals the url, headers and
body, opens the answer, and re-pairs and resends once on 559/560/562/566
when spec 10.2 allows.  An answer that fails to open, or a relay refusal
that was not recovered, is reported as a failure.  ``seal=False`` sends a
request in clear (the relay's echo route, pass-through routes).  Cookies the
upstream sets travel sealed both ways and are kept per user in
``self.client.sealed_cookies``, apart from Locust's clear ``cookies`` jar, so
a clear request never carries them.

It runs on Locust's own requests/gevent session; the protocol is the pure
:mod:`mterelay.protocol` through :class:`~mterelay.syncclient.SyncRelayClient`,
no Twisted reactor.  Install with ``pip install 'mterelay[locust]'``.
"""

from __future__ import annotations

import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

try:
    import requests
    from locust import HttpUser
    from locust.clients import HttpSession, ResponseContextManager
except ImportError as error:  # pragma: no cover - exercised in a process without Locust
    raise ImportError("mterelay.locust needs Locust, an optional extra: "
                      "pip install 'mterelay[locust]'") from error

from requests.cookies import extract_cookies_to_jar
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers
from urllib3.util import SKIP_HEADER

from mterelay import __version__
from mterelay.client.messages import HeaderList, SealOptions
from mterelay.client.relay import split_url
from mterelay.syncclient import SealedAnswer, SyncRelayClient, WireAnswer, lower_headers

__all__ = ["MteRelayUser", "MteRelaySession", "MteRelayError"]

#: requests keywords that keep their meaning here; redirects are never followed
#: (a sealed 3xx is the upstream's answer, handed back as it is).
_PLAIN_KEYWORDS = frozenset({"headers", "params", "cookies", "files", "auth"})
_WIRE_KEYWORDS = frozenset({"timeout", "verify", "cert", "allow_redirects"})


class MteRelayError(requests.exceptions.RequestException):
    """A relay refusal that was not recovered, or an answer that did not open (local 562).

    A ``RequestException`` so Locust's response handling counts it as the
    request's failure; its text (the error class and reason) groups the
    failures table.
    """


def _failure(error: BaseException) -> MteRelayError:
    return MteRelayError(f"{type(error).__name__}: {error}")


class _SealedCookies:
    """What ``extract_cookies_to_jar`` reads: the sealed ``Set-Cookie`` values only."""

    def __init__(self, headers: HeaderList) -> None:
        self._cookies = [v for n, v in headers if n == "set-cookie"]

    def get_all(self, name: str, default: Any = None) -> Any:
        return list(self._cookies) if name.lower() == "set-cookie" else default


class MteRelaySession(HttpSession):
    """Locust's ``HttpSession`` whose requests are sealed end to end.

    Seal options are those of ``RelayClient``: ``seal_url``, ``seal_headers``
    (``"all"``, ``"none"`` or a list of names), ``framing`` (``"MKR"``,
    ``"MKE"``, ``"MTE"``), ``response_headers`` and ``fixed_path``; ``pairs``
    is how many pairs the user makes in its one pairing (1 is enough for a
    user that sends one request at a time).

    Reported response times cover the sealed exchange (resend included);
    validation and pairing are reported apart, under their own names, and
    not counted twice.  ``response_length`` is the opened (plaintext) length.
    """

    def __init__(self, base_url: str, request_event: Any, user: Any, *, pairs: int = 1,
                 seal_url: bool = True, seal_headers: Any = "all", framing: str = "MKR",
                 response_headers: Any = "*", fixed_path: bool = True,
                 pool_manager: Any = None) -> None:
        super().__init__(base_url, request_event, user, pool_manager=pool_manager)
        self.trust_env = False
        # Sealed with every request: no compression the caller did not ask
        # for (the opened body is handed back as the upstream sent it).
        self.headers = CaseInsensitiveDict({"User-Agent": f"mterelay-locust/{__version__}",
                                            "Accept-Encoding": "identity"})
        self.options = SealOptions.build(seal_url=seal_url, seal_headers=seal_headers,
                                         framing=framing, response_headers=response_headers)
        self.pairs = pairs
        self.fixed_path = fixed_path
        #: Cookies the upstream set in sealed answers: sent sealed only, never
        #: with a ``seal=False`` request (``self.cookies`` is the clear jar).
        self.sealed_cookies = requests.cookies.RequestsCookieJar()
        self._relays: dict[str, SyncRelayClient] = {}
        self._wire: dict[str, Any] = {}

    def relay(self, url: str) -> SyncRelayClient:
        """The protocol state (client id, pairs) of ``url``'s relay origin."""
        origin = split_url(self._build_url(url))[0]
        relay = self._relays.get(origin)
        if relay is None:
            relay = self._relays[origin] = SyncRelayClient(
                self._send_wire, origin, pairs=self.pairs, options=self.options,
                fixed_path=self.fixed_path, on_handshake=self._report_handshake)
        return relay

    # ------------------------------------------------------------ the wire

    def _send_wire(self, method: str, url: str, headers: HeaderList,
                   body: bytes | None) -> WireAnswer:
        """One exchange with exactly these headers: no session defaults, no cookies.

        Only what the protocol built goes out; urllib3's own User-Agent and
        http.client's Accept-Encoding are suppressed (the relay forwards
        clear headers, spec 8.3).
        """
        wire = {"User-Agent": SKIP_HEADER, "Accept-Encoding": SKIP_HEADER}
        for name, value in headers:
            wire[name] = value
        prepared = requests.PreparedRequest()
        prepared.prepare(method=method, url=url, headers=wire, data=body)
        response = requests.Session.send(
            self, prepared, stream=True, allow_redirects=False,
            timeout=self._wire.get("timeout"), verify=self._wire.get("verify", self.verify),
            cert=self._wire.get("cert", self.cert), proxies={})
        try:
            content = response.raw.read(decode_content=False)
        finally:
            response.close()
        return WireAnswer(response.status_code, response.reason or "",
                          lower_headers(response.raw.headers.items()), content)

    def _report_handshake(self, method: str, path: str, url: str, milliseconds: float,
                          length: int, error: BaseException | None) -> None:
        self.request_event.fire(
            request_type=method, name=path, response_time=milliseconds,
            response_length=length, response=None,
            context=self.user.context() if self.user else {},
            exception=None if error is None else _failure(error),
            start_time=time.time() - milliseconds / 1000, url=url)

    # ------------------------------------------------------------ requests

    def request(  # type: ignore[override]
                self, method: str | bytes, url: str | bytes, name: str | None = None,
                catch_response: bool = False, context: dict[str, Any] | None = None, *,
                data: Any = None, json: Any = None, seal: bool = True,
                **kwargs: Any) -> ResponseContextManager:
        """Send one sealed request (``seal=False``: Locust's plain request) and report it."""
        if not seal:
            return super().request(method, url, name, catch_response, context or {},
                                   data=data, json=json, **kwargs)
        unknown = set(kwargs) - _PLAIN_KEYWORDS - _WIRE_KEYWORDS
        if unknown:
            raise TypeError(f"MteRelaySession.request: unsupported argument(s) "
                            f"{', '.join(sorted(unknown))}")
        if self.request_name and not name:
            name = self.request_name
        method_text = (method.decode("ascii") if isinstance(method, bytes) else method).upper()
        complete_url = self._build_url(url.decode() if isinstance(url, bytes) else url)
        plain_kwargs = {k: v for k, v in kwargs.items() if k in _PLAIN_KEYWORDS}
        cookies = requests.cookies.merge_cookies(
            requests.cookies.cookiejar_from_dict({}), self.sealed_cookies)
        if plain_kwargs.get("cookies") is not None:
            cookies = requests.cookies.merge_cookies(cookies, plain_kwargs["cookies"])
        plain_kwargs["cookies"] = cookies
        plain = requests.Session.prepare_request(self, requests.Request(
            method=method_text, url=complete_url, data=data, json=json, **plain_kwargs))
        self._wire = {k: v for k, v in kwargs.items() if k in _WIRE_KEYWORDS}
        body = _body_bytes(plain.body)
        relay = self.relay(complete_url)
        start_time = time.time()
        started = time.perf_counter()
        answer: SealedAnswer | None = None
        error: BaseException | None = None
        try:
            answer = relay.request(method_text, str(plain.url),
                                   lower_headers(plain.headers.items()), body)
        except requests.exceptions.RequestException as transport:
            error = transport
        except Exception as refused:  # a handshake that failed: NotARelay, PairingFailed, 55x
            error = _failure(refused)
        elapsed = (time.perf_counter() - started) * 1000
        response_time = max(0.0, elapsed - relay.last_handshake_ms)
        if answer is not None and answer.error is not None:
            error = _failure(answer.error)
        response = self._plain_response(answer, plain, response_time)
        if answer is not None and answer.sealed:
            extract_cookies_to_jar(self.sealed_cookies, plain, SimpleNamespace(
                _original_response=SimpleNamespace(msg=_SealedCookies(answer.headers))))
        request_meta = {
            "request_type": method_text,
            "response_time": response_time,
            "name": name or plain.path_url,
            "context": {**(self.user.context() if self.user else {}), **(context or {})},
            "response": response,
            "exception": None,
            "start_time": start_time,
            "url": complete_url,
            "response_length": len(answer.body) if answer is not None else 0,
        }
        wrapped = ResponseContextManager.wrap_response(
            response, request_event=self.request_event, request_meta=request_meta,
            catch_response=catch_response)
        wrapped.error = error
        if not catch_response:
            wrapped.__exit__(None, None, None)
        return wrapped

    @staticmethod
    def _plain_response(answer: SealedAnswer | None, plain: requests.PreparedRequest,
                        milliseconds: float) -> requests.Response:
        """The answer as the ``requests.Response`` a Locust task expects (opened body)."""
        response = requests.Response()
        response.request = plain
        response.url = str(plain.url)
        response.elapsed = timedelta(milliseconds=milliseconds)
        response._content = b""
        response.status_code = 0
        if answer is not None:
            response.status_code = answer.status
            response.reason = answer.reason
            headers: CaseInsensitiveDict[str] = CaseInsensitiveDict()
            for header, value in answer.headers:
                headers[header] = f"{headers[header]}, {value}" if header in headers else value
            response.headers = headers
            response._content = answer.body
            response.encoding = get_encoding_from_headers(headers)
        response._content_consumed = True
        #: True for an authentic upstream answer, False for a relay's clear one.
        response.sealed = answer is not None and answer.sealed  # type: ignore[attr-defined]
        return response


def _body_bytes(body: Any) -> bytes | None:
    """The prepared body whole: a load test sends what it holds, so it can be resent."""
    if body is None or isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if callable(getattr(body, "read", None)):
        data = body.read()
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return b"".join(part.encode("utf-8") if isinstance(part, str) else bytes(part)
                    for part in body)


class MteRelayUser(HttpUser):
    """A Locust ``HttpUser`` whose ``self.client`` seals every request through mterelay.

    Subclass it, set ``host`` (the relay, e.g. ``https://relay.example``) and
    write tasks as for any ``HttpUser``.  Class attributes choose what is
    sealed (the defaults seal everything, as ``RelayClient`` does); each
    user pairs once, lazily, on its first sealed request.
    """

    abstract = True
    pairs: int = 1
    seal_url: bool = True
    seal_headers: Any = "all"
    framing: str = "MKR"
    response_headers: Any = "*"
    fixed_path: bool = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client = MteRelaySession(  # type: ignore[assignment]
            base_url=self.host, request_event=self.environment.events.request, user=self,
            pairs=self.pairs, seal_url=self.seal_url, seal_headers=self.seal_headers,
            framing=self.framing, response_headers=self.response_headers,
            fixed_path=self.fixed_path, pool_manager=self.pool_manager)
