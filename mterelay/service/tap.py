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

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.web.server import Site

from mterelay import __version__
from mterelay.http.twistedinternals import fail_start_synchronously, waiting_for_port
from mterelay.service.config import SETTINGS, Config, ConfigError, load_config, parse_yaml
from mterelay.service.emf import EmfReporter, emf_dimensions, line_writer
from mterelay.service.gctuning import tune_when_running
from mterelay.service.logs import (
    LogDestination,
    LogDestinationError,
    log_destination,
    make_observer,
    syslog_observer,
)
from mterelay.service.metrics import RelayMetrics
from mterelay.service.shutdown import Drainer
from mterelay.store import IPairStore, StoreLimits, build_store
from mterelay.store.metered import MeteredStore
from mterelay.http.connections import LeanPool, agent_pool, peer_agent
from mterelay.http.upstream import UpstreamForwarder, make_agent
from mterelay.web.guard import ConnectionGuard, default_max_connections
from mterelay.web.health import OperationsResource, Readiness
from mterelay.web.root import RelayRoot
from mterelay.web.site import RelaySite
from mterelay.service.workers import (
    WORKER_PORT_ENV,
    ReusePortEndpoint,
    WorkerSupervisor,
    die_with_parent,
    share_metrics,
    tcp_address,
    with_default_backlog,
    worker_argv,
    worker_index,
)

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
        self.metrics_listener: ListenerService | None = None
        self.metrics: RelayMetrics | None = None
        self.readiness: Readiness | None = None
        self.drainer: Drainer | None = None
        self.supervisor: WorkerSupervisor | None = None
        #: The pools of the agents build_service made (UPSTREAM, remote relays):
        #: their idle connections and timers are closed when the relay stops.
        self.pools: list[LeanPool] = []

    def stopService(self) -> Deferred[None]:
        """Stop the children, then close the agents' idle connections (nothing else will)."""
        stopped = maybeDeferred(super().stopService)

        def close_pools(outcome: Any) -> Any:
            closing = [maybeDeferred(pool.closeCachedConnections) for pool in self.pools]
            return gatherResults(closing, consumeErrors=True).addBoth(lambda _: outcome)

        return stopped.addBoth(close_pools)

    def startService(self) -> None:
        super().startService()
        if self.handle_sigterm and self.reactor is not None:
            self.reactor.callWhenRunning(self._install_sigterm)

    def _install_sigterm(self) -> None:
        # twistd would stop at once and re-raise SIGTERM after shutdown (exit
        # status -15).  SIGTERM is how every orchestrator asks for a clean
        # stop, so the relay drains and then exits 0.
        def on_sigterm(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(self.terminate)

        signal.signal(signal.SIGTERM, on_sigterm)

    def terminate(self) -> Deferred[None]:
        """Drain (SHUTDOWN_GRACE at most), then stop the reactor; a second call stops now."""
        assert self.drainer is not None
        if self.drainer.draining:
            log.warn("Received SIGTERM again while draining: stopping now")
            self._stop_reactor()
            return succeed(None)
        log.info("Received SIGTERM, draining")
        if self.supervisor is not None:
            self.supervisor.begin_stop()
        drained = self.drainer.drain()
        drained.addBoth(lambda _: self._stop_reactor())
        return drained

    def _stop_reactor(self) -> None:
        if self.reactor is not None and self.reactor.running:
            self.reactor.stop()

    def setServiceParent(self, parent: Any) -> None:
        # twistd uses an ILogObserver component of the application when it
        # has one, so LOG_LEVEL / LOG_FORMAT apply to every line it writes.
        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)


