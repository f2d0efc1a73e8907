"""Header integrity on relay B, in memory: clear headers of the hop never override sealed ones.

The sealing side is the spec-following ``Sealer`` of ``tests.unit.test_inbound``,
so what is checked is the relay's reading of the wire, not our own client's.
The same attacks over real sockets, with an on-path rewriter between the
relays, are in ``tests.integration.test_rewriter_integration``.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.support import MemoryRelay
from tests.helpers.sealer import Sealer


class RequestHeaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.relay = MemoryRelay.build()
        self.client = Sealer(self.relay)
        self.keys = self.client.pair()[0]
        self.upstream = self.relay.upstream

    def test_clear_connection_cannot_strip_sealed_headers(self) -> None:
        # Failed before the fix: the clear Connection header's nominations
        # were applied to the merged headers, sealed ones included.
        sent = self.client.send(
            "GET", "/api/items",
            {"authorization": ["Bearer sealed"], "x-api-key": ["k-123"]},
            clear={"connection": ["authorization, x-api-key"]})
        self.assertEqual(sent.response.code, 200)
        seen = self.upstream.received[-1].headers
        self.assertEqual(seen.get(b"authorization"), [b"Bearer sealed"])
        self.assertEqual(seen.get(b"x-api-key"), [b"k-123"])

    def test_clear_connection_still_drops_clear_hop_headers(self) -> None:
        sent = self.client.send("GET", "/api/items", {"x-sealed": ["1"]},
                                clear={"connection": ["x-hop"], "x-hop": ["1"],
                                       "x-clear": ["2"]})
        self.assertEqual(sent.response.code, 200)
        seen = self.upstream.received[-1].headers
        self.assertNotIn(b"x-hop", seen)
        self.assertEqual(seen.get(b"x-clear"), [b"2"])
        self.assertEqual(seen.get(b"x-sealed"), [b"1"])

    def test_sealed_hop_by_hop_names_are_not_forwarded(self) -> None:
        sent = self.client.send("GET", "/api/items", {"keep-alive": ["timeout=5"],
                                                      "te": ["trailers"]})
        self.assertEqual(sent.response.code, 200)
        seen = self.upstream.received[-1].headers
        self.assertNotIn(b"keep-alive", seen)
        self.assertNotIn(b"te", seen)


class ResponseSelectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.relay = MemoryRelay.build()
        self.client = Sealer(self.relay)
        self.keys = self.client.pair()[0]
        self.upstream = self.relay.upstream
        self.upstream.headers = [(b"content-type", b"text/plain"), (b"etag", b'"v1"'),
                                 (b"set-cookie", b"s=1")]

    def test_clear_selection_with_headers_enc_0(self) -> None:
        # Failed before the fix: 500 with a critical traceback (the clear
        # value reached _text() as a str).
        sent = self.client.send("GET", "/api/items", headers_enc=False,
                                clear={"x-mte-response-headers": ["etag"]})
        self.assertEqual(sent.response.code, 200, sent.body)
        sealed, _ = Sealer.open(sent, self.keys)
        self.assertEqual(set(sealed) - {"date", "server"}, {"content-type", "etag"})
        self.assertEqual(sent.response.headers.getRawHeaders(b"set-cookie"), [b"s=1"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_clear_selection_ignored_with_headers_enc_1(self) -> None:
        # With headersEnc=1 the client seals its choice; a clear one was added
        # on the way and must not make the relay send headers in clear.
        sent = self.client.send("GET", "/api/items", {"accept": ["*/*"]},
                                clear={"x-mte-response-headers": ["etag"]})
        self.assertEqual(sent.response.code, 200, sent.body)
        sealed, _ = Sealer.open(sent, self.keys)
        self.assertEqual(set(sealed) - {"date", "server"}, {"content-type", "etag", "set-cookie"})
        self.assertIsNone(sent.response.headers.getRawHeaders(b"set-cookie"))

    def test_sealed_selection_wins(self) -> None:
        sent = self.client.send("GET", "/api/items", {"x-mte-response-headers": ["set-cookie"]},
                                clear={"x-mte-response-headers": ["*"]})
        sealed, _ = Sealer.open(sent, self.keys)
        self.assertEqual(set(sealed) - {"date", "server"}, {"content-type", "set-cookie"})
        self.assertEqual(sent.response.headers.getRawHeaders(b"etag"), [b'"v1"'])
