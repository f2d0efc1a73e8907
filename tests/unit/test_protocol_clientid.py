"""Signed client ids."""

from __future__ import annotations

import uuid

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol.clientid import (CLIENT_ID_LENGTH, client_uuid, is_client_id,
                                        new_client_id, sign_client_uuid,
                                        verify_client_id, VerifiedIds)
from mterelay.protocol.errors import InvalidClientId

SECRET = b"a-client-id-secret-of-32-chars!!"
OLD = b"the-previous-secret-before-rotation"
FIXED = uuid.UUID("12345678-1234-4234-8234-123456789abc")


class ClientIdTests(SynchronousTestCase):
    def test_format(self) -> None:
        value = new_client_id(SECRET, lambda: FIXED)
        self.assertEqual(len(value), CLIENT_ID_LENGTH)
        self.assertTrue(value.startswith(str(FIXED) + "."))
        # HMAC-SHA256(key=secret, msg=uuid ascii), lowercase hex.
        import hashlib
        import hmac
        self.assertEqual(value.split(".")[1],
                         hmac.new(SECRET, str(FIXED).encode(), hashlib.sha256).hexdigest())
        self.assertTrue(is_client_id(value))
        self.assertEqual(client_uuid(value), str(FIXED))

    def test_random(self) -> None:
        a, b = new_client_id(SECRET), new_client_id(SECRET)
        self.assertNotEqual(a, b)
        self.assertEqual(verify_client_id(a, [SECRET]), a[:36])

    def test_rotation(self) -> None:
        old = new_client_id(OLD, lambda: FIXED)
        self.assertEqual(verify_client_id(old, [SECRET, OLD]), str(FIXED))
        self.assertRaises(InvalidClientId, verify_client_id, old, [SECRET])

    def test_resign_keeps_the_uuid(self) -> None:
        old = new_client_id(OLD, lambda: FIXED)
        renewed = sign_client_uuid(SECRET, verify_client_id(old, [SECRET, OLD]))
        self.assertEqual(renewed, new_client_id(SECRET, lambda: FIXED))
        self.assertEqual(verify_client_id(renewed, [SECRET]), str(FIXED))
        self.assertRaises(ValueError, sign_client_uuid, SECRET, "not-a-uuid")
        self.assertRaises(ValueError, sign_client_uuid, b"", str(FIXED))

    def test_bad_factory_or_secret(self) -> None:
        self.assertRaises(ValueError, new_client_id, SECRET,
                          lambda: uuid.UUID("12345678-1234-1234-8234-123456789abc"))
        self.assertRaises(ValueError, new_client_id, b"", lambda: FIXED)
        self.assertRaises(ValueError, new_client_id, "str-secret", lambda: FIXED)
        self.assertRaises(ValueError, verify_client_id, new_client_id(SECRET), [])
        self.assertRaises(ValueError, client_uuid, str(FIXED))

    def test_grammar(self) -> None:
        good = new_client_id(SECRET, lambda: FIXED)
        bad = [
            good.upper(), good + " ", " " + good, good + "\n", good[:-1], good + "0",
            good.replace(".", ":"), str(FIXED), "", good.replace("-4234-", "-1234-"),
            good.replace("-8234-", "-c234-"), good[:37] + "g" + good[38:],
            "{" + good[1:], None, 12, good.encode(),
        ]
        for value in bad:
            with self.assertRaises(InvalidClientId, msg=repr(value)):
                verify_client_id(value, [SECRET])  # type: ignore[arg-type]

    def test_wrong_signature(self) -> None:
        good = new_client_id(SECRET, lambda: FIXED)
        flipped = good[:-1] + ("0" if good[-1] != "0" else "1")
        with self.assertRaises(InvalidClientId) as ctx:
            verify_client_id(flipped, [SECRET])
        self.assertEqual(ctx.exception.code, 566)
        other_uuid = "22345678-1234-4234-8234-123456789abc" + good[36:]
        self.assertRaises(InvalidClientId, verify_client_id, other_uuid, [SECRET])

    @settings(max_examples=200)
    @given(st.text(max_size=120))
    def test_garbage(self, value: str) -> None:
        try:
            verify_client_id(value, [SECRET])
        except InvalidClientId:
            return
        self.fail(f"accepted {value!r}")  # pragma: no cover


class VerifiedIdsTests(SynchronousTestCase):
    """The memo of verified ids answers exactly what verify_client_id answers."""

    def test_same_answer_as_the_full_check(self) -> None:
        ids = VerifiedIds()
        good = new_client_id(SECRET)
        self.assertEqual(ids.verify(good, (SECRET,)), verify_client_id(good, (SECRET,)))
        self.assertEqual(ids.verify(good, (SECRET,)), good[:36])  # from the memo
        self.assertEqual(len(ids), 1)

    def test_an_id_that_does_not_verify_is_refused_every_time(self) -> None:
        ids = VerifiedIds()
        good = new_client_id(SECRET, lambda: FIXED)
        ids.verify(good, (SECRET,))
        forged = good[:-1] + ("0" if good[-1] != "0" else "1")  # same uuid, bad signature
        for _ in range(2):
            with self.assertRaises(InvalidClientId):
                ids.verify(forged, (SECRET,))
        for bad in ("not an id", None, 7, good.upper()):
            with self.assertRaises(InvalidClientId):
                ids.verify(bad, (SECRET,))
        self.assertEqual(len(ids), 1)

    def test_retired_secret_is_not_answered_from_the_memo(self) -> None:
        # An id remembered while OLD was accepted must be refused once OLD is
        # retired: the memo belongs to the secrets it was filled under.
        ids = VerifiedIds()
        old = new_client_id(OLD, lambda: FIXED)
        self.assertEqual(ids.verify(old, (SECRET, OLD)), str(FIXED))
        with self.assertRaises(InvalidClientId):
            ids.verify(old, (SECRET,))
        self.assertEqual(ids.verify(old, [SECRET, OLD]), str(FIXED))  # any sequence

    def test_bounded(self) -> None:
        ids = VerifiedIds(max_entries=3)
        values = [new_client_id(SECRET) for _ in range(5)]
        for value in values:
            ids.verify(value, (SECRET,))
        self.assertEqual(len(ids), 3)
        for value in values:  # evicted ones still verify, through the full check
            self.assertEqual(ids.verify(value, (SECRET,)), value[:36])
        with self.assertRaises(ValueError):
            VerifiedIds(max_entries=0)
