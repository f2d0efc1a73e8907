"""Configuration of the operations settings: metrics, shutdown grace, workers, DEBUG.

Every new setting through every source (environment, YAML, twistd options),
its default, its bounds and the one-line error naming it.
"""

from __future__ import annotations

import io
import os
import tempfile
from contextlib import redirect_stderr

from twisted.trial.unittest import SynchronousTestCase

from mterelay.service.config import ConfigError, load_config, parse_yaml
from mterelay.service.tap import Options
from tests.helpers.config import BASE, ConfigErrorCase, env

REDIS = "redis://cache.test:6379/0"


class DefaultTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = load_config(BASE)
        self.assertIsNone(config.metrics_port)
        self.assertIsNone(config.metrics_listen)
        self.assertIsNone(config.metrics_endpoint)
        self.assertEqual(config.metrics_format, "prometheus")
        self.assertEqual(config.metrics_interval, 60.0)
        self.assertEqual(config.shutdown_grace, 25.0)
        self.assertEqual(config.workers, 1)
        self.assertIs(config.debug, False)


class MetricsPortTests(ConfigErrorCase):
    def test_port_gives_endpoint(self) -> None:
        config = load_config(env(METRICS_PORT="9100"))
        self.assertEqual(config.metrics_port, 9100)
        self.assertEqual(config.metrics_endpoint, "tcp:9100")

    def test_bounds(self) -> None:
        self.assertEqual(load_config(env(METRICS_PORT="1")).metrics_port, 1)
        self.assertEqual(load_config(env(METRICS_PORT="65535")).metrics_port, 65535)
        self.check(env(METRICS_PORT="0"), "METRICS_PORT", "must be between 1 and 65535")
        self.check(env(METRICS_PORT="65536"), "METRICS_PORT", "must be between 1 and 65535")
        self.check(env(METRICS_PORT="-1"), "METRICS_PORT", "must be between 1 and 65535")

    def test_not_a_number(self) -> None:
        for value in ("nine", "91.5", "0x2384"):
            self.check(env(METRICS_PORT=value), "METRICS_PORT", "must be a whole number")

    def test_error_names_its_source(self) -> None:
        message = self.check(env(METRICS_PORT="0"), "METRICS_PORT", "between")
        self.assertTrue(message.endswith("(from environment)"), message)

    def test_empty_means_unset(self) -> None:
        self.assertIsNone(load_config(env(METRICS_PORT="  ")).metrics_port)

    def test_equal_to_port_refused(self) -> None:
        message = self.check(env(PORT="9100", METRICS_PORT="9100"), "METRICS_PORT",
                             "must differ from PORT")
        self.assertNotIn("between", message)

    def test_equal_to_default_port_refused(self) -> None:
        # PORT unset is 8080: the metrics must not land on the public listener.
        self.check(env(METRICS_PORT="8080"), "METRICS_PORT", "must differ from PORT")

    def test_equal_to_port_from_other_sources_refused(self) -> None:
        self.check(BASE, "METRICS_PORT", "must differ from PORT",
                   file_values=parse_yaml("port: 7000\nmetricsPort: 7000\n"))
        self.check(env(PORT="7000"), "METRICS_PORT", "must differ from PORT",
                   cli_values={"metrics_port": "7000"})

    def test_equal_to_port_allowed_with_listen(self) -> None:
        # LISTEN decides where the relay listens; PORT is then unused.
        config = load_config(env(PORT="9100", METRICS_PORT="9100",
                                 LISTEN="tcp:8000:interface=127.0.0.1"))
        self.assertEqual(config.metrics_endpoint, "tcp:9100")

    def test_equal_to_port_allowed_with_metrics_listen(self) -> None:
        config = load_config(env(PORT="9100", METRICS_PORT="9100",
                                 METRICS_LISTEN="tcp:9200:interface=127.0.0.1"))
        self.assertEqual(config.metrics_endpoint, "tcp:9200:interface=127.0.0.1")

    def test_different_ports_accepted(self) -> None:
        config = load_config(env(PORT="8000", METRICS_PORT="9100"))
        self.assertEqual((config.port, config.metrics_port), (8000, 9100))


