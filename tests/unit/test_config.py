"""Configuration: every setting, every source, every error message."""

from __future__ import annotations

import io
import os
import tempfile
from contextlib import redirect_stderr

from twisted.trial.unittest import SynchronousTestCase

from mterelay.service.config import ConfigError, RoutePattern, load_config, parse_yaml
from mterelay.service.tap import Options
from tests.helpers.config import BASE, SECRET, ConfigErrorCase, env

class DefaultsTests(SynchronousTestCase):
    def test_minimal(self) -> None:
        config = load_config(BASE)
        self.assertEqual(config.upstream, "http://127.0.0.1:9000")
        self.assertEqual(config.port, 8080)
        self.assertEqual(config.listen_endpoint, "tcp:8080")
        self.assertEqual(config.log_level, "info")
        self.assertEqual(config.log_format, "text")
        self.assertEqual(config.max_pool_size, 25)
        self.assertEqual(config.upstream_timeout, 30.0)
        self.assertEqual(config.cors_methods, ("GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"))
        self.assertIsNone(config.mte_routes)
        self.assertEqual(config.pass_through_routes, ())
        self.assertEqual(config.store_kind, "memory")
        self.assertEqual(config.redis_key_prefix, "mterelay:")
        self.assertEqual(config.pair_idle_ttl, 1800.0)

    def test_repr_hides_secrets(self) -> None:
        config = load_config(
            env(OUTBOUND_TOKEN="tok-123456", REDIS_URL="redis://:pw1234@h:6379/0",
                STATE_SECRET="t" * 32)
        )
        text = repr(config)
        for secret in (SECRET, "tok-123456", "pw1234", "t" * 32):
            self.assertNotIn(secret, text)
        self.assertEqual(config.redis_url_redacted, "redis://:***@h:6379/0")


class SeedExampleTests(SynchronousTestCase):
    """The seed document's full example parses as documented."""

    def test_full_example(self) -> None:
        config = load_config(
            {
                "UPSTREAM": "https://api.my-company.com",
                "CLIENT_ID_SECRET": "2DkV4DDabehO8cifDktdF9elKJL0CKrk",
                "OUTBOUND_TOKEN": "abcdefg1234567",
                "REDIS_URL": "redis://10.0.1.230:6379",
                "PORT": "3000",
                "LOG_LEVEL": "info",
                "PASS_THROUGH_ROUTES": "/health,/version",
                "MTE_ROUTES": "/api/v1/*,/api/v2/*",
                "CORS_ORIGINS": "https://www.my-company.com,https://dashboard.my-company.com",
                "CORS_METHODS": "GET,POST,DELETE",
                "HEADERS": '{"x-service-name":"mte-api-relay"}',
                "AWS_REGION": "us-east-1",
            }
        )
        self.assertEqual(config.port, 3000)
        self.assertEqual(config.outbound_token, "abcdefg1234567")
        self.assertEqual(config.store_kind, "redis")
        self.assertEqual([r.pattern for r in config.pass_through_routes], ["/health", "/version"])
        assert config.mte_routes is not None
        self.assertTrue(config.mte_routes[0].matches("/api/v1/users/7"))
        self.assertFalse(config.mte_routes[0].matches("/api/v3/users"))
        self.assertEqual(
            config.cors_origins,
            ("https://www.my-company.com", "https://dashboard.my-company.com"),
        )
        self.assertEqual(config.cors_methods, ("GET", "POST", "DELETE", "OPTIONS", "HEAD"))
        self.assertEqual(config.headers, (("x-service-name", "mte-api-relay"),))
        self.assertEqual(config.aws_region, "us-east-1")


