"""Load-test an API through mterelay with Locust: the seed's client scenarios.

    pip install 'mterelay[locust]'
    locust -f examples/locust/locustfile.py --host http://127.0.0.1:8080
    locust -f examples/locust/locustfile.py --host https://relay.example \\
        --headless -u 50 -r 10 -t 5m --csv results

``--host`` is the relay (relay B); its ``UPSTREAM`` must serve mterelay's
sample API routes (``mterelay.sampleapi``: the demo's upstream).  Every
request but the relay's echo is sealed end to end; Locust's statistics
show each scenario under its own name, plus the user's one validation
(``/api/mte-relay``) and pairing (``/api/mte-pair``).  What is sealed is
chosen with the user's class attributes; here ``MTERELAY_FRAMING`` (MKR,
MKE or MTE) and ``MTERELAY_SEAL_URL`` (1 or 0) set two of them.

Scenarios: echo, login, patients (list, read, create), credit card, and
the seed's measurement bodies: 1, 10, 25 and 50 KB requests answered with
the same bytes (``POST /api/echo``), each checked on arrival.  A failed
request (an error status, a relay refusal, an answer that did not open) is
counted by Locust itself when the ``with`` block ends.
"""

from __future__ import annotations

import json
import os
import random

from locust import between, task

from mterelay.locust import MteRelayUser

KB = 1024
PAYLOAD_SIZES = (1, 10, 25, 50)

ACCOUNTS = [("demo", "demo-password"), ("alice", "secret"), ("carol", "s3cret-pw")]


def payload(size: int) -> bytes:
    """A JSON document of exactly ``size`` bytes."""
    overhead = len(b'{"data":""}')
    return b'{"data":"' + b"x" * (size - overhead) + b'"}'


BODIES = {kb: payload(kb * KB) for kb in PAYLOAD_SIZES}


class RelayScenarios(MteRelayUser):
    wait_time = between(0.05, 0.2)
    framing = os.environ.get("MTERELAY_FRAMING", "MKR")
    seal_url = os.environ.get("MTERELAY_SEAL_URL", "1") != "0"

    @task
    def relay_echo(self) -> None:
        # The relay's own liveness route answers in clear: nothing to seal.
        self.client.get("/api/mte-echo/locust", name="relay echo (clear)", seal=False)

    @task
    def echo(self) -> None:
        with self.client.post("/api/echo", json={"message": "hello relay"}, name="echo",
                              catch_response=True) as response:
            if response.ok and response.json() != {"message": "hello relay"}:
                response.failure("echo answered something else")

    @task
    def login(self) -> None:
        # The sample API's demo accounts (mterelay/sampleapi.py DEMO_USERS).
        user, password = random.choice(ACCOUNTS)
        with self.client.post("/api/login", json={"user": user, "password": password},
                              name="login", catch_response=True) as response:
            if response.ok and (response.json().get("user") != user
                                or "session" not in self.client.sealed_cookies):
                response.failure("no token or no session cookie")

    @task
    def patients(self) -> None:
        listing = self.client.get("/api/patients", name="patients: list")
        if listing.ok:
            patient = random.choice(listing.json()["patients"])
            self.client.get(f"/api/patients/{patient['id']}", name="patients: read")
        self.client.post("/api/patients", name="patients: create",
                         json={"name": "Jane Doe", "dob": "1990-01-01",
                               "conditions": ["none"], "ssn": "078-05-1120"})

    @task
    def credit_card(self) -> None:
        with self.client.post("/api/credit-card", name="credit card", catch_response=True,
                              json={"number": "4111 1111 1111 1111", "expiry": "12/29",
                                    "cvv": "123", "amount": 42.5}) as response:
            if response.ok and not response.json().get("approved"):
                response.failure("payment not approved")

    def _payload(self, kb: int) -> None:
        body = BODIES[kb]
        with self.client.post("/api/echo", data=body, name=f"payload {kb} KB",
                              headers={"content-type": "application/json"},
                              catch_response=True) as response:
            if response.ok and response.content != json.dumps(json.loads(body)).encode():
                response.failure(f"the {kb} KB answer differs from what was sent")

    @task
    def payload_1kb(self) -> None:
        self._payload(1)

    @task
    def payload_10kb(self) -> None:
        self._payload(10)

    @task
    def payload_25kb(self) -> None:
        self._payload(25)

    @task
    def payload_50kb(self) -> None:
        self._payload(50)