class MetricsListenTests(ConfigErrorCase):
    def test_listen_gives_endpoint(self) -> None:
        config = load_config(env(METRICS_LISTEN="tcp:9100:interface=127.0.0.1"))
        self.assertEqual(config.metrics_listen, "tcp:9100:interface=127.0.0.1")
        self.assertEqual(config.metrics_endpoint, "tcp:9100:interface=127.0.0.1")

    def test_listen_wins_over_port(self) -> None:
        config = load_config(env(METRICS_PORT="9100", METRICS_LISTEN="unix:/run/m.sock"))
        self.assertEqual(config.metrics_endpoint, "unix:/run/m.sock")

    def test_empty_refused_where_it_can_be_given(self) -> None:
        self.check(BASE, "METRICS_LISTEN", "must not be empty",
                   file_values=parse_yaml("metricsListen: ''\n"))
        self.check(BASE, "METRICS_LISTEN", "must not be empty",
                   cli_values={"metrics_listen": " "})

    def test_nested_value_refused(self) -> None:
        self.check(BASE, "METRICS_LISTEN", "single value",
                   file_values=parse_yaml("metricsListen: [tcp:1, tcp:2]\n"))


class MetricsFormatTests(ConfigErrorCase):
    def test_values(self) -> None:
        self.assertEqual(load_config(env(METRICS_FORMAT="prometheus")).metrics_format,
                         "prometheus")
        self.assertEqual(load_config(env(METRICS_FORMAT="emf")).metrics_format, "emf")
        self.assertEqual(load_config(env(METRICS_FORMAT=" EMF ")).metrics_format, "emf")

    def test_other_values_refused(self) -> None:
        for value in ("statsd", "json", "prom", "emf,prometheus"):
            self.check(env(METRICS_FORMAT=value), "METRICS_FORMAT",
                       "must be prometheus or emf")


class MetricsIntervalTests(ConfigErrorCase):
    def test_values(self) -> None:
        self.assertEqual(load_config(env(METRICS_INTERVAL="15")).metrics_interval, 15.0)
        self.assertEqual(load_config(env(METRICS_INTERVAL="0.5")).metrics_interval, 0.5)

    def test_not_positive_refused(self) -> None:
        for value in ("0", "-5", "nan", "inf"):
            self.check(env(METRICS_INTERVAL=value), "METRICS_INTERVAL",
                       "positive number of seconds")

    def test_not_a_number_refused(self) -> None:
        self.check(env(METRICS_INTERVAL="often"), "METRICS_INTERVAL", "number of seconds")

    def test_boolean_refused_from_yaml(self) -> None:
        self.check(BASE, "METRICS_INTERVAL", "number of seconds",
                   file_values=parse_yaml("metricsInterval: true\n"))


class ShutdownGraceTests(ConfigErrorCase):
    def test_values(self) -> None:
        self.assertEqual(load_config(env(SHUTDOWN_GRACE="10")).shutdown_grace, 10.0)
        self.assertEqual(load_config(env(SHUTDOWN_GRACE="2.5")).shutdown_grace, 2.5)
        self.assertEqual(load_config(env(SHUTDOWN_GRACE="3600")).shutdown_grace, 3600.0)

    def test_zero_allowed(self) -> None:
        self.assertEqual(load_config(env(SHUTDOWN_GRACE="0")).shutdown_grace, 0.0)
        # A YAML 0 is a value, not "unset".
        config = load_config(BASE, parse_yaml("shutdownGrace: 0\n"))
        self.assertEqual(config.shutdown_grace, 0.0)

    def test_out_of_range_refused(self) -> None:
        for value in ("-1", "-0.001", "3600.5", "86400", "nan", "inf"):
            self.check(env(SHUTDOWN_GRACE=value), "SHUTDOWN_GRACE",
                       "must be between 0 and 3600 seconds")

    def test_not_a_number_refused(self) -> None:
        self.check(env(SHUTDOWN_GRACE="soon"), "SHUTDOWN_GRACE", "must be a number of seconds")
        self.check(BASE, "SHUTDOWN_GRACE", "must be a number of seconds",
                   file_values=parse_yaml("shutdownGrace: false\n"))