class ErrorTests(ConfigErrorCase):
    """Each bad value names its setting in one line and never echoes a secret."""

    def test_missing_upstream(self) -> None:
        self.check({"CLIENT_ID_SECRET": SECRET}, "UPSTREAM", "is required")

    def test_missing_secret(self) -> None:
        self.check({"UPSTREAM": "http://x"}, "CLIENT_ID_SECRET", "is required")

    def test_short_secret(self) -> None:
        error = self.check(env(CLIENT_ID_SECRET="short"), "CLIENT_ID_SECRET",
                           "must be at least 32 characters")
        self.assertNotIn("short", str(error).split("CLIENT_ID_SECRET", 1)[1].replace(
            "characters", ""))

    def test_secret_value_never_printed(self) -> None:
        error = self.check(env(STATE_SECRET="tooshort-but-secret"), "STATE_SECRET", "at least 32")
        self.assertNotIn("tooshort-but-secret", str(error))

    def test_bad_upstreams(self) -> None:
        for value in ("ftp://x", "x", "http://", "http://h/?q=1", "http://h:99999"):
            self.check(env(UPSTREAM=value), "UPSTREAM", "")

    def test_upstream_keeps_base_path(self) -> None:
        self.assertEqual(load_config(env(UPSTREAM="https://h/base/")).upstream, "https://h/base")

    def test_bad_port(self) -> None:
        self.check(env(PORT="eighty"), "PORT", "must be a whole number")
        self.check(env(PORT="0"), "PORT", "must be between 1 and 65535")
        self.check(env(PORT="70000"), "PORT", "must be between 1 and 65535")

    def test_cors_max_age(self) -> None:
        self.assertEqual(load_config(env()).cors_max_age, 600)
        self.assertEqual(load_config(env(CORS_MAX_AGE="0")).cors_max_age, 0)
        self.assertEqual(load_config(env(), parse_yaml("corsMaxAge: 120\n")).cors_max_age, 120)
        self.check(env(CORS_MAX_AGE="-1"), "CORS_MAX_AGE", "must be between 0 and 86400")
        self.check(env(CORS_MAX_AGE="ten"), "CORS_MAX_AGE", "must be a whole number")

    def test_bad_log_level(self) -> None:
        self.check(env(LOG_LEVEL="verbose"), "LOG_LEVEL", "must be one of trace, debug")

    def test_bad_log_format(self) -> None:
        self.check(env(LOG_FORMAT="xml"), "LOG_FORMAT", "must be text or json")

    def test_bad_debug(self) -> None:
        self.check(env(DEBUG="maybe"), "DEBUG", "must be true or false")

    def test_bad_redis(self) -> None:
        self.check(env(REDIS_URL="http://h"), "REDIS_URL", "redis:// or rediss://")
        self.check(env(REDIS_URL="redis://h/abc"), "REDIS_URL", "database must be a number")
        self.check(env(REDIS_URL="redis://h/0?bogus=1"), "REDIS_URL", "unknown parameter")

    def test_bad_routes(self) -> None:
        self.check(env(PASS_THROUGH_ROUTES="health"), "PASS_THROUGH_ROUTES", "must start with /")
        self.check(env(MTE_ROUTES="/a?b=1"), "MTE_ROUTES", "plain path")

    def test_bad_origins(self) -> None:
        self.check(env(CORS_ORIGINS="https://a.com/path"), "CORS_ORIGINS", "must be an origin")
        self.check(env(CORS_ORIGINS="a.com"), "CORS_ORIGINS", "must be an origin")

    def test_bad_methods(self) -> None:
        self.check(env(CORS_METHODS="GET,PO ST"), "CORS_METHODS", "not an HTTP method")
        self.check(env(CORS_METHODS=" , "), "CORS_METHODS", "at least one method")

    def test_bad_headers(self) -> None:
        self.check(env(HEADERS="{not json"), "HEADERS", "JSON object")
        self.check(env(HEADERS="[1, 2]"), "HEADERS", "JSON object")
        self.check(env(HEADERS='{"bad name": "x"}'), "HEADERS", "invalid header name")
        self.check(env(HEADERS='{"x-a": 1}'), "HEADERS", "must be a string")
        self.check(env(HEADERS='{"x-a": "a\\r\\nb"}'), "HEADERS", "line breaks")

    def test_bad_pool_size(self) -> None:
        self.check(env(MAX_POOL_SIZE="0"), "MAX_POOL_SIZE", "between 1 and 1000")

    def test_bad_timeouts(self) -> None:
        for name in ("UPSTREAM_TIMEOUT", "PAIR_IDLE_TTL", "PAIR_MAX_AGE"):
            self.check(env(**{name: "-1"}), name, "positive number of seconds")
            self.check(env(**{name: "soon"}), name, "number of seconds")
            self.check(env(**{name: "nan"}), name, "positive number of seconds")

    def test_bad_region(self) -> None:
        self.check(env(AWS_REGION="mars"), "AWS_REGION", "AWS region")

    def test_bad_token(self) -> None:
        self.check(env(OUTBOUND_TOKEN="a b"), "OUTBOUND_TOKEN", "white space")

    def test_bad_key_prefix(self) -> None:
        self.check(env(REDIS_KEY_PREFIX="a b"), "REDIS_KEY_PREFIX", "without spaces")


class ValueTests(SynchronousTestCase):
    def test_debug_forces_debug_level(self) -> None:
        self.assertEqual(load_config(env(DEBUG="true")).log_level, "debug")
        self.assertEqual(load_config(env(DEBUG="true", LOG_LEVEL="trace")).log_level, "trace")
        self.assertEqual(load_config(env(DEBUG="false", LOG_LEVEL="error")).log_level, "error")

    def test_every_log_level(self) -> None:
        for level in ("trace", "debug", "info", "warning", "error", "panic", "off"):
            self.assertEqual(load_config(env(LOG_LEVEL=level.upper())).log_level, level)

    def test_cors_always_allows_options_and_head(self) -> None:
        config = load_config(env(CORS_METHODS="get, post"))
        self.assertEqual(config.cors_methods, ("GET", "POST", "OPTIONS", "HEAD"))

    def test_empty_env_value_means_unset(self) -> None:
        self.assertEqual(load_config(env(PORT="")).port, 8080)

    def test_listen_overrides_port(self) -> None:
        config = load_config(env(PORT="9000", LISTEN="tcp:9100:interface=127.0.0.1"))
        self.assertEqual(config.listen_endpoint, "tcp:9100:interface=127.0.0.1")

    def test_route_wildcards(self) -> None:
        route = RoutePattern.compile("/api/*/items")
        self.assertTrue(route.matches("/api/v1/items"))
        self.assertFalse(route.matches("/api/v1/items/7"))
        self.assertTrue(RoutePattern.compile("/health").matches("/health"))
        self.assertFalse(RoutePattern.compile("/health").matches("/healthz"))
        self.assertTrue(RoutePattern.compile("/a.b").matches("/a.b"))
        self.assertFalse(RoutePattern.compile("/a.b").matches("/axb"))


