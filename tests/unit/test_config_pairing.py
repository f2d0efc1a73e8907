"""Configuration of the pairing admission settings and TRUSTED_PROXIES.

Every new setting through every source (environment, YAML, twistd options),
its default, its bounds and the one-line error naming it.
"""

from __future__ import annotations

import io
import ipaddress
from contextlib import redirect_stderr

from mterelay.service.config import load_config, parse_yaml
from mterelay.service.tap import Options
from mterelay.web.root import pairing_limits
from tests.helpers.config import BASE, SECRET, ConfigErrorCase, env

RATES = ("PAIRING_ADDRESS_RATE", "PAIRING_CLIENT_RATE", "PAIRING_GLOBAL_RATE")


class PairingSettingsTests(ConfigErrorCase):

    def test_defaults(self) -> None:
        config = load_config(BASE)
        self.assertEqual(config.trusted_proxies, ())
        self.assertEqual(config.pairing_address_rate, 100.0)
        self.assertEqual(config.pairing_client_rate, 25.0)
        self.assertEqual(config.pairing_global_rate, 200.0)
        self.assertEqual(config.pairing_concurrency, 32)
        limits = pairing_limits(config)
        self.assertEqual((limits.address_rate, limits.client_rate, limits.global_rate,
                          limits.concurrency, limits.max_entries), (100.0, 25.0, 200.0, 32, 64))

    def test_environment(self) -> None:
        config = load_config(env(TRUSTED_PROXIES="10.0.0.0/8, 192.168.1.7,2001:db8::/32",
                                 PAIRING_ADDRESS_RATE="12.5", PAIRING_CLIENT_RATE="3",
                                 PAIRING_GLOBAL_RATE="1000", PAIRING_CONCURRENCY="4"))
        self.assertEqual(config.trusted_proxies, (
            ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.7/32"),
            ipaddress.ip_network("2001:db8::/32")))
        self.assertEqual((config.pairing_address_rate, config.pairing_client_rate,
                          config.pairing_global_rate, config.pairing_concurrency),
                         (12.5, 3.0, 1000.0, 4))

    def test_yaml_keys(self) -> None:
        values = parse_yaml(
            "upstream: http://127.0.0.1:9000\nclientIdSecret: " + SECRET + "\n"
            "trustedProxies: [10.1.0.0/16, 'fd00::/8']\npairingAddressRate: 7\n"
            "pairingClientRate: 2\npairingGlobalRate: 50\npairingConcurrency: 3\n")
        config = load_config({}, values)
        self.assertEqual(config.trusted_proxies, (ipaddress.ip_network("10.1.0.0/16"),
                                                  ipaddress.ip_network("fd00::/8")))
        self.assertEqual((config.pairing_address_rate, config.pairing_client_rate,
                          config.pairing_global_rate, config.pairing_concurrency),
                         (7.0, 2.0, 50.0, 3))

    def test_twistd_options(self) -> None:
        options = Options(environ=env(PAIRING_GLOBAL_RATE="9"))
        with redirect_stderr(io.StringIO()):
            options.parseOptions(["--trusted-proxies", "127.0.0.1", "--pairing-address-rate",
                                  "5", "--pairing-client-rate", "1", "--pairing-global-rate",
                                  "60", "--pairing-concurrency", "2"])
        config = options.config
        assert config is not None
        self.assertEqual(config.trusted_proxies, (ipaddress.ip_network("127.0.0.1/32"),))
        self.assertEqual((config.pairing_address_rate, config.pairing_client_rate,
                          config.pairing_global_rate, config.pairing_concurrency),
                         (5.0, 1.0, 60.0, 2))

    def test_bad_trusted_proxies(self) -> None:
        self.check(env(TRUSTED_PROXIES="10.0.0.0/8,lb.example"), "TRUSTED_PROXIES",
                   "'lb.example' is not an IP address or CIDR network")
        self.check(env(TRUSTED_PROXIES="10.0.0.1/8"), "TRUSTED_PROXIES",
                   "did you mean 10.0.0.0/8?")
        self.check(env(TRUSTED_PROXIES="10.0.0.0/33"), "TRUSTED_PROXIES", "not an IP address")

    def test_bad_rates(self) -> None:
        for name in RATES:
            for value in ("0", "-1", "many", "nan", "inf", "2000000"):
                self.check(env(**{name: value}), name, "pairs per second")

    def test_bad_concurrency(self) -> None:
        for value in ("0", "-3", "1.5", "lots"):
            self.check(env(PAIRING_CONCURRENCY=value), "PAIRING_CONCURRENCY", "")
