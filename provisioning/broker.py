"""Mosquitto configuration that matches our topics and never silently drops a queued message.

One generator serves the demo, the tests and production: what is tested is what ships.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path


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

    def render(self) -> str:
        lines = [
            "# Written by resonera-provision broker-config; edit the generator, not this file.",
            "per_listener_settings false",
            f"user {getpass.getuser()}",
            f"listener {self.port} {self.bind}",
            "protocol mqtt",
            "allow_anonymous true",
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

    def write(self, path: Path) -> Path:
        """Write atomically: a half-written broker config must never be left behind."""
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.render())
        tmp.replace(path)
        return path