class YamlTests(SynchronousTestCase):
    YAML = """
upstream: https://api.my-company.com
clientIdSecret: 2DkV4DDabehO8cifDktdF9elKJL0CKrk
corsOrigins:
  - https://www.my-company.com
redisURL: redis://cache:6379
port: 3000
passThroughRoutes: [/health, /version]
mteRoutes:
  - /api/v1/*
headers:
  x-service-name: mte-api-relay
debug: true
"""

    def test_seed_keys(self) -> None:
        config = load_config({}, parse_yaml(self.YAML))
        self.assertEqual(config.upstream, "https://api.my-company.com")
        self.assertEqual(config.port, 3000)
        self.assertEqual(config.cors_origins, ("https://www.my-company.com",))
        self.assertEqual(config.redis_url, "redis://cache:6379")
        self.assertEqual(len(config.pass_through_routes), 2)
        self.assertEqual(config.headers, (("x-service-name", "mte-api-relay"),))
        self.assertEqual(config.log_level, "debug")

    def test_precedence(self) -> None:
        """defaults < file < environment < command line."""
        file_values = parse_yaml(self.YAML)
        self.assertEqual(load_config({"PORT": "4000"}, file_values).port, 4000)
        self.assertEqual(load_config({"PORT": "4000"}, file_values, {"port": "5000"}).port, 5000)

    def test_unknown_key(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_yaml("upstrem: http://x\n")
        self.assertIn("unknown key 'upstrem'", str(caught.exception))

    def test_not_yaml(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_yaml("a: [1, 2\n")
        self.assertIn("is not valid YAML at line", str(caught.exception))

    def test_not_mapping(self) -> None:
        with self.assertRaises(ConfigError):
            parse_yaml("- a\n- b\n")

    def test_yaml_error_names_key(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load_config({}, parse_yaml("upstream: http://x\nclientIdSecret: short\n"), None, "f.yaml")
        self.assertIn("CLIENT_ID_SECRET", str(caught.exception))
        self.assertIn("f.yaml key clientIdSecret", str(caught.exception))

    def test_nested_value_refused(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load_config(env(), parse_yaml("port: {a: 1}\n"))
        self.assertIn("PORT", str(caught.exception))


class OptionsTests(SynchronousTestCase):
    """The twistd options: parse, merge, and exit with one line on bad input."""

    def parse(self, argv: list[str], environ: dict[str, str]) -> tuple[Options, str]:
        options = Options(environ=environ)
        stderr = io.StringIO()
        with redirect_stderr(stderr):
            options.parseOptions(argv)
        return options, stderr.getvalue()

    def test_cli_wins(self) -> None:
        options, _ = self.parse(["--port", "9999", "--debug"], env(PORT="1000"))
        assert options.config is not None
        self.assertEqual(options.config.port, 9999)
        self.assertEqual(options.config.log_level, "debug")

    def test_config_file(self) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
            handle.write(YamlTests.YAML)
        self.addCleanup(os.unlink, handle.name)
        options, _ = self.parse(["--config", handle.name], {})
        assert options.config is not None
        self.assertEqual(options.config.port, 3000)
        options, _ = self.parse([], {"CONFIG_FILE": handle.name, "PORT": "3001"})
        assert options.config is not None
        self.assertEqual(options.config.port, 3001)

    def test_missing_config_file(self) -> None:
        stderr = io.StringIO()
        with redirect_stderr(stderr), self.assertRaises(SystemExit) as caught:
            Options(environ=env()).parseOptions(["--config", "/nonexistent/x.yaml"])
        self.assertNotEqual(caught.exception.code, 0)
        self.assertEqual(
            stderr.getvalue(),
            "invalid configuration: config file cannot be read: No such file or directory "
            "(from /nonexistent/x.yaml)\n",
        )

    def test_bad_setting_exits_with_one_line(self) -> None:
        stderr = io.StringIO()
        with redirect_stderr(stderr), self.assertRaises(SystemExit) as caught:
            Options(environ={"UPSTREAM": "http://x", "CLIENT_ID_SECRET": "short"}).parseOptions([])
        self.assertEqual(caught.exception.code, 2)
        self.assertEqual(
            stderr.getvalue(),
            "invalid configuration: CLIENT_ID_SECRET must be at least 32 characters "
            "(from environment)\n",
        )