class ListenerService(StreamServerEndpointService):
    """A listener that logs where it listens and can stop accepting before the relay stops."""

    def __init__(self, endpoint: Any, factory: Any, description: str,
                 label: str = "Server") -> None:
        super().__init__(endpoint, factory)
        # Fail twistd's start-up (exit != 0) when the port cannot be bound.
        fail_start_synchronously(self)
        self.description = description
        self.label = label
        self._stopped: Deferred[None] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        waiting_for_port(self).addCallback(self._listening)

    def when_listening(self) -> Any:
        """A Deferred firing with the listening port (after privilegedStartService)."""
        waiting: Deferred[Any] = Deferred()
        waiting_for_port(self).addCallback(lambda port: (waiting.callback(port), port)[1])
        return waiting

    def stop_accepting(self) -> Deferred[None]:
        """Close the listening port (once); connections already open carry on."""
        if self._stopped is None:
            self._stopped = super().stopService()
        result: Deferred[None] = Deferred()
        self._stopped.addBoth(lambda outcome: (result.callback(None), outcome)[1])
        return result

    def stopService(self) -> Deferred[None]:
        return self.stop_accepting()

    def _listening(self, port: Any) -> Any:
        address = port.getHost()
        host = getattr(address, "host", None)
        if host is not None:
            scheme = "https" if self.description.startswith("ssl:") else "http"
            log.info("{label} listening at {url}", label=self.label,
                     url=f"{scheme}://{host}:{address.port}")
        else:
            log.info("{label} listening on {endpoint}", label=self.label,
                     endpoint=self.description)
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


def build_service(config: Config, reactor: Any, observer: ILogObserver | None = None,
                  environ: Mapping[str, str] | None = None,
                  worker_command: list[str] | None = None) -> RelayService:
    """Assemble the relay; everything stateful gets ``reactor`` explicitly.

    ``environ`` tells a worker started by WORKERS apart from the first
    process; ``worker_command`` is how the first process starts the others.
    """
    environ = os.environ if environ is None else environ
    if observer is None:
        observer = make_observer(config.log_level, config.log_format, sys.stdout,
                                 getattr(reactor, "callLater", None))
    index = worker_index(environ) if config.workers > 1 else 0
    top = RelayService(config, observer, reactor)
    metrics_dir = share_metrics(environ, index) if config.workers > 1 else None
    top.metrics = metrics = RelayMetrics()
    if metrics_dir and index == 0:
        metrics.use_multiprocess(metrics_dir)
    store_name = config.redis_url_redacted if config.redis_url else "memory (in-process)"
    top.store = MeteredStore(store_for(config, reactor), metrics, reactor)
    StoreService(top.store, store_name).setServiceParent(top)
    upstream = make_agent(reactor, idle_timeout=config.upstream_idle_timeout)
    outbound = peer_agent(reactor)
    top.pools = [pool for pool in (agent_pool(upstream), agent_pool(outbound)) if pool is not None]
    forwarder = UpstreamForwarder(
        clock=reactor,
        agent=upstream,
        upstream=config.upstream,
        timeout=config.upstream_timeout,
        extra_headers=config.headers,
        metrics=metrics,
    )
    guard = ConnectionGuard(
        header_timeout=config.header_timeout,
        body_timeout=config.body_timeout,
        max_connections=config.max_connections or default_max_connections(),
        metrics=metrics,
    )
    site = RelaySite(RelayRoot(config, forwarder, reactor, top.store,
                               outbound_agent=outbound, metrics=metrics),
                     reactor, metrics, echo_request_id=config.debug, guard=guard)
    endpoint = _main_endpoint(config, reactor, environ, index)
    top.listener = ListenerService(endpoint, site, config.listen_endpoint)
    top.listener.setServiceParent(top)

    top.readiness = readiness = Readiness(top.store, reactor, metrics)

    def on_draining() -> None:
        readiness.draining = True  # also sets the mterelay_draining gauge

    top.drainer = Drainer(reactor, site, config.shutdown_grace, top.listener.stop_accepting,
                          on_draining)
    if config.metrics_endpoint and index == 0:
        try:
            metrics_endpoint = serverFromString(reactor, config.metrics_endpoint)
        except (ValueError, TypeError, KeyError) as error:
            setting = "METRICS_LISTEN" if config.metrics_listen else "METRICS_PORT"
            raise ConfigError(setting, f"is not a valid endpoint description: {error}") from None
        operations = Site(OperationsResource(metrics, readiness))
        operations.noisy = False
        top.metrics_listener = ListenerService(metrics_endpoint, operations,
                                               config.metrics_endpoint, label="Metrics")
        top.metrics_listener.setServiceParent(top)
    if config.metrics_format == "emf":
        # Bound to the real stdout now: twistd later turns sys.stdout into a
        # log stream, and an EMF line wrapped in a log record is not EMF.
        role = "outbound" if config.outbound_token else "inbound"
        EmfReporter(metrics, reactor, line_writer(sys.stdout), config.metrics_interval,
                    emf_dimensions(role, config.aws_region)).setServiceParent(top)
    if config.workers > 1 and index == 0:
        top.supervisor = WorkerSupervisor(
            reactor, config.workers, worker_command or [], environ,
            top.listener.when_listening, stop_timeout=config.shutdown_grace + 5,
            metrics_dir=metrics_dir,
        )
        top.supervisor.setServiceParent(top)
    log.info(
        "mterelay {version} ready: upstream {upstream}, store {store}, log level {log_level_name}"
        "{region}{worker}",
        version=__version__,
        upstream=config.upstream,
        store=config.store_kind
        + (f" ({config.redis_url_redacted})" if config.redis_url else " (in-process)"),
        log_level_name=config.log_level,
        region=f", AWS region {config.aws_region}" if config.aws_region else "",
        worker=f", worker {index + 1} of {config.workers}" if config.workers > 1 else "",
    )
    if config.outbound_token and not config.outbound_upstreams and index == 0:
        log.warn(
            "OUTBOUND_TOKEN is set but OUTBOUND_UPSTREAMS is not: outbound requests may name "
            "any remote relay in x-mte-upstream; set OUTBOUND_UPSTREAMS to restrict them"
        )
    return top


