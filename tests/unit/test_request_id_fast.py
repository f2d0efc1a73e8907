"""http/headers.new_request_id: what uuid.uuid4().hex gave, made cheaper."""

from __future__ import annotations

import uuid

from twisted.trial.unittest import SynchronousTestCase

from mterelay.http.headers import new_request_id, request_id_for


class NewRequestIdTests(SynchronousTestCase):
    def test_a_version_4_uuid_in_hex(self) -> None:
        ids = {new_request_id() for _ in range(5000)}
        self.assertEqual(len(ids), 5000)
        for text in ids:
            parsed = uuid.UUID(hex=text)
            self.assertEqual((parsed.hex, parsed.version, parsed.variant),
                             (text, 4, uuid.RFC_4122))

    def test_minted_when_the_caller_has_none(self) -> None:
        minted = request_id_for(None)
        self.assertEqual(uuid.UUID(hex=minted).version, 4)
        self.assertEqual(len(minted), 32)
