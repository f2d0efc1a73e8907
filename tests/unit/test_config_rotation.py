"""CLIENT_ID_SECRET rotation: the previous secret keeps verifying during the window.

Rotating without downtime means replicas with the new secret must still accept
client ids that replicas with the old one signed (and clients that cached
them), while every new id is signed with the new secret.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr
from functools import partial
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mterelay.service.config import ConfigError, load_config, parse_yaml
from mterelay.protocol.clientid import new_client_id, sign_client_uuid, verify_client_id
from mterelay.protocol.errors import InvalidClientId
from mterelay.service.tap import Options
from tests.helpers.config import env as config_env

NEW = "the-new-client-id-secret-0123456789"
OLD = "the-old-client-id-secret-9876543210"
BASE = config_env(CLIENT_ID_SECRET=NEW)
env = partial(config_env, BASE)


class SettingTests(SynchronousTestCase):
    def test_unset_by_default(self) -> None:
        config = load_config(BASE)
        self.assertIsNone(config.client_id_secret_previous)
        self.assertEqual(config.client_id_secrets, (NEW.encode(),))

    def test_from_environment_current_first(self) -> None:
        config = load_config(env(CLIENT_ID_SECRET_PREVIOUS=OLD))
        self.assertEqual(config.client_id_secret_previous, OLD)
        self.assertEqual(config.client_id_secrets, (NEW.encode(), OLD.encode()))

    def test_from_yaml_key(self) -> None:
        values = parse_yaml(f"upstream: http://127.0.0.1:9000\nclientIdSecret: {NEW}\n"
                            f"clientIdSecretPrevious: {OLD}\n")
        config = load_config({}, values)
        self.assertEqual(config.client_id_secrets, (NEW.encode(), OLD.encode()))

    def test_from_twistd_option(self) -> None:
        options = Options(environ=BASE)
        options.parseOptions(["--client-id-secret-previous", OLD])
        assert options.config is not None
        self.assertEqual(options.config.client_id_secrets, (NEW.encode(), OLD.encode()))

    def test_same_as_current_is_listed_once(self) -> None:
        config = load_config(env(CLIENT_ID_SECRET_PREVIOUS=NEW))
        self.assertEqual(config.client_id_secrets, (NEW.encode(),))

    def test_empty_environment_value_means_unset(self) -> None:
        # An env file keeps the line between rotations: `CLIENT_ID_SECRET_PREVIOUS=`.
        config = load_config(env(CLIENT_ID_SECRET_PREVIOUS=""))
        self.assertEqual(config.client_id_secrets, (NEW.encode(),))

    def test_short_previous_secret_is_refused_without_echoing_it(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load_config(env(CLIENT_ID_SECRET_PREVIOUS="too-short-secret"))
        message = str(caught.exception)
        self.assertEqual(
            message,
            "invalid configuration: CLIENT_ID_SECRET_PREVIOUS must be at least 32 characters "
            "(from environment)",
        )
        self.assertNotIn("too-short-secret", message)

    def test_bad_option_stops_twistd_with_one_line(self) -> None:
        stderr = io.StringIO()
        with redirect_stderr(stderr), self.assertRaises(SystemExit) as caught:
            Options(environ=BASE).parseOptions(["--client-id-secret-previous", "short"])
        self.assertEqual(caught.exception.code, 2)
        self.assertEqual(
            stderr.getvalue(),
            "invalid configuration: CLIENT_ID_SECRET_PREVIOUS must be at least 32 characters "
            "(from option --client-id-secret-previous)\n",
        )

    def test_repr_hides_previous_secret(self) -> None:
        self.assertNotIn(OLD, repr(load_config(env(CLIENT_ID_SECRET_PREVIOUS=OLD))))


class RotationWindowTests(SynchronousTestCase):
    """The rotation docs/deploy.md describes, as the relay's verifier sees it.

    Each step is a rolling update, so replicas of two neighbouring steps serve
    side by side; an id either of them issues must verify on both.
    """

    steps = (
        load_config(env(CLIENT_ID_SECRET=OLD)),                            # before
        load_config(env(CLIENT_ID_SECRET=OLD, CLIENT_ID_SECRET_PREVIOUS=NEW)),  # 1: accept new
        load_config(env(CLIENT_ID_SECRET_PREVIOUS=OLD)),                   # 2: sign with new
        load_config(BASE),                                                  # 3: retire old
    )

    def test_neighbouring_steps_accept_each_others_ids(self) -> None:
        for older, newer in zip(self.steps, self.steps[1:]):
            for issuer in (older, newer):
                issued = new_client_id(issuer.client_id_secrets[0])
                for verifier in (older, newer):
                    verify_client_id(issued, verifier.client_id_secrets)

    def test_resigned_id_keeps_its_uuid_and_outlives_the_window(self) -> None:
        before, _, during, after = self.steps
        issued_before = new_client_id(before.client_id_secrets[0])
        bare = verify_client_id(issued_before, during.client_id_secrets)
        # The relay re-signs with the first (current) secret; the client keeps
        # its uuid and so its pairs.
        resigned = sign_client_uuid(during.client_id_secrets[0], bare)
        self.assertEqual(resigned.split(".")[0], bare)
        self.assertEqual(verify_client_id(resigned, after.client_id_secrets), bare)
        # Once the window closes an id only the old secret signed is refused
        # (566: the client validates again and gets a fresh id).
        self.assertRaises(InvalidClientId, verify_client_id, issued_before,
                          after.client_id_secrets)


class RelayHandshakeTests(SynchronousTestCase):
    """The inbound relay's HEAD /api/mte-relay honours the rotation window."""

    def head(self, relay: Any, client_id: str) -> tuple[int, str | None]:
        response, _ = relay.call("HEAD", "/api/mte-relay", headers={"x-mte-relay": client_id})
        values = response.headers.getRawHeaders("x-mte-relay")
        return response.code, values[0] if values else None

    def test_old_id_is_resigned_during_the_window_and_refused_after(self) -> None:
        from tests.helpers.support import MemoryRelay

        issued_before = new_client_id(OLD.encode())
        during = MemoryRelay.build(CLIENT_ID_SECRET=NEW, CLIENT_ID_SECRET_PREVIOUS=OLD)
        code, resigned = self.head(during, issued_before)
        self.assertEqual(code, 200)
        assert resigned is not None
        self.assertEqual(resigned.split(".")[0], issued_before.split(".")[0])
        self.assertEqual(resigned, sign_client_uuid(NEW.encode(), resigned.split(".")[0]))

        after = MemoryRelay.build(CLIENT_ID_SECRET=NEW)
        self.assertEqual(self.head(after, issued_before)[0], 566)
        self.assertEqual(self.head(after, resigned), (200, resigned))