def _main_endpoint(config: Config, reactor: Any, environ: Mapping[str, str], index: int) -> Any:
    setting = "LISTEN" if config.listen else "PORT"
    if config.workers > 1:
        try:
            address = tcp_address(config.listen_endpoint)
        except ValueError as error:
            raise ConfigError("WORKERS", f"{error} ({setting} is {config.listen_endpoint})") from None
        if index:
            address = attrs.evolve(address, port=int(environ[WORKER_PORT_ENV]))
        return ReusePortEndpoint(reactor, address)
    try:
        return serverFromString(reactor, with_default_backlog(config.listen_endpoint))
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError("LISTEN", f"is not a valid endpoint description: {error}") from None


def observer_for(config: Config, destination: LogDestination, reactor: Any) -> ILogObserver:
    """The relay's observer (LOG_LEVEL, LOG_FORMAT) writing where twistd was told to."""
    if destination.kind == "syslog":
        return syslog_observer(config.log_level, destination.prefix)
    stream: Any = sys.stdout
    if destination.kind == "file":
        assert destination.path is not None
        from twisted.python.logfile import LogFile

        try:
            stream = LogFile.fromFullPath(destination.path)
        except OSError as error:
            raise ConfigError("--logfile", f"cannot be opened: {error.strerror}",
                              destination.path) from None
        # What twistd does for its own log file: SIGUSR1 reopens it (logrotate).
        if not signal.getsignal(signal.SIGUSR1):
            signal.signal(signal.SIGUSR1,
                          lambda signum, frame: reactor.callFromThread(stream.rotate))
    return make_observer(config.log_level, config.log_format, stream,
                         getattr(reactor, "callLater", None))


def twistd_log_destination(options: Options, config: Config) -> LogDestination:
    """Where twistd's --logfile / --syslog / -n (on the parent options) send the logs."""
    try:
        destination = log_destination(getattr(options, "parent", None))
    except LogDestinationError as error:
        raise ConfigError("--logfile", str(error)) from None
    if destination.kind == "file" and config.workers > 1:
        raise ConfigError(
            "WORKERS", "cannot be combined with twistd --logfile: the worker processes would "
            "write and rotate one file together; log to stdout (the default under -n) or "
            "--syslog")
    return destination


def worker_log_argv(command: list[str], destination: LogDestination) -> list[str]:
    """Workers log to syslog too when the first process does (twistd options precede the plugin)."""
    if destination.kind != "syslog" or "mterelay" not in command:
        return command
    at = command.index("mterelay")
    return command[:at] + ["--syslog", f"--prefix={destination.prefix}"] + command[at:]


def makeService(options: Options) -> RelayService:
    from twisted.internet import reactor

    assert options.config is not None
    if worker_index(os.environ):
        die_with_parent(os.environ)
    command = worker_argv(options, [setting.cli for setting in SETTINGS if setting.cli])
    try:
        destination = twistd_log_destination(options, options.config)
        command = worker_log_argv(command, destination)
        observer = observer_for(options.config, destination, reactor)
        service = build_service(options.config, reactor, observer, worker_command=command)
        service.handle_sigterm = True
        tune_when_running(reactor)
        return service
    except ConfigError as error:
        sys.stderr.write(f"{error}\n")
        raise SystemExit(2)
