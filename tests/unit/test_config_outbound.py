"""OUTBOUND_UPSTREAMS: the allow-list of remote relays, from every source, and its patterns."""

from __future__ import annotations

import io
from contextlib import redirect_stderr

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mterelay.service.config import ConfigError, load_config, parse_yaml
from mterelay.web.outboundrules import OriginPattern, allowed, parse_origin
from mterelay.service.tap import Options, build_service
from tests.helpers.config import BASE, env

def patterns(config: object) -> list[str]:
    return [p.pattern for p in config.outbound_upstreams]  # type: ignore[attr-defined]


class SourcesTests(SynchronousTestCase):
    def test_default_is_empty(self) -> None:
        self.assertEqual(load_config(BASE).outbound_upstreams, ())

    def test_environment(self) -> None:
        value = " https://Relay-B.example.com/ ,https://*.partner.example, http://127.0.0.1:*"
        config = load_config(env(OUTBOUND_UPSTREAMS=value))
        self.assertEqual(patterns(config), ["https://relay-b.example.com",
                                            "https://*.partner.example", "http://127.0.0.1:*"])

    def test_yaml_list_and_option(self) -> None:
        file_values = parse_yaml("outboundUpstreams: [https://a.example, 'http://b.example:8080']")
        config = load_config(BASE, file_values)
        self.assertEqual(patterns(config), ["https://a.example", "http://b.example:8080"])
        config = load_config(BASE, file_values, {"outbound_upstreams": "https://c.example"})
        self.assertEqual(patterns(config), ["https://c.example"])

    def test_twistd_option(self) -> None:
        options = Options(environ=BASE)
        options.parseOptions(["--outbound-upstreams", "https://relay.example"])
        assert options.config is not None
        self.assertEqual(patterns(options.config), ["https://relay.example"])

    def test_malformed_entries_name_the_setting(self) -> None:
        for value, problem in [
            ("relay.example", "must be an origin"),
            ("ftp://relay.example", "must be an origin"),
            ("https://relay.example/api", "must be an origin"),
            ("https://user@relay.example", "must be an origin"),
            ("https://relay.example?x=1", "must be an origin"),
            ("https://relay.example:99999", "invalid port"),
            ("https://relay..example", "empty host label"),
            (" , ", "at least one origin"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                load_config(env(OUTBOUND_UPSTREAMS=value))
            self.assertEqual(caught.exception.setting, "OUTBOUND_UPSTREAMS", value)
            self.assertIn(problem, str(caught.exception), value)
            self.assertIn("(from environment)", str(caught.exception))

    def test_empty_yaml_list_is_refused(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load_config(BASE, parse_yaml("outboundUpstreams: []"))
        self.assertIn("OUTBOUND_UPSTREAMS must list at least one origin", str(caught.exception))

    def test_twistd_exits_2(self) -> None:
        options = Options(environ=env(OUTBOUND_UPSTREAMS="nonsense"))
        stderr = io.StringIO()
        with redirect_stderr(stderr), self.assertRaises(SystemExit) as caught:
            options.parseOptions([])
        self.assertEqual(caught.exception.code, 2)
        self.assertIn("invalid configuration: OUTBOUND_UPSTREAMS", stderr.getvalue())


class PatternTests(SynchronousTestCase):
    def check(self, pattern: str, origin: str) -> bool:
        return OriginPattern.compile(pattern).matches(parse_origin(origin))

    def test_exact_and_default_ports(self) -> None:
        self.assertTrue(self.check("https://relay.example", "https://relay.example"))
        self.assertTrue(self.check("https://relay.example", "https://RELAY.example:443/"))
        self.assertFalse(self.check("https://relay.example", "https://relay.example:8443"))
        self.assertFalse(self.check("https://relay.example", "http://relay.example"))
        self.assertTrue(self.check("http://relay.example:8080", "http://relay.example:8080"))

    def test_wildcards(self) -> None:
        self.assertTrue(self.check("https://*.partner.example", "https://eu.partner.example"))
        self.assertFalse(self.check("https://*.partner.example", "https://partner.example"))
        self.assertFalse(self.check("https://*.partner.example", "https://a.b.partner.example"))
        self.assertFalse(self.check("https://*.partner.example",
                                    "https://partner.example.evil.test"))
        self.assertTrue(self.check("https://relay-*.example", "https://relay-7.example"))
        self.assertTrue(self.check("http://127.0.0.1:*", "http://127.0.0.1:8123"))
        self.assertTrue(self.check("http://127.0.0.1:*", "http://127.0.0.1"))
        self.assertFalse(self.check("http://127.0.0.1:*", "http://127.0.0.2:8123"))
        self.assertTrue(self.check("http://[::1]:*", "http://[::1]:9"))

    def test_no_list_allows_any(self) -> None:
        self.assertTrue(allowed((), parse_origin("https://anything.example")))


class StartupWarningTests(SynchronousTestCase):
    def warnings(self, **extra: str) -> list[str]:
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        from twisted.internet import reactor

        build_service(load_config(env(LISTEN="tcp:0:interface=127.0.0.1", **extra)), reactor,
                      observer=lambda event: None)
        return [str(e.get("log_format")) for e in events if e.get("log_level") == LogLevel.warn]

    def test_warns_when_any_remote_relay_is_allowed(self) -> None:
        found = self.warnings(OUTBOUND_TOKEN="token-123456")
        self.assertTrue([w for w in found if "OUTBOUND_UPSTREAMS is not" in w], found)

    def test_silent_with_an_allow_list_or_without_outbound(self) -> None:
        for extra in ({"OUTBOUND_TOKEN": "token-123456",
                       "OUTBOUND_UPSTREAMS": "https://relay.example"}, {}):
            found = self.warnings(**extra)
            self.assertFalse([w for w in found if "OUTBOUND_UPSTREAMS" in w], extra)
