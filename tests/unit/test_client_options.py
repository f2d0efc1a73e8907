"""RelayClient.request(options=...): per-request sealing choices on one shared pool of pairs.

The outbound relay serves many applications through one client, each
request with its own x-mte-encode-* choices; the pairs must not depend on them.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mterelay.client import SealOptions
from mterelay.protocol.errors import EncodeFailed
from mterelay.protocol.header import RelayHeader
from mterelay.protocol.sealing import MAX_MTE_BODY
from tests.helpers.clientsupport import RELAY, ClientHarness

HEADERS = {"x-secret": "s", "x-other": "o", "content-type": "text/plain"}


class PerRequestOptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = ClientHarness.build()
        self.client = self.h.client(pairs=2)

    def send(self, options: SealOptions | None) -> tuple[bytes, dict[bytes, list[bytes]]]:
        self.h.call(self.client, "PUT", "/api/things/1?q=1", headers=HEADERS, data=b"body",
                    options=options)
        seen = self.h.upstream.received[-1]
        self.assertEqual((seen.method, seen.uri, seen.body),
                         (b"PUT", b"/api/things/1?q=1", b"body"))
        self.assertEqual(seen.headers[b"x-secret"], [b"s"])
        self.assertEqual(seen.headers[b"x-other"], [b"o"])
        self.assertEqual(seen.headers[b"content-type"], [b"text/plain"])
        _, uri, wire = self.h.switch.seen[-1]
        return uri, wire

    def test_options_apply_to_one_request_only(self) -> None:
        uri, wire = self.send(SealOptions.build(seal_url=False, seal_headers="none",
                                                framing="MTE"))
        self.assertEqual(uri, b"/api/things/1?q=1")
        self.assertEqual(wire[b"x-secret"], [b"s"])
        header = RelayHeader.parse(wire[b"x-mte-relay"][0].decode())
        self.assertEqual((header.mode, header.url_enc, header.headers_enc), ("MTE", False, False))
        # The next request without options uses the client's own (seal everything).
        uri, wire = self.send(None)
        self.assertNotIn(b"things", uri)
        self.assertNotIn(b"x-secret", wire)
        header = RelayHeader.parse(wire[b"x-mte-relay"][0].decode())
        self.assertEqual((header.mode, header.url_enc, header.headers_enc), ("MKR", True, True))

    def test_header_list(self) -> None:
        _, wire = self.send(SealOptions.build(seal_headers=["x-secret"]))
        self.assertNotIn(b"x-secret", wire)
        self.assertEqual(wire[b"x-other"], [b"o"])

    def test_pairs_shared_across_options(self) -> None:
        for options in (None, SealOptions.build(framing="MTE"),
                        SealOptions.build(seal_url=False), SealOptions.build(seal_headers="none")):
            self.send(options)
        self.assertEqual(self.h.switch.count(b"POST", b"/api/mte-pair"), 1)
        self.assertEqual(len(self.client.origin_pool(RELAY).pairs), 2)

    def test_mte_limit_checked_with_the_request_options(self) -> None:
        class Huge:
            def seekable(self) -> bool:
                return True

            def tell(self) -> int:
                return 0

            def seek(self, offset: int, whence: int = 0) -> int:
                return MAX_MTE_BODY + 1 if whence == 2 else offset

            def read(self, size: int) -> bytes:
                return b""

        with self.assertRaises(EncodeFailed):
            self.h.wait(self.client.request("POST", RELAY + "/x", data=Huge(),
                                            options=SealOptions.build(framing="MTE")))
        self.assertEqual(self.h.switch.encrypted(), [])
