"""A locustfile for tests/integration/test_locust_integration.py: answers that fail to open are failures.

Each user's first sealed request is sent on a pair whose answer key is not
the relay's (as after a tampered pairing answer, spec 4.2): the relay runs
it, but its answer cannot be opened, so Locust must count it as a failure
(a local 562), and the user must drop that pair and pair again.
"""

from __future__ import annotations

import os

import attrs
from locust import constant, events, task

from mterelay.locust import MteRelayUser


@events.request.add_listener
def record_failure(name: str, exception: BaseException | None, **_: object) -> None:
    """What Locust was told about each failure, for the test to read."""
    if exception is not None:
        with open(os.environ["FAILURES_LOG"], "a") as log:
            log.write(f"{name}: {exception}\n")


class WrongKeys(MteRelayUser):
    wait_time = constant(0.05)

    def on_start(self) -> None:
        self.client.post("/api/echo", json={"n": 0}, name="first")
        [pair] = self.client.relay(self.host).pool
        pair.keys = attrs.evolve(pair.keys, s2c_key=os.urandom(32))
        self.client.post("/api/echo", json={"n": 1}, name="wrong key")

    @task
    def echo(self) -> None:
        self.client.post("/api/echo", json={"n": 2}, name="after")