class WorkersTests(ConfigErrorCase):
    def test_one_needs_nothing(self) -> None:
        self.assertEqual(load_config(env(WORKERS="1")).workers, 1)

    def test_more_with_redis(self) -> None:
        self.assertEqual(load_config(env(WORKERS="4", REDIS_URL=REDIS)).workers, 4)
        self.assertEqual(load_config(env(WORKERS="64", REDIS_URL=REDIS)).workers, 64)

    def test_bounds(self) -> None:
        for value in ("0", "65", "-2"):
            self.check(env(WORKERS=value, REDIS_URL=REDIS), "WORKERS",
                       "must be between 1 and 64")
        self.check(env(WORKERS="two", REDIS_URL=REDIS), "WORKERS", "must be a whole number")

    def test_more_without_redis_refused(self) -> None:
        for value in ("2", "64"):
            with self.assertRaises(ConfigError) as caught:
                load_config(env(WORKERS=value))
            message = str(caught.exception)
            self.assertIn("WORKERS needs REDIS_URL", message)
            self.assertNotIn("\n", message)
            self.assertEqual(caught.exception.setting, "WORKERS")

    def test_range_checked_before_combination(self) -> None:
        # WORKERS=100 is wrong on its own; say so rather than asking for Redis.
        self.check(env(WORKERS="100"), "WORKERS", "must be between 1 and 64")

    def test_redis_from_another_source(self) -> None:
        config = load_config(env(REDIS_URL=REDIS), parse_yaml("workers: 3\n"))
        self.assertEqual(config.workers, 3)
        with self.assertRaises(ConfigError) as caught:
            load_config(BASE, parse_yaml("workers: 3\n"))
        self.assertIn("WORKERS needs REDIS_URL", str(caught.exception))


class DebugTests(ConfigErrorCase):
    def test_debug_flag(self) -> None:
        self.assertIs(load_config(env(DEBUG="true")).debug, True)
        self.assertIs(load_config(env(DEBUG="1")).debug, True)
        self.assertIs(load_config(env(DEBUG="false")).debug, False)
        self.assertIs(load_config(env(DEBUG="")).debug, False)

    def test_debug_also_lowers_log_level(self) -> None:
        config = load_config(env(DEBUG="yes", LOG_LEVEL="error"))
        self.assertEqual((config.debug, config.log_level), (True, "debug"))

    def test_debug_from_yaml_and_cli(self) -> None:
        self.assertIs(load_config(BASE, parse_yaml("debug: true\n")).debug, True)
        self.assertIs(load_config(BASE, None, {"debug": True}).debug, True)
        # The environment beats the file.
        self.assertIs(load_config(env(DEBUG="false"), parse_yaml("debug: true\n")).debug,
                      False)

    def test_bad_debug(self) -> None:
        self.check(env(DEBUG="sometimes"), "DEBUG", "must be true or false")


class YamlTests(ConfigErrorCase):
    YAML = """
upstream: https://api.example.test
clientIdSecret: 2DkV4DDabehO8cifDktdF9elKJL0CKrk
redisURL: redis://cache:6379
metricsPort: 9100
metricsListen: tcp:9101:interface=127.0.0.1
metricsFormat: emf
metricsInterval: 15
shutdownGrace: 40
workers: 4
"""

    def test_every_key(self) -> None:
        config = load_config({}, parse_yaml(self.YAML))
        self.assertEqual(config.metrics_port, 9100)
        self.assertEqual(config.metrics_listen, "tcp:9101:interface=127.0.0.1")
        self.assertEqual(config.metrics_endpoint, "tcp:9101:interface=127.0.0.1")
        self.assertEqual(config.metrics_format, "emf")
        self.assertEqual(config.metrics_interval, 15.0)
        self.assertEqual(config.shutdown_grace, 40.0)
        self.assertEqual(config.workers, 4)

    def test_environment_beats_file(self) -> None:
        config = load_config({"METRICS_FORMAT": "prometheus", "SHUTDOWN_GRACE": "5",
                              "WORKERS": "2", "METRICS_LISTEN": "tcp:9300"},
                             parse_yaml(self.YAML))
        self.assertEqual(config.metrics_format, "prometheus")
        self.assertEqual(config.shutdown_grace, 5.0)
        self.assertEqual(config.workers, 2)
        self.assertEqual(config.metrics_endpoint, "tcp:9300")

    def test_errors_name_the_file_key(self) -> None:
        cases = {
            "metricsPort: 0\n": ("METRICS_PORT", "metricsPort"),
            "metricsFormat: xml\n": ("METRICS_FORMAT", "metricsFormat"),
            "metricsInterval: -1\n": ("METRICS_INTERVAL", "metricsInterval"),
            "shutdownGrace: 4000\n": ("SHUTDOWN_GRACE", "shutdownGrace"),
            "workers: 65\n": ("WORKERS", "workers"),
        }
        for text, (setting, key) in cases.items():
            with self.assertRaises(ConfigError) as caught:
                load_config(BASE, parse_yaml(text), None, "relay.yaml")
            message = str(caught.exception)
            self.assertTrue(message.startswith(f"invalid configuration: {setting} "), message)
            self.assertTrue(message.endswith(f"(from relay.yaml key {key})"), message)

    def test_env_style_and_misspelt_keys_refused(self) -> None:
        for key in ("metrics_port", "METRICS_PORT", "shutdownGraceSeconds", "worker"):
            with self.assertRaises(ConfigError) as caught:
                parse_yaml(f"{key}: 1\n")
            self.assertIn(f"unknown key {key!r}", str(caught.exception))


