"""Tests for sealing pair secrets at rest (mterelay.store.atrest)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mterelay.store.atrest import AtRestError, SecretSealer

SECRET = b"s" * 32
KEY = b"mterelay:pair:client:pair"


class SecretSealerTests(SynchronousTestCase):
    def test_round_trip_and_fresh_nonces(self):
        sealer = SecretSealer(SECRET)
        first, second = sealer.seal(b"keys", KEY), sealer.seal(b"keys", KEY)
        self.assertNotEqual(first, second)
        self.assertEqual(len(first), 1 + 12 + 4 + 16)
        self.assertEqual(sealer.open(first, KEY), b"keys")
        self.assertEqual(SecretSealer(SECRET).open(second, KEY), b"keys")

    def test_bound_to_the_key_name(self):
        sealer = SecretSealer(SECRET)
        blob = sealer.seal(b"keys", KEY)
        self.assertRaises(AtRestError, sealer.open, blob, KEY + b"x")

    def test_bound_to_the_secret(self):
        blob = SecretSealer(SECRET).seal(b"keys", KEY)
        self.assertRaises(AtRestError, SecretSealer(b"t" * 32).open, blob, KEY)

    def test_previous_secrets_only_open(self):
        old_blob = SecretSealer(b"o" * 32).seal(b"old keys", KEY)
        rotating = SecretSealer(SECRET, [b"o" * 32])
        self.assertEqual(rotating.open(old_blob, KEY), b"old keys")
        new_blob = rotating.seal(b"new keys", KEY)
        self.assertRaises(AtRestError, SecretSealer(b"o" * 32).open, new_blob, KEY)
        self.assertEqual(SecretSealer(SECRET).open(new_blob, KEY), b"new keys")
        self.assertRaises(AtRestError, rotating.open, SecretSealer(b"x" * 32).seal(b"k", KEY),
                          KEY)
        self.assertRaises(ValueError, SecretSealer, SECRET, [b"short"])

    def test_tampering_and_garbage(self):
        sealer = SecretSealer(SECRET)
        blob = sealer.seal(b"keys", KEY)
        for bad in (b"", blob[:28], b"\x02" + blob[1:],
                    blob[:-1] + bytes([blob[-1] ^ 1]), blob[:5] + bytes([blob[5] ^ 1]) + blob[6:]):
            self.assertRaises(AtRestError, sealer.open, bad, KEY)

    def test_secret_requirements(self):
        self.assertRaises(ValueError, SecretSealer, b"short")
        self.assertRaises(TypeError, SecretSealer, "x" * 32)
        self.assertNotIn("s" * 8, repr(SecretSealer(SECRET)))
