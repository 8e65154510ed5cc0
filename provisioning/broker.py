"""Mosquitto configuration that matches our topics and never silently drops a queued message.

One generator serves the demo, the tests and production: what is tested is what ships.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path

from resonera.common import topics
from resonera.server.fleet_ca import FleetCA

#: The server's MQTT identity (its certificate's CN and so its broker username).
SERVER_IDENTITY = topics.service_identity("resonera-server")
#: The broker's own TLS certificate.
BROKER_IDENTITY = topics.service_identity("resonera-broker")


def render_acl(server_identity: str = SERVER_IDENTITY) -> str:
    """Devices touch only their own topics (``%u`` is the certificate CN); the server reads every
    device's up-topics and status and writes acks and desired states. The server is named by its
    service identity (``service:...``), which no device certificate can carry."""
    prefix = topics.PREFIX
    return "\n".join(
        [
            "# Written by resonera-provision broker-config.",
            f"user {server_identity}",
            f"topic read {prefix}/+/up/#",
            f"topic read {prefix}/+/status",
            f"topic readwrite {prefix}/+/desired",
            f"topic write {prefix}/+/ack",
            "",
            "# every certificate identity: its own topics only",
            f"pattern write {prefix}/%u/up/#",
            f"pattern readwrite {prefix}/%u/status",
            f"pattern read {prefix}/%u/desired",
            f"pattern read {prefix}/%u/ack",
            "",
        ]
    )


@dataclass(frozen=True, kw_only=True)
class BrokerTls:
    """A TLS listener that requires a client certificate from the fleet CA and takes its CN as the
    MQTT username; ``crl_file`` makes revoked certificates fail the handshake."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    crl_file: Path | None = None
    acl_file: Path


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    """Options of a single mosquitto node.

    ``persistence_dir`` keeps queued QoS 1 messages and retained state across broker restarts.
    """

    port: int
    bind: str = "127.0.0.1"
    persistence_dir: Path | None = None
    log_file: Path | None = None
    #: Per-client queue bound. mosquitto's default (1000) drops QoS 1 messages for a busy subscriber
    #: without telling anyone; 0 means unbounded in messages, so the byte bound below is what limits.
    max_queued_messages: int = 0
    max_queued_bytes: int = 256 * 1024 * 1024
    max_inflight_messages: int = 100
    tls: BrokerTls | None = None

    def render(self) -> str:
        lines = [
            "# Written by resonera-provision broker-config; edit the generator, not this file.",
            "per_listener_settings false",
            f"user {getpass.getuser()}",
            f"listener {self.port} {self.bind}",
            "protocol mqtt",
            *self._auth_lines(),
            f"max_queued_messages {self.max_queued_messages}",
            f"max_queued_bytes {self.max_queued_bytes}",
            f"max_inflight_messages {self.max_inflight_messages}",
            "max_packet_size 1048576",
            "persistent_client_expiration 14d",
        ]
        if self.persistence_dir is not None:
            lines += [
                "persistence true",
                f"persistence_location {self.persistence_dir}/",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        if self.log_file is not None:
            lines += [f"log_dest file {self.log_file}", "log_type error", "log_type warning"]
        else:
            lines += ["log_dest stderr", "log_type error", "log_type warning"]
        return "\n".join(lines) + "\n"

    def _auth_lines(self) -> list[str]:
        if self.tls is None:
            return ["allow_anonymous true"]
        lines = [
            f"cafile {self.tls.ca_file}",
            f"certfile {self.tls.cert_file}",
            f"keyfile {self.tls.key_file}",
            "tls_version tlsv1.2",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
            f"acl_file {self.tls.acl_file}",
        ]
        if self.tls.crl_file is not None:
            lines.append(f"crlfile {self.tls.crl_file}")
        return lines

    def write(self, path: Path) -> Path:
        """Write atomically: a half-written broker config must never be left behind."""
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.render())
        tmp.replace(path)
        return path


def provision_broker(
    ca: FleetCA,
    directory: Path,
    passphrase: bytes,
    *,
    port: int,
    bind: str = "127.0.0.1",
    server_names: tuple[str, ...] = ("127.0.0.1", "localhost"),
    persistence_dir: Path | None = None,
    log_file: Path | None = None,
    issuing: FleetCA | None = None,
) -> Path:
    """Write everything a TLS mosquitto needs into ``directory``: its key and certificate from the
    fleet CA, the CA certificate, the current CRL, the ACL and the configuration; return the config.

    With an ``issuing`` CA (two tiers) the broker trusts its chain and reads its CRL: mosquitto checks
    the CRL of a client certificate's own issuer only, so every client (devices and the server's
    identity) must then have a certificate from that issuing CA."""
    directory.mkdir(parents=True, exist_ok=True)
    clients = issuing or ca
    ca.issue_service(
        BROKER_IDENTITY,
        directory / "broker.key",
        directory / "broker.crt",
        passphrase,
        server_names=list(server_names),
        client=False,
    )
    acl = directory / "acl"
    acl.write_text(render_acl())
    config = BrokerConfig(
        port=port,
        bind=bind,
        persistence_dir=persistence_dir,
        log_file=log_file,
        tls=BrokerTls(
            ca_file=clients.chain_path,
            cert_file=directory / "broker.crt",
            key_file=directory / "broker.key",
            crl_file=clients.crl_path,
            acl_file=acl,
        ),
    )
    return config.write(directory / "mosquitto.conf")
