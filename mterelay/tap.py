"""``twistd mterelay``: command-line options and the service tree.

``Options`` validates the whole configuration in ``postOptions`` so a bad
setting stops twistd before anything listens, with one line on stderr and a
non-zero exit.  ``makeService`` only assembles parts; each part receives the
reactor, agent and store it uses.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized

from mterelay import __version__
from mterelay.config import SETTINGS, Config, ConfigError, load_config, parse_yaml
from mterelay.logs import make_observer
from mterelay.store import IPairStore, StoreLimits, build_store
from mterelay.upstream import UpstreamForwarder, make_agent
from mterelay.web.root import RelayRoot
from mterelay.web.site import RelaySite

log = Logger(namespace="mterelay")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run an mterelay: an end-to-end payload-encryption relay for HTTP. Every option "
        "can also be given as an environment variable (UPSTREAM, CLIENT_ID_SECRET, ...) "
        "or in a YAML file; options win over the environment, which wins over the file."
    )
    optParameters = [["config", "c", None, "YAML configuration file (or CONFIG_FILE)."]] + [
        [setting.cli, None, None, setting.help] for setting in SETTINGS if setting.cli
    ]
    optFlags = [["debug", None, "Log at debug level (same as DEBUG=true)."]]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self.config: Config | None = None

    def opt_version(self) -> None:
        print(f"mterelay {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        try:
            self.config = options_to_config(self, self.environ)
        except ConfigError as error:
            sys.stderr.write(f"{error}\n")
            sys.stderr.flush()
            raise SystemExit(2)


def options_to_config(options: Mapping[str, Any], environ: Mapping[str, str]) -> Config:
    """Read the optional YAML file and merge it with the environment and options."""
    path = options.get("config") or environ.get("CONFIG_FILE") or None
    file_values: dict[str, Any] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as error:
            raise ConfigError("config file", f"cannot be read: {error.strerror}", path) from None
        file_values = parse_yaml(text, source=path)
    cli = {s.field: options.get(s.cli) for s in SETTINGS if s.cli}
    if options.get("debug"):
        cli["debug"] = True
    return load_config(environ, file_values, cli, file_source=path or "config file")


class RelayService(MultiService):
    """The top service; hands twistd its log observer when attached to an Application."""

    def __init__(self, config: Config, observer: ILogObserver, reactor: Any = None) -> None:
        super().__init__()
        self.config = config
        self.observer = observer
        self.reactor = reactor
        self.handle_sigterm = False
        self.store: IPairStore | None = None
        self.listener: ListenerService | None = None

    def startService(self) -> None:
        super().startService()
        if self.handle_sigterm and self.reactor is not None:
            self.reactor.callWhenRunning(self._install_sigterm)

    def _install_sigterm(self) -> None:
        # twistd re-raises the stopping signal after shutdown, so a relay
        # stopped by SIGTERM would exit with status -15.  SIGTERM is how every
        # orchestrator asks for a clean stop, so it stops the reactor itself
        # and the process exits 0.
        def on_sigterm(signum: int, frame: Any) -> None:
            log.info("Received SIGTERM, shutting down.")
            self.reactor.callFromThread(self.reactor.stop)

        signal.signal(signal.SIGTERM, on_sigterm)

    def setServiceParent(self, parent: Any) -> None:
        # twistd uses an ILogObserver component of the application when it
        # has one, so LOG_LEVEL / LOG_FORMAT apply to every line it writes.
        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)


class ListenerService(StreamServerEndpointService):
    """The main listener; logs where it listens once the port is bound."""

    def __init__(self, endpoint: Any, factory: Any, description: str) -> None:
        super().__init__(endpoint, factory)
        # Fail twistd's start-up (exit != 0) when the port cannot be bound.
        self._raiseSynchronously = True
        self.description = description

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._waitingForPort.addCallback(self._listening)

    def when_listening(self) -> Any:
        """A Deferred firing with the listening port (after privilegedStartService)."""
        waiting: Deferred[Any] = Deferred()
        self._waitingForPort.addCallback(lambda port: (waiting.callback(port), port)[1])
        return waiting

    def _listening(self, port: Any) -> Any:
        address = port.getHost()
        host = getattr(address, "host", None)
        if host is not None:
            scheme = "https" if self.description.startswith("ssl:") else "http"
            log.info("Server listening at {url}", url=f"{scheme}://{host}:{address.port}")
        else:
            log.info("Server listening on {endpoint}", endpoint=self.description)
        return port


class StoreService(Service):
    """Starts and stops the pair store with the relay.

    A Redis that is down at start-up does not stop the relay: the store keeps
    reconnecting in the background and requests needing it answer 503 meanwhile.
    """

    def __init__(self, store: IPairStore, description: str) -> None:
        self.store = store
        self.description = description

    def startService(self) -> None:
        super().startService()
        self.store.start().addCallbacks(
            lambda _: log.info("Pair store ready: {store}", store=self.description),
            lambda failure: log.warn(
                "Pair store {store} not reachable yet ({why}); retrying in the background",
                store=self.description,
                why=failure.getErrorMessage(),
            ),
        )

    def stopService(self) -> Any:
        super().stopService()
        return self.store.stop()


def store_limits(config: Config) -> StoreLimits:
    return StoreLimits(
        idle_ttl=config.pair_idle_ttl,
        max_age=config.pair_max_age,
        max_messages=config.pair_max_messages,
    )


def store_for(config: Config, reactor: Any) -> IPairStore:
    limits = store_limits(config)
    secret, *previous = config.state_secrets
    return build_store(
        reactor,
        redis_url=config.redis_url,
        state_secret=secret,
        previous_state_secrets=previous,
        limits=limits,
        key_prefix=config.redis_key_prefix,
    )


def build_service(config: Config, reactor: Any, observer: ILogObserver | None = None) -> RelayService:
    """Assemble the relay; everything stateful gets ``reactor`` explicitly."""
    if observer is None:
        observer = make_observer(config.log_level, config.log_format, sys.stdout)
    top = RelayService(config, observer, reactor)
    store_name = config.redis_url_redacted if config.redis_url else "memory (in-process)"
    top.store = store_for(config, reactor)
    StoreService(top.store, store_name).setServiceParent(top)
    forwarder = UpstreamForwarder(
        clock=reactor,
        agent=make_agent(reactor),
        upstream=config.upstream,
        timeout=config.upstream_timeout,
        extra_headers=config.headers,
    )
    site = RelaySite(RelayRoot(config, forwarder, reactor, top.store), reactor)
    try:
        endpoint = serverFromString(reactor, config.listen_endpoint)
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError("LISTEN", f"is not a valid endpoint description: {error}") from None
    top.listener = ListenerService(endpoint, site, config.listen_endpoint)
    top.listener.setServiceParent(top)
    log.info(
        "mterelay {version} ready: upstream {upstream}, store {store}, log level {log_level_name}"
        "{region}",
        version=__version__,
        upstream=config.upstream,
        store=config.store_kind
        + (f" ({config.redis_url_redacted})" if config.redis_url else " (in-process)"),
        log_level_name=config.log_level,
        region=f", AWS region {config.aws_region}" if config.aws_region else "",
    )
    if config.outbound_token and not config.outbound_upstreams:
        log.warn(
            "OUTBOUND_TOKEN is set but OUTBOUND_UPSTREAMS is not: outbound requests may name "
            "any remote relay in x-mte-upstream; set OUTBOUND_UPSTREAMS to restrict them"
        )
    return top


def makeService(options: Options) -> RelayService:
    from twisted.internet import reactor

    assert options.config is not None
    try:
        service = build_service(options.config, reactor)
        service.handle_sigterm = True
        return service
    except ConfigError as error:
        sys.stderr.write(f"{error}\n")
        raise SystemExit(2)
