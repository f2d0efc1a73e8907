"""The relay's configuration: one frozen value built from three sources.

Precedence, lowest first: built-in defaults, the YAML file (``--config`` or
``CONFIG_FILE``), environment variables, twistd command-line options.  The
environment beats the file because container platforms inject environment
variables last; explicit command-line options beat everything.

Everything here is pure: callers hand in the mappings, nothing reads
``os.environ`` or touches the reactor, so every rule is unit-testable.  Every
validation rule and its message lives in this module; a failure is a single
:class:`ConfigError` naming the setting, never the secret value.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
import yaml

from mterelay.http.headers import is_token
from mterelay.web.outboundrules import OriginPattern
from mterelay.web.routes import RoutePattern
from mterelay.store.redisurl import parse_redis_url

LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "panic", "off")
DEFAULT_CORS_METHODS = ("GET", "POST", "PUT", "DELETE")
ALWAYS_ALLOWED_METHODS = ("OPTIONS", "HEAD")
MIN_SECRET_LENGTH = 32

_REGION = re.compile(r"^[a-z]{2,}(-[a-z]+)+-\d+$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A setting is missing or invalid; ``str()`` is the one line operators see."""

    def __init__(self, setting: str, problem: str, source: str = "") -> None:
        self.setting = setting
        self.problem = problem
        self.source = source
        where = f" (from {source})" if source else ""
        super().__init__(f"invalid configuration: {setting} {problem}{where}")