class OptionsTests(SynchronousTestCase):
    """twistd's ``mterelay`` options for the operations settings."""

    def parse(self, argv: list[str], environ: dict[str, str]) -> Options:
        options = Options(environ=environ)
        stderr = io.StringIO()
        with redirect_stderr(stderr):
            options.parseOptions(argv)
        self.assertEqual(stderr.getvalue(), "")
        return options

    def refuse(self, argv: list[str], environ: dict[str, str]) -> str:
        stderr = io.StringIO()
        with redirect_stderr(stderr), self.assertRaises(SystemExit) as caught:
            Options(environ=environ).parseOptions(argv)
        self.assertEqual(caught.exception.code, 2)
        output = stderr.getvalue()
        self.assertTrue(output.startswith("invalid configuration: "), output)
        self.assertEqual(output.count("\n"), 1, output)
        return output

    def test_every_option(self) -> None:
        options = self.parse(
            ["--metrics-port", "9100", "--metrics-listen", "tcp:9101:interface=127.0.0.1",
             "--metrics-format", "emf", "--metrics-interval", "15", "--shutdown-grace", "0",
             "--workers", "3", "--redis-url", REDIS, "--debug"],
            dict(BASE))
        config = options.config
        assert config is not None
        self.assertEqual(config.metrics_port, 9100)
        self.assertEqual(config.metrics_endpoint, "tcp:9101:interface=127.0.0.1")
        self.assertEqual(config.metrics_format, "emf")
        self.assertEqual(config.metrics_interval, 15.0)
        self.assertEqual(config.shutdown_grace, 0.0)
        self.assertEqual(config.workers, 3)
        self.assertIs(config.debug, True)

    def test_equals_form(self) -> None:
        options = self.parse(["--metrics-port=9100", "--workers=2", f"--redis-url={REDIS}"],
                             dict(BASE))
        assert options.config is not None
        self.assertEqual((options.config.metrics_port, options.config.workers), (9100, 2))

    def test_options_beat_environment(self) -> None:
        options = self.parse(["--metrics-format", "prometheus", "--shutdown-grace", "3"],
                             env(METRICS_FORMAT="emf", SHUTDOWN_GRACE="30"))
        assert options.config is not None
        self.assertEqual(options.config.metrics_format, "prometheus")
        self.assertEqual(options.config.shutdown_grace, 3.0)

    def test_no_debug_flag_keeps_default(self) -> None:
        options = self.parse([], dict(BASE))
        assert options.config is not None
        self.assertIs(options.config.debug, False)

    def test_config_file_keys(self) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
            handle.write(YamlTests.YAML)
        self.addCleanup(os.unlink, handle.name)
        options = self.parse(["--config", handle.name, "--workers", "5"], {})
        assert options.config is not None
        self.assertEqual(options.config.workers, 5)
        self.assertEqual(options.config.metrics_format, "emf")

    def test_workers_without_redis_exits(self) -> None:
        output = self.refuse(["--workers", "2"], dict(BASE))
        self.assertIn("WORKERS needs REDIS_URL", output)
        output = self.refuse([], env(WORKERS="2"))
        self.assertIn("WORKERS needs REDIS_URL", output)

    def test_metrics_port_equal_to_port_exits(self) -> None:
        output = self.refuse(["--port", "9000", "--metrics-port", "9000"], dict(BASE))
        self.assertTrue(output.startswith("invalid configuration: METRICS_PORT must differ "
                                          "from PORT"), output)

    def test_bad_values_exit_naming_the_option(self) -> None:
        cases = {
            "--metrics-port": ("70000", "METRICS_PORT"),
            "--metrics-format": ("graphite", "METRICS_FORMAT"),
            "--metrics-interval": ("0", "METRICS_INTERVAL"),
            "--shutdown-grace": ("-3", "SHUTDOWN_GRACE"),
            "--workers": ("0", "WORKERS"),
        }
        for option, (value, setting) in cases.items():
            output = self.refuse([option, value], dict(BASE))
            self.assertTrue(output.startswith(f"invalid configuration: {setting} "), output)
            self.assertTrue(output.endswith(f"(from option {option})\n"), output)

    def test_usage_lists_the_options(self) -> None:
        usage = Options(environ={}).getUsage()
        for option in ("--metrics-port", "--metrics-listen", "--metrics-format",
                       "--metrics-interval", "--shutdown-grace", "--workers", "--debug"):
            self.assertIn(option, usage)
