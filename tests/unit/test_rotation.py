"""Rotating OUTBOUND_TOKEN and STATE_SECRET without refusing anyone."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mterelay.web.outboundrules import token_matches
from mterelay.store.atrest import SecretSealer
from tests.helpers.support import SECRET, relay_config

NEW = "a-new-state-secret-of-32-characters-x"
OLD = "an-old-state-secret-of-32-characters-y"


class OutboundTokenRotationTests(SynchronousTestCase):
    def test_both_tokens_accepted_while_rotating(self) -> None:
        config = relay_config(OUTBOUND_TOKEN="new-token-123", OUTBOUND_TOKEN_PREVIOUS="old-token-9")
        self.assertEqual(config.outbound_tokens, ("new-token-123", "old-token-9"))
        self.assertTrue(token_matches([b"new-token-123"], config.outbound_tokens))
        self.assertTrue(token_matches([b"old-token-9"], config.outbound_tokens))
        self.assertFalse(token_matches([b"other-token"], config.outbound_tokens))
        self.assertFalse(token_matches([b""], config.outbound_tokens))

    def test_previous_alone_grants_nothing(self) -> None:
        config = relay_config(OUTBOUND_TOKEN_PREVIOUS="old-token-9")
        self.assertEqual(config.outbound_tokens, ())
        self.assertFalse(token_matches([b"old-token-9"], config.outbound_tokens))
        same = relay_config(OUTBOUND_TOKEN="tok-1234", OUTBOUND_TOKEN_PREVIOUS="tok-1234")
        self.assertEqual(same.outbound_tokens, ("tok-1234",))


class StateSecretRotationTests(SynchronousTestCase):
    def test_state_secrets(self) -> None:
        self.assertEqual(relay_config().state_secrets, (SECRET.encode(),))
        rotating = relay_config(STATE_SECRET=NEW, STATE_SECRET_PREVIOUS=OLD)
        self.assertEqual(rotating.state_secrets, (NEW.encode(), OLD.encode()))
        # Without STATE_SECRET, the client-id secrets seal pairs: their rotation carries over.
        via_client = relay_config(CLIENT_ID_SECRET_PREVIOUS=OLD)
        self.assertEqual(via_client.state_secrets, (SECRET.encode(), OLD.encode()))
        self.assertNotIn(NEW, repr(rotating))
        self.assertNotIn(OLD, repr(rotating))

    def test_redis_store_opens_pairs_sealed_before_the_rotation(self) -> None:
        from twisted.internet import reactor

        from mterelay.service.tap import store_for

        config = relay_config(REDIS_URL="redis://127.0.0.1:1", STATE_SECRET=NEW,
                              STATE_SECRET_PREVIOUS=OLD)
        store = store_for(config, reactor)
        sealer = store._sealer
        blob = SecretSealer(OLD.encode()).seal(b"pair secrets", b"key")
        self.assertEqual(sealer.open(blob, b"key"), b"pair secrets")
        self.assertEqual(SecretSealer(NEW.encode()).open(sealer.seal(b"x", b"k"), b"k"), b"x")