@attrs.frozen
class Config:
    """Every setting the relay honours.  Secrets are kept out of ``repr``."""

    upstream: str
    client_id_secret: str = attrs.field(repr=False)
    client_id_secret_previous: str | None = attrs.field(default=None, repr=False)
    outbound_token: str | None = attrs.field(default=None, repr=False)
    outbound_token_previous: str | None = attrs.field(default=None, repr=False)
    #: Remote relays an outbound request may name; empty: any (logged at start-up).
    outbound_upstreams: tuple[OriginPattern, ...] = ()
    aws_region: str | None = None
    redis_url: str | None = attrs.field(default=None, repr=False)
    port: int = 8080
    listen: str | None = None
    log_level: str = "info"
    log_format: str = "text"
    pass_through_routes: tuple[RoutePattern, ...] = ()
    mte_routes: tuple[RoutePattern, ...] | None = None
    cors_origins: tuple[str, ...] = ()
    cors_methods: tuple[str, ...] = DEFAULT_CORS_METHODS + ALWAYS_ALLOWED_METHODS
    cors_max_age: int = 600
    headers: tuple[tuple[str, str], ...] = ()
    max_pool_size: int = 25
    upstream_timeout: float = 30.0
    state_secret: str | None = attrs.field(default=None, repr=False)
    state_secret_previous: str | None = attrs.field(default=None, repr=False)
    redis_key_prefix: str = "mterelay:"
    pair_idle_ttl: float = 1800.0
    pair_max_age: float = 86400.0
    pair_max_messages: int = 1_000_000
    metrics_port: int | None = None
    metrics_listen: str | None = None
    metrics_format: str = "prometheus"
    metrics_interval: float = 60.0
    shutdown_grace: float = 25.0
    #: Slowloris limits (mterelay.web.guard); max_connections None: from RLIMIT_NOFILE.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    #: Seconds a response body may go without a byte once its headers are in
    #: (UPSTREAM_TIMEOUT covers only the wait for the headers): a live stream
    #: (SSE, NDJSON, long poll) idle for longer is closed.
    stream_idle_timeout: float = 300.0
    #: Seconds an idle keep-alive connection to UPSTREAM is kept: below the
    #: upstream's own idle close (nginx 75 s, gunicorn 2 s), so a request is
    #: never written just as the upstream closes the connection (a 502).
    upstream_idle_timeout: float = 60.0
    max_connections: int | None = None
    workers: int = 1
    #: Proxies whose X-Forwarded-For names the client (pairing limits by source).
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    pairing_address_rate: float = 100.0
    pairing_client_rate: float = 25.0
    pairing_global_rate: float = 200.0
    pairing_concurrency: int = 32
    #: DEBUG=true: also echo x-request-id on responses.
    debug: bool = False

    @property
    def metrics_endpoint(self) -> str | None:
        """The metrics listener's endpoint description; None: no metrics listener."""
        if self.metrics_listen:
            return self.metrics_listen
        if self.metrics_port is not None:
            return f"tcp:{self.metrics_port}"
        return None

    @property
    def listen_endpoint(self) -> str:
        """The Twisted server endpoint description the main listener uses."""
        return self.listen or f"tcp:{self.port}"

    @property
    def client_id_secrets(self) -> tuple[bytes, ...]:
        """Secrets that verify a client id; the first one signs new ids.

        During a rotation window CLIENT_ID_SECRET_PREVIOUS is accepted too, so
        ids signed before the switch keep working until clients refresh them.
        """
        current = self.client_id_secret.encode("utf-8")
        previous = self.client_id_secret_previous
        if previous is None or previous == self.client_id_secret:
            return (current,)
        return (current, previous.encode("utf-8"))

    @property
    def outbound_tokens(self) -> tuple[str, ...]:
        """Tokens an application may send; OUTBOUND_TOKEN_PREVIOUS only while rotating."""
        if not self.outbound_token:
            return ()
        if self.outbound_token_previous in (None, self.outbound_token):
            return (self.outbound_token,)
        return (self.outbound_token, self.outbound_token_previous)

    @property
    def state_secrets(self) -> tuple[bytes, ...]:
        """Secrets for pair state at rest: the first seals, the others only open.

        Without STATE_SECRET the client-id secrets serve, so rotating
        CLIENT_ID_SECRET with CLIENT_ID_SECRET_PREVIOUS keeps stored pairs
        readable on both sides of a rolling update.
        """
        if self.state_secret is None:
            return self.client_id_secrets
        current = self.state_secret.encode("utf-8")
        previous = self.state_secret_previous
        if previous is None or previous == self.state_secret:
            return (current,)
        return (current, previous.encode("utf-8"))

    @property
    def store_kind(self) -> str:
        return "redis" if self.redis_url else "memory"

    @property
    def redis_url_redacted(self) -> str | None:
        """REDIS_URL without its password, for logs."""
        if not self.redis_url:
            return None
        parts = urlsplit(self.redis_url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        if parts.password:
            user = parts.username or ""
            host = f"{user}:***@{host}"
        return parts._replace(netloc=host).geturl()


# --- parsers: raw value (str from env/CLI, or a YAML scalar/list/map) -> typed value


def _text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise ValueError("must be a single value")
    return str(value).strip()


def _required_text(value: Any) -> str:
    text = _text(value)
    if not text:
        raise ValueError("must not be empty")
    return text


def _http_url(value: Any) -> str:
    text = _required_text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or fragment")
    try:
        parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return text.rstrip("/")


def _secret(value: Any) -> str:
    text = _required_text(value)
    if len(text) < MIN_SECRET_LENGTH:
        raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
    return text


def _token(value: Any) -> str:
    text = _required_text(value)
    if any(ch.isspace() for ch in text):
        raise ValueError("must not contain white space")
    return text


def _region(value: Any) -> str:
    text = _required_text(value)
    if not _REGION.match(text):
        raise ValueError("must look like an AWS region, e.g. us-east-1")
    return text


def _redis_url(value: Any) -> str:
    text = _required_text(value)
    try:
        parse_redis_url(text)
    except ValueError as error:
        # "the Redis URL must ..." -> "must ..."
        raise ValueError(str(error).removeprefix("the Redis URL ").strip()) from None
    return text


def _int_between(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("must be a whole number")
        try:
            number = int(_text(value))
        except ValueError:
            raise ValueError("must be a whole number") from None
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}")
        return number

    return parse


def _number(value: Any, unit: str) -> float:
    """A float from a setting's value, refused with "must be a number of <unit>"."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number of {unit}")
    try:
        return float(_text(value))
    except ValueError:
        raise ValueError(f"must be a number of {unit}") from None


def _seconds(value: Any) -> float:
    return _number(value, "seconds")


def _positive_seconds(value: Any) -> float:
    number = _seconds(value)
    if not 0 < number < 10**7 or number != number:
        raise ValueError("must be a positive number of seconds")
    return number


def _grace_seconds(value: Any) -> float:
    number = _seconds(value)
    if not 0 <= number <= 3600:
        raise ValueError("must be between 0 and 3600 seconds")
    return number


def _limit_seconds(value: Any) -> float:
    number = _seconds(value)
    if not 0 < number <= 3600:
        raise ValueError("must be more than 0 and at most 3600 seconds")
    return number


def _rate(value: Any) -> float:
    number = _number(value, "pairs per second")
    if not 0 < number <= 1_000_000:
        raise ValueError("must be a positive number of pairs per second (at most 1000000)")
    return number


def _networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in _list(value):
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError:
            try:
                loose = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"entry {item!r} is not an IP address or CIDR network") \
                    from None
            raise ValueError(f"entry {item!r} has host bits set (did you mean {loose}?)") \
                from None
    return tuple(networks)


def _one_of(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value).lower()
        if text not in choices:
            raise ValueError(f"must be {', '.join(choices[:-1])} or {choices[-1]}")
        return text

    return parse


def _log_level(value: Any) -> str:
    text = _text(value).lower()
    if text not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return text


_log_format = _one_of("text", "json")
_metrics_format = _one_of("prometheus", "emf")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("must be true or false")


def _list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        items = [_text(item) for item in value]
    else:
        items = _text(value).split(",")
    return [item.strip() for item in items if item.strip()]


def _routes(value: Any) -> tuple[RoutePattern, ...]:
    routes = []
    for item in _list(value):
        if not item.startswith("/"):
            raise ValueError(f"route {item!r} must start with /")
        if any(ch.isspace() for ch in item) or "?" in item or "#" in item:
            raise ValueError(f"route {item!r} must be a plain path (no spaces, query or fragment)")
        routes.append(RoutePattern.compile(item))
    return tuple(routes)


def _origins(value: Any) -> tuple[str, ...]:
    origins = []
    for item in _list(value):
        parts = urlsplit(item)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or parts.username
        ):
            raise ValueError(f"entry {item!r} must be an origin like https://app.example.com")
        origins.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return tuple(origins)


def _origin_patterns(value: Any) -> tuple[OriginPattern, ...]:
    patterns = tuple(OriginPattern.compile(item) for item in _list(value))
    if not patterns:
        raise ValueError("must list at least one origin (leave it unset to allow any)")
    return patterns


def _methods(value: Any) -> tuple[str, ...]:
    methods = []
    for item in _list(value):
        method = item.upper()
        if not is_token(method):
            raise ValueError(f"entry {item!r} is not an HTTP method")
        if method not in methods:
            methods.append(method)
    if not methods:
        raise ValueError("must list at least one method")
    for always in ALWAYS_ALLOWED_METHODS:
        if always not in methods:
            methods.append(always)
    return tuple(methods)


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise ValueError("must be a JSON object of header names to values") from None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object of header names to values")
    pairs = []
    for name, header_value in value.items():
        if not isinstance(name, str) or not is_token(name):
            raise ValueError(f"has an invalid header name {name!r}")
        if not isinstance(header_value, str):
            raise ValueError(f"value for {name!r} must be a string")
        if any(ch in header_value for ch in "\r\n\0"):
            raise ValueError(f"value for {name!r} must not contain line breaks")
        pairs.append((name.lower(), header_value))
    return tuple(pairs)


def _key_prefix(value: Any) -> str:
    text = _text(value)
    if any(ch.isspace() for ch in text) or len(text) > 64:
        raise ValueError("must be at most 64 characters without spaces")
    return text


@attrs.frozen
class Setting:
    """One row of the settings table: how a setting is named in each source."""

    field: str
    env: str
    yaml_key: str
    parse: Callable[[Any], Any]
    cli: str | None = None
    help: str = ""


SETTINGS: tuple[Setting, ...] = (
    Setting("upstream", "UPSTREAM", "upstream", _http_url, "upstream",
            "Upstream API the relay forwards to (required)."),
    Setting("client_id_secret", "CLIENT_ID_SECRET", "clientIdSecret", _secret,
            "client-id-secret", "Secret (32+ chars) that signs client ids (required)."),
    Setting("client_id_secret_previous", "CLIENT_ID_SECRET_PREVIOUS", "clientIdSecretPrevious",
            _secret, "client-id-secret-previous",
            "Previous CLIENT_ID_SECRET, still accepted during a rotation window."),
    Setting("outbound_token", "OUTBOUND_TOKEN", "outboundToken", _token, "outbound-token",
            "Token applications send in x-mte-outbound-token."),
    Setting("outbound_token_previous", "OUTBOUND_TOKEN_PREVIOUS", "outboundTokenPrevious",
            _token, "outbound-token-previous",
            "Previous OUTBOUND_TOKEN, still accepted during a rotation window."),
    Setting("outbound_upstreams", "OUTBOUND_UPSTREAMS", "outboundUpstreams", _origin_patterns,
            "outbound-upstreams",
            "Comma-separated remote relay origins outbound requests may name (* wildcards);"
            " default: any."),
    Setting("aws_region", "AWS_REGION", "awsRegion", _region, "aws-region",
            "AWS region the relay runs in."),
    Setting("redis_url", "REDIS_URL", "redisURL", _redis_url, "redis-url",
            "redis://, rediss:// (or redis+cluster://, rediss+cluster:// for a Redis "
            "Cluster) URL for shared pair state (default: memory)."),
    Setting("port", "PORT", "port", _int_between(1, 65535), "port",
            "TCP port to listen on (default 8080)."),
    Setting("listen", "LISTEN", "listen", _required_text, "listen",
            "Twisted endpoint to listen on, e.g. tcp:8080:interface=0.0.0.0 (overrides port)."),
    Setting("log_level", "LOG_LEVEL", "logLevel", _log_level, "log-level",
            "trace, debug, info, warning, error, panic or off (default info)."),
    Setting("log_format", "LOG_FORMAT", "logFormat", _log_format, "log-format",
            "text or json (default text)."),
    Setting("pass_through_routes", "PASS_THROUGH_ROUTES", "passThroughRoutes", _routes,
            "pass-through-routes", "Comma-separated routes proxied without encryption."),
    Setting("mte_routes", "MTE_ROUTES", "mteRoutes", _routes, "mte-routes",
            "Comma-separated encrypted routes; when set, other routes answer 404."),
    Setting("cors_origins", "CORS_ORIGINS", "corsOrigins", _origins, "cors-origins",
            "Comma-separated origins allowed to make cross-origin requests."),
    Setting("cors_methods", "CORS_METHODS", "corsMethods", _methods, "cors-methods",
            "Comma-separated CORS methods (default GET, POST, PUT, DELETE)."),
    Setting("cors_max_age", "CORS_MAX_AGE", "corsMaxAge", _int_between(0, 86400),
            "cors-max-age",
            "Seconds a browser may cache a CORS preflight answer (default 600)."),
    Setting("headers", "HEADERS", "headers", _headers, "headers",
            "JSON object of headers added to every request and response."),
    Setting("max_pool_size", "MAX_POOL_SIZE", "maxPoolSize", _int_between(1, 1000),
            "max-pool-size", "Pairs per remote relay / pair requests per call (default 25)."),
    Setting("upstream_timeout", "UPSTREAM_TIMEOUT", "upstreamTimeout", _positive_seconds,
            "upstream-timeout", "Seconds to wait for the upstream (default 30)."),
    Setting("upstream_idle_timeout", "UPSTREAM_IDLE_TIMEOUT", "upstreamIdleTimeout",
            _limit_seconds, "upstream-idle-timeout",
            "Seconds an idle connection to the upstream is kept; set it below the upstream's"
            " keep-alive timeout (default 60)."),
    Setting("state_secret", "STATE_SECRET", "stateSecret", _secret, "state-secret",
            "Secret (32+ chars) sealing pair state in Redis (default: CLIENT_ID_SECRET)."),
    Setting("state_secret_previous", "STATE_SECRET_PREVIOUS", "stateSecretPrevious", _secret,
            "state-secret-previous",
            "Previous STATE_SECRET: still opens stored pairs during a rotation window."),
    Setting("redis_key_prefix", "REDIS_KEY_PREFIX", "redisKeyPrefix", _key_prefix,
            "redis-key-prefix", "Prefix of every Redis key (default mterelay:)."),
    Setting("pair_idle_ttl", "PAIR_IDLE_TTL", "pairIdleTtl", _positive_seconds,
            "pair-idle-ttl", "Seconds an unused pair lives (default 1800)."),
    Setting("pair_max_age", "PAIR_MAX_AGE", "pairMaxAge", _positive_seconds,
            "pair-max-age", "Seconds a pair lives at most (default 86400)."),
    Setting("pair_max_messages", "PAIR_MAX_MESSAGES", "pairMaxMessages",
            _int_between(1, 2**40), "pair-max-messages",
            "Messages a pair carries at most (default 1000000)."),
    Setting("metrics_port", "METRICS_PORT", "metricsPort", _int_between(1, 65535),
            "metrics-port", "Port of the metrics/health listener (default: off)."),
    Setting("metrics_listen", "METRICS_LISTEN", "metricsListen", _required_text,
            "metrics-listen", "Twisted endpoint of the metrics/health listener (overrides"
            " metrics-port)."),
    Setting("metrics_format", "METRICS_FORMAT", "metricsFormat", _metrics_format,
            "metrics-format", "prometheus, or emf to also write CloudWatch EMF lines to stdout."),
    Setting("metrics_interval", "METRICS_INTERVAL", "metricsInterval", _positive_seconds,
            "metrics-interval", "Seconds between EMF lines (default 60)."),
    Setting("shutdown_grace", "SHUTDOWN_GRACE", "shutdownGrace", _grace_seconds,
            "shutdown-grace", "Seconds in-flight requests may take to finish after SIGTERM"
            " (default 25)."),
    Setting("header_timeout", "HEADER_TIMEOUT", "headerTimeout", _limit_seconds,
            "header-timeout", "Seconds a client has to send a request line and headers,"
            " however slowly they trickle in; then 408 and close (default 10)."),
    Setting("body_timeout", "BODY_TIMEOUT", "bodyTimeout", _limit_seconds,
            "body-timeout", "Seconds a request body may go without a byte (default 30)."),
    Setting("stream_idle_timeout", "STREAM_IDLE_TIMEOUT", "streamIdleTimeout", _limit_seconds,
            "stream-idle-timeout", "Seconds a response body (an SSE or NDJSON stream, say) may"
            " go without a byte once its headers arrived; then it is cut (default 300)."),
    Setting("max_connections", "MAX_CONNECTIONS", "maxConnections",
            _int_between(1, 1_000_000), "max-connections",
            "Open client connections per listener; more are closed at once"
            " (default: 10000, or less when the open-files limit is lower)."),
    Setting("workers", "WORKERS", "workers", _int_between(1, 64), "workers",
            "Processes sharing the listening port (default 1; more than 1 needs REDIS_URL)."),
    Setting("trusted_proxies", "TRUSTED_PROXIES", "trustedProxies", _networks,
            "trusted-proxies",
            "Comma-separated proxy addresses/CIDRs whose X-Forwarded-For names the client"
            " (default: none, the TCP peer is the client)."),
    Setting("pairing_address_rate", "PAIRING_ADDRESS_RATE", "pairingAddressRate", _rate,
            "pairing-address-rate", "Pairs per second one source address may create"
            " (default 100)."),
    Setting("pairing_client_rate", "PAIRING_CLIENT_RATE", "pairingClientRate", _rate,
            "pairing-client-rate", "Pairs per second one client id may create from one"
            " source address (default 25)."),
    Setting("pairing_global_rate", "PAIRING_GLOBAL_RATE", "pairingGlobalRate", _rate,
            "pairing-global-rate", "Pairs per second this process creates at most, all"
            " clients together (default 200)."),
    Setting("pairing_concurrency", "PAIRING_CONCURRENCY", "pairingConcurrency",
            _int_between(1, 100_000), "pairing-concurrency",
            "Pairing requests in progress at once per process (default 32)."),
)

_DEBUG = Setting("debug", "DEBUG", "debug", _bool, None, "")
_BY_YAML_KEY = {s.yaml_key: s for s in SETTINGS + (_DEBUG,)}


def parse_yaml(text: str, source: str = "config file") -> dict[str, Any]:
    """Parse the YAML config file; unknown keys are errors so typos do not pass silently."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("config file", f"is not valid YAML{where}", source) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config file", "must be a mapping of settings", source)
    for key in data:
        if key not in _BY_YAML_KEY:
            raise ConfigError("config file", f"has an unknown key {key!r}", source)
    return data


