"""Running the server in this process: API (uvicorn in a thread) and/or ingest consumer.

The CLI, the demo and end-to-end tests all start the server through ``ServerProcess``, so what the
tests run is what ships. The HTTP socket is bound before anything else starts, which turns a port in
use into one clear error and lets ``http_port = 0`` pick a free port.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Final

import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from resonera.common.clock import Clock, utc_now
from resonera.common.errors import ConfigError, ResoneraError
from resonera.server.app import API_PREFIX, create_app
from resonera.server.db import make_engine, migrate, require_current_schema
from resonera.server.desired import DesiredPublisher, MqttPublisher
from resonera.server.fleet_ca import CAError, FleetCA
from resonera.server.ingest_mqtt import IngestConsumer
from resonera.server.settings import ServerSettings
from resonera.server.tls_peer import PeerCertificateProtocol

log = logging.getLogger(__name__)

START_TIMEOUT_S: Final = 15.0
BACKLOG: Final = 2048


#: uvicorn's logger of one line per request ("client - \"GET /path?query HTTP/1.1\" 200").
ACCESS_LOGGER: Final = "uvicorn.access"


class QueryStringDropped(logging.Filter):
    """Drops the query string from uvicorn's access-log lines: a query may carry patient data
    (a name searched for, a date), and the log goes to the journal, outside the audit's care.
    The path stays (ids only: no name is ever part of a path). Lines of another shape pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], args[2].split("?", 1)[0], *args[3:])
        return True


def drop_query_strings_from_access_log() -> None:
    """Install ``QueryStringDropped`` on uvicorn's access logger (once, however often called):
    every place that runs the server's uvicorn calls this first."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, QueryStringDropped) for f in logger.filters):
        logger.addFilter(QueryStringDropped())


class PortInUseError(ResoneraError):
    """The HTTP port is taken by another process."""


def bind_http(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); ``PortInUseError`` or ``ConfigError`` if not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"http_host {host!r} cannot be resolved: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(f"port {port} on {host} is already in use") from None
        if exc.errno == errno.EACCES:
            raise PortInUseError(
                f"port {port} on {host} needs privileges (use a port above 1023)"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def client_ca_file(settings: ServerSettings) -> Path | None:
    """The CAs a client certificate is verified against: ``tls_client_ca_file``, else the issuing
    CA's chain when this server enrolls devices, else none (no client certificate is asked for)."""
    if settings.tls_client_ca_file is not None:
        return settings.tls_client_ca_file
    folder = settings.enrollment.issuing_ca_dir
    if folder is None:
        return None
    try:
        return FleetCA(folder).chain_path
    except CAError as exc:
        raise ConfigError(f"enrollment.issuing_ca_dir: {exc}") from None


class ServerProcess:
    """The server's parts running in this process; ``start()``, then ``stop()`` (idempotent), or
    ``with ServerProcess(settings) as server:`` (starts unless started, stops at the end).

    ``settings`` must pass ``checked_for_start`` when ``api`` is on (it is called here). ``engine``
    may be given (tests share one); otherwise it is made from ``settings.database_url`` and
    disposed of on ``stop()``. The database must be at the newest schema revision
    (``SchemaBehindError`` otherwise) unless ``migrate`` is true; by default, demo mode migrates.
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        api: bool = True,
        ingest: bool = True,
        engine: Engine | None = None,
        migrate: bool | None = None,
        publisher: DesiredPublisher | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings.checked_for_start() if api else settings
        self._api = api
        self._ingest = ingest
        self._migrate = settings.demo if migrate is None else migrate
        self._publisher = publisher
        self._clock = clock
        self._own_publisher = False
        self._own_engine = engine is None
        self._engine = engine
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.consumer: IngestConsumer | None = None
        self.port: int | None = None
        self._running = False

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("ServerProcess is not started")
        return self._engine

    def __enter__(self) -> ServerProcess:
        return self if self._running else self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http(s)://host:port`` of the API (after ``start()``)."""
        host = self.settings.http_host
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if self.settings.tls_cert_file is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.url + API_PREFIX

    def start(self, timeout_s: float = START_TIMEOUT_S) -> ServerProcess:
        """Bind the port, open the database, start ingest, then the API; undo all on failure."""
        try:
            if self._api:
                self._sock = bind_http(self.settings.http_host, self.settings.http_port)
                self.port = int(self._sock.getsockname()[1])
            if self._engine is None:
                self._engine = make_engine(self.settings.database_url)
            if self._migrate:
                migrate(self._engine)
            else:
                require_current_schema(self._engine)
            app = self._make_app() if self._api else None
            if self._ingest:
                # in one process with the API, ingest re-issues documents (a rollout paused) with
                # the API's own signer: a demo's throwaway key is the one its devices pinned
                desired = app.state.resonera.desired if app is not None else None
                self.consumer = IngestConsumer(self.settings, self._engine, desired=desired)
                self.consumer.start()
            if app is not None:
                self._start_api(app, timeout_s)
            self._running = True
        except BaseException:
            self.stop()
            raise
        return self

    def alive(self) -> bool:
        """True from a successful ``start()`` until ``stop()``, unless the API thread crashed."""
        return self._running and (self._thread is None or self._thread.is_alive())

    def stop(self) -> None:
        self._running = False
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.consumer is not None:
            self.consumer.stop()
        if self._own_publisher and self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        if self._own_engine and self._engine is not None:
            self._engine.dispose()

    def _make_app(self) -> FastAPI:
        if self._publisher is None:
            self._publisher = MqttPublisher(self.settings)
            self._own_publisher = True
        return create_app(self.settings, self.engine, publisher=self._publisher, clock=self._clock)

    def _start_api(self, app: FastAPI, timeout_s: float) -> None:
        assert self._sock is not None
        republished = app.state.resonera.desired.republish_all(self.engine)
        log.info("republished the desired state of %d device(s)", republished)
        tls = self.settings
        client_ca = client_ca_file(tls) if tls.tls_cert_file else None
        # Devices present their certificate to fetch background files (mutual TLS, optional:
        # people and scripts present none).
        mutual: dict[str, Any] = (
            {
                "ssl_cert_reqs": ssl.CERT_OPTIONAL,
                "ssl_ca_certs": str(client_ca),
                "http": PeerCertificateProtocol,
            }
            if client_ca is not None
            else {}
        )
        config = uvicorn.Config(
            app,
            log_config=None,
            timeout_graceful_shutdown=5,
            ssl_certfile=str(tls.tls_cert_file) if tls.tls_cert_file else None,
            ssl_keyfile=str(tls.tls_key_file) if tls.tls_key_file else None,
            **mutual,
        )
        drop_query_strings_from_access_log()
        server = uvicorn.Server(config)
        self._server = server
        sock = self._sock
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="resonera-api", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive():
                raise ResoneraError("the HTTP server stopped while starting (see the log above)")
            if time.monotonic() > deadline:
                raise ResoneraError(f"the HTTP server did not start within {timeout_s:.0f} s")
            time.sleep(0.01)


def run_server_in_thread(
    settings: ServerSettings,
    *,
    api: bool = True,
    ingest: bool = True,
    engine: Engine | None = None,
    migrate: bool | None = None,
    publisher: DesiredPublisher | None = None,
    clock: Clock = utc_now,
) -> ServerProcess:
    """Start the server in this process and return it running; call ``.stop()`` when done, or use
    the result in a ``with`` block. ``clock``: see ``create_app``."""
    server = ServerProcess(
        settings,
        api=api,
        ingest=ingest,
        engine=engine,
        migrate=migrate,
        publisher=publisher,
        clock=clock,
    )
    return server.start()
