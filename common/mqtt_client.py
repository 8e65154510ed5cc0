"""The one place that turns ``MqttSettings`` into a connected paho-mqtt 2.x client.

Device and server both use it, so protocol version, TLS, session expiry and error wording stay the
same on both sides. paho is imported here only: the codecs in ``common`` never touch it.
"""

from __future__ import annotations

import contextlib
import ssl

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from resonera.common.errors import ResoneraError
from resonera.common.settings import MqttSettings


class BrokerUnavailable(ResoneraError):
    """The broker cannot be reached or refused us."""


def build_client(
    settings: MqttSettings,
    client_id: str,
    *,
    will: tuple[str, bytes] | None = None,
    persistent_session: bool = True,
) -> paho.Client:
    """A configured, not yet connected client. ``will`` is (topic, payload), published retained.

    ``persistent_session`` matters for MQTT 3.1.1 only (``clean_session``); under MQTT 5 the
    equivalent is ``clean_start`` and the session expiry, given to ``connect``.
    """
    protocol = paho.MQTTv5 if settings.protocol == "5" else paho.MQTTv311
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        # MQTT 3.1.1 needs clean_session here; for MQTT 5 clean_start goes to connect().
        clean_session=None if protocol == paho.MQTTv5 else not persistent_session,
    )
    if settings.tls:
        client.tls_set(
            ca_certs=str(settings.ca_file),
            certfile=str(settings.cert_file),
            keyfile=str(settings.key_file),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    if settings.username is not None:
        password = settings.password.get_secret_value() if settings.password else None
        client.username_pw_set(settings.username, password)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    # paho's internal queue is memory only; our outbox is the durable one, so keep this bounded.
    client.max_queued_messages_set(10_000)
    client.max_inflight_messages_set(100)
    return client


def _connect_args(
    settings: MqttSettings,
    clean_start: bool,
    session_expiry_s: int,
    receive_maximum: int | None = None,
) -> tuple[Properties | None, dict[str, object]]:
    if settings.protocol != "5":
        return None, {}
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = session_expiry_s
    if receive_maximum is not None:
        properties.ReceiveMaximum = receive_maximum
    return properties, {"clean_start": clean_start}


def connect_in_background(
    client: paho.Client, settings: MqttSettings, *, clean_start: bool, session_expiry_s: int
) -> None:
    """Let paho's network loop connect, and keep reconnecting, on its own (call ``loop_start``)."""
    properties, kwargs = _connect_args(settings, clean_start, session_expiry_s)
    client.connect_async(
        settings.host,
        settings.port,
        keepalive=settings.keepalive_s,
        properties=properties,
        **kwargs,  # type: ignore[arg-type]
    )


def connect(
    client: paho.Client,
    settings: MqttSettings,
    *,
    clean_start: bool,
    session_expiry_s: int,
    receive_maximum: int | None = None,
) -> None:
    """Connect (blocking for the TCP/TLS part); raise ``BrokerUnavailable`` with one clear line.

    ``receive_maximum`` (MQTT 5) caps the QoS 1 messages the broker sends before we acknowledge
    them: with manual acks, that is the receiver's flow control (MQTT 3.1.1: the broker's own
    ``max_inflight_messages``)."""
    properties, kwargs = _connect_args(settings, clean_start, session_expiry_s, receive_maximum)
    try:
        client.connect(
            settings.host,
            settings.port,
            keepalive=settings.keepalive_s,
            properties=properties,
            **kwargs,  # type: ignore[arg-type]
        )
    except ConnectionRefusedError:
        raise BrokerUnavailable(
            f"no MQTT broker at {settings.host}:{settings.port} (connection refused)"
        ) from None
    except ssl.SSLError as exc:
        raise BrokerUnavailable(
            f"TLS with the MQTT broker at {settings.host}:{settings.port} failed: {exc.reason}"
        ) from None
    except TimeoutError:
        raise BrokerUnavailable(
            f"MQTT broker at {settings.host}:{settings.port} timed out"
        ) from None
    except OSError as exc:
        raise BrokerUnavailable(
            f"cannot reach MQTT broker at {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from None


def stop_loop(client: paho.Client) -> None:
    """Stop ``client``'s network thread (``loop_start``) and wait for it.

    paho 2.x's ``loop_stop`` checks its thread, then joins it, and the thread clears that attribute
    when it ends by itself (after a disconnect, or a connection the broker refused): ending between
    the two, it raises AttributeError on a thread that is already stopped, which is what we asked."""
    with contextlib.suppress(AttributeError):
        client.loop_stop()