def load_config(
    environ: Mapping[str, str],
    file_values: Mapping[str, Any] | None = None,
    cli_values: Mapping[str, Any] | None = None,
    file_source: str = "config file",
) -> Config:
    """Merge the three sources into a validated :class:`Config`.

    ``file_values`` is the output of :func:`parse_yaml`; ``cli_values`` maps a
    setting's field name to the raw option value (``None`` meaning not given).
    """
    file_values = file_values or {}
    cli_values = cli_values or {}
    values: dict[str, Any] = {}
    for setting in SETTINGS + (_DEBUG,):
        raw, source = None, ""
        if setting.yaml_key in file_values and file_values[setting.yaml_key] is not None:
            raw, source = file_values[setting.yaml_key], f"{file_source} key {setting.yaml_key}"
        if setting.env in environ and environ[setting.env].strip() != "":
            raw, source = environ[setting.env], "environment"
        if cli_values.get(setting.field) is not None:
            raw, source = cli_values[setting.field], f"option --{setting.cli}"
        if raw is None:
            continue
        try:
            values[setting.field] = setting.parse(raw)
        except ValueError as error:
            raise ConfigError(setting.env, str(error), source) from None

    for required in ("upstream", "client_id_secret"):
        if required not in values:
            env = next(s.env for s in SETTINGS if s.field == required)
            raise ConfigError(env, "is required")

    if values.get("debug", False):
        if LOG_LEVELS.index(values.get("log_level", "info")) > LOG_LEVELS.index("debug"):
            values["log_level"] = "debug"
    _check_combinations(values)
    return Config(**values)


def _check_combinations(values: Mapping[str, Any]) -> None:
    """Settings that are valid alone but not together."""
    if values.get("workers", 1) > 1 and not values.get("redis_url"):
        raise ConfigError(
            "WORKERS",
            "needs REDIS_URL: with the in-memory store each worker process would hold its "
            "own pairs, and a client's next request would land on a worker that never saw "
            "its pairing",
        )
    redis_url = values.get("redis_url")
    prefix = values.get("redis_key_prefix", "")
    if redis_url and parse_redis_url(redis_url).cluster and ("{" in prefix or "}" in prefix):
        raise ConfigError("REDIS_KEY_PREFIX", "must not contain { or } with a "
                          "redis+cluster:// REDIS_URL (braces make the key's hash tag)")
    metrics_port = values.get("metrics_port")
    if metrics_port is not None and not values.get("metrics_listen"):
        if metrics_port == values.get("port", 8080) and not values.get("listen"):
            raise ConfigError(
                "METRICS_PORT", "must differ from PORT: metrics are never served on the "
                "public port"
            )
