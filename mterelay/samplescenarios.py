"""The load-test scenarios' routes of the sample API (``examples/locust``).

The seed's client demos are an echo, a login, patient records and a credit
card payment, measured with 1 KB bodies; these routes give each a realistic
JSON shape so a load test through the relay carries sensitive-looking data
of the size it claims.  Pure and stateless: ``(method, path, body)`` in,
``(status, payload)`` out; :class:`~mterelay.sampleapi.SampleAPI` renders it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["PATIENTS", "scenario_answer", "luhn_ok"]

#: Fixed demo records (no state: any replica of the sample API answers the same).
PATIENTS = [
    {"id": 1, "name": "Ada Lovelace", "dob": "1815-12-10", "conditions": ["asthma"]},
    {"id": 2, "name": "Alan Turing", "dob": "1912-06-23", "conditions": []},
    {"id": 3, "name": "Grace Hopper", "dob": "1906-12-09", "conditions": ["hypertension"]},
]


def luhn_ok(number: str) -> bool:
    """The card number checksum (ISO/IEC 7812), so a payment can be refused as a bank would."""
    if not number.isdigit() or not 12 <= len(number) <= 19:
        return False
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _patients(method: bytes, path: bytes, body: bytes) -> tuple[int, Any]:
    if path == b"/api/patients":
        if method == b"GET":
            return 200, {"patients": PATIENTS}
        if method == b"POST":
            record = _object(body)
            if record is None or not isinstance(record.get("name"), str):
                return 400, {"error": "send a JSON object with a string \"name\""}
            created = dict(record, id=int(hashlib.sha256(body).hexdigest()[:8], 16))
            return 201, created
        return 405, {"error": "GET or POST"}
    ident = path[len(b"/api/patients/"):]
    for patient in PATIENTS:
        if ident == str(patient["id"]).encode() and method == b"GET":
            return 200, patient
    return 404, {"error": "no such patient", "id": ident.decode("latin-1")}


def _payment(body: bytes) -> tuple[int, Any]:
    payment = _object(body)
    if payment is None:
        return 400, {"error": "send a JSON object {\"number\", \"expiry\", \"cvv\", \"amount\"}"}
    number = str(payment.get("number", "")).replace(" ", "")
    if not luhn_ok(number):
        return 400, {"error": "invalid card number", "field": "number"}
    amount = payment.get("amount")
    if not isinstance(amount, (int, float)) or isinstance(amount, bool) or amount <= 0:
        return 400, {"error": "amount must be a positive number", "field": "amount"}
    return 200, {"approved": True, "last4": number[-4:], "amount": amount,
                 "authorization": hashlib.sha256(body).hexdigest()[:12]}


def scenario_answer(method: bytes, path: bytes, body: bytes) -> tuple[int, Any] | None:
    """The answer of a scenario route, or None when ``path`` is not one.

    ``POST /api/echo`` answers its JSON body as received (the payload
    scenarios: an N KB request gets an N KB answer, as in the seed's
    measurements); ``/api/patients[/<id>]`` lists, reads or creates a
    record; ``POST /api/credit-card`` approves a Luhn-valid card.
    """
    if path == b"/api/echo":
        if method != b"POST":
            return 405, {"error": "POST a JSON value"}
        try:
            return 200, json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return 400, {"error": "the body must be JSON"}
    if path == b"/api/patients" or path.startswith(b"/api/patients/"):
        return _patients(method, path, body)
    if path == b"/api/credit-card":
        if method != b"POST":
            return 405, {"error": "POST a payment"}
        return _payment(body)
    return None
