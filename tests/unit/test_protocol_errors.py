"""Relay error codes, verbatim messages and JSON bodies."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mterelay.protocol import errors


class RelayErrorTests(SynchronousTestCase):
    def test_codes_and_messages(self) -> None:
        expected = {
            559: "Repair is required.",
            560: "State not found.",
            561: "Failed to encode.",
            562: "Failed to decode.",
            563: "Failed to get state from encoder or decoder.",
            564: "DRBG reseed is required.",
            565: "MTE Status was not successful.",
            566: "Invalid Client ID header.",
            567: "Unsupported protocol version.",
            568: "Malformed relay header.",
            569: "Missing required header.",
        }
        self.assertEqual(sorted(errors.ERRORS_BY_CODE), list(range(559, 570)))
        for code, message in expected.items():
            error = errors.error_for_code(code)
            self.assertIsInstance(error, errors.RelayError)
            self.assertEqual((error.code, error.message), (code, message))
            self.assertEqual(error.to_json(), {"error": message, "code": code,
                                               "reason": message.rstrip(".")})

    def test_info(self) -> None:
        error = errors.DecodeFailed("body truncated")
        self.assertEqual(error.info, "body truncated")
        self.assertEqual(error.to_json(),
                         {"error": "Failed to decode.", "code": 562, "reason": "body truncated"})
        self.assertIn("body truncated", str(error))
        self.assertIn("562", repr(error))

    def test_unknown_code(self) -> None:
        self.assertRaises(KeyError, errors.error_for_code, 500)

    def test_malformed_pair_request(self) -> None:
        error = errors.MalformedPairRequest("c2s.mlkem768", "must decode to 1184 bytes")
        self.assertIsInstance(error, ValueError)
        self.assertNotIsInstance(error, errors.RelayError)
        self.assertEqual(error.to_json(), {"error": "Malformed pair request.", "code": 400,
                                           "field": "c2s.mlkem768",
                                           "reason": "must decode to 1184 bytes",
                                           "upstreamReached": "no"})
        prefixed = error.with_prefix("[3]")
        self.assertIsInstance(prefixed, errors.MalformedPairRequest)
        self.assertEqual(prefixed.field, "[3].c2s.mlkem768")
        self.assertEqual(errors.MalformedPairRequest("", "x").with_prefix("[0]").field, "[0]")
        self.assertEqual(errors.MalformedPairRequest("[1]", "x").with_prefix("[0]").field,
                         "[0][1]")
