"""The sample API's load-test scenario routes (echo, patients, credit card)."""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from mterelay.sampleapi import SampleAPI
from mterelay.samplescenarios import PATIENTS, luhn_ok, scenario_answer


class ScenarioAnswerTests(SynchronousTestCase):
    def test_echo_answers_the_body_as_sent(self) -> None:
        payload = {"data": "x" * 50 * 1024}
        status, answer = scenario_answer(b"POST", b"/api/echo", json.dumps(payload).encode())
        self.assertEqual((status, answer), (200, payload))
        self.assertEqual(scenario_answer(b"POST", b"/api/echo", b"{no")[0], 400)
        self.assertEqual(scenario_answer(b"GET", b"/api/echo", b"")[0], 405)

    def test_patients(self) -> None:
        self.assertEqual(scenario_answer(b"GET", b"/api/patients", b""),
                         (200, {"patients": PATIENTS}))
        self.assertEqual(scenario_answer(b"GET", b"/api/patients/2", b""), (200, PATIENTS[1]))
        self.assertEqual(scenario_answer(b"GET", b"/api/patients/9", b"")[0], 404)
        status, created = scenario_answer(b"POST", b"/api/patients", b'{"name": "Edsger"}')
        self.assertEqual((status, created["name"]), (201, "Edsger"))
        self.assertIsInstance(created["id"], int)
        self.assertEqual(scenario_answer(b"POST", b"/api/patients", b'{"name": 3}')[0], 400)
        self.assertEqual(scenario_answer(b"DELETE", b"/api/patients", b"")[0], 405)

    def test_credit_card(self) -> None:
        good = {"number": "4111 1111 1111 1111", "expiry": "12/29", "cvv": "123", "amount": 9.5}
        status, answer = scenario_answer(b"POST", b"/api/credit-card", json.dumps(good).encode())
        self.assertEqual((status, answer["approved"], answer["last4"]), (200, True, "1111"))
        bad = dict(good, number="4111111111111112")
        self.assertEqual(scenario_answer(b"POST", b"/api/credit-card", json.dumps(bad).encode()),
                         (400, {"error": "invalid card number", "field": "number"}))
        for amount in (0, -1, "9", True):
            body = json.dumps(dict(good, amount=amount)).encode()
            self.assertEqual(scenario_answer(b"POST", b"/api/credit-card", body)[0], 400, amount)

    def test_luhn(self) -> None:
        self.assertTrue(luhn_ok("4111111111111111"))
        self.assertTrue(luhn_ok("5500000000000004"))
        self.assertFalse(luhn_ok("4111111111111121"))
        self.assertFalse(luhn_ok("41111111111a1111"))

    def test_other_paths_are_not_scenarios(self) -> None:
        self.assertIsNone(scenario_answer(b"GET", b"/api/items", b""))


class SampleAPIRoutesTests(SynchronousTestCase):
    def test_scenarios_are_served_and_others_still_404(self) -> None:
        client = StubTreq(SampleAPI())
        response = self.successResultOf(client.post("http://api.test/api/credit-card",
                                                    data=b'{"number": "4111111111111111", '
                                                         b'"amount": 1}'))
        self.assertEqual(response.code, 200)
        self.assertTrue(json.loads(self.successResultOf(client.content(response)))["approved"])
        response = self.successResultOf(client.get("http://api.test/nowhere"))
        self.assertEqual(response.code, 404)
