"""Kafka connection options and topics from :class:`~streams.settings.Settings`, for every
TRAIL client (the worker, ``trail produce``/``tail``, the widget, the benchmark).

The one place that turns the ``TRAIL_*`` connection settings into what the clients take:

- :func:`client_options`: aiokafka keyword arguments (producers, consumers, admin clients);
- :func:`faust_credentials`: the Faust app's ``broker_credentials``;
- :func:`ssl_context`: the TLS context of both (the system's CAs, or ``TRAIL_SSL_CAFILE``);
- :func:`verify_connection`: one bounded connection attempt with these options, so that a
  rejected password or an untrusted certificate stops a command with one clear message.
  Without it aiokafka only says "Unable to bootstrap from [...]" (the cause goes to a log
  line), and a client that retries on errors (the widget's source) would retry for ever;
- :func:`ensure_topics` creates the topics the app needs (:class:`TopicSpec`; the compacted
  catalog topic's spec is :func:`items_topic_spec`).

=================  ===========================================================================
protocol           uses
=================  ===========================================================================
PLAINTEXT          nothing else: TLS and SASL settings are refused, not ignored
SSL                TLS, the broker's certificate checked against ``TRAIL_SSL_CAFILE`` (or the
                   system's CAs) and its host name
SASL_PLAINTEXT     SASL: ``TRAIL_SASL_MECHANISM`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512),
                   ``TRAIL_SASL_USERNAME``, ``TRAIL_SASL_PASSWORD``; no TLS
SASL_SSL           both
=================  ===========================================================================

What is refused is the *protocol's* need, whatever else is set: a SASL protocol without a
mechanism or credentials, SASL settings on a protocol without SASL, a CA file without TLS,
a CA file that cannot be read. Each is a :class:`KafkaSecurityError` (a ``ValueError``, which
the ``trail`` command line prints as one ``error:`` line and exit status 2).

>>> from streams.settings import Settings
>>> sorted(client_options(Settings(broker="k:9092")))
['bootstrap_servers', 'security_protocol']
>>> client_options(Settings(security_protocol="SASL_PLAINTEXT", sasl_username="u"))
Traceback (most recent call last):
...
streams.kafka.options.KafkaSecurityError: TRAIL_SECURITY_PROTOCOL=SASL_PLAINTEXT needs \
TRAIL_SASL_MECHANISM (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.settings import Settings

#: How long :func:`verify_connection` waits for one broker's TLS handshake and SASL exchange.
VERIFY_TIMEOUT_S = 20.0

_MECHANISMS = "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"

log = logging.getLogger("trail.kafka")


class KafkaSecurityError(ValueError):
    """Kafka connection settings that cannot work, or a broker that refused them.

    Retrying does not help: the message says which setting to change.
    """


def _uses_tls(settings: Settings) -> bool:
    return settings.security_protocol in ("SSL", "SASL_SSL")


def _uses_sasl(settings: Settings) -> bool:
    return settings.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def check_settings(settings: Settings) -> None:
    """Raise :class:`KafkaSecurityError` if the connection settings contradict each other.

    Parameters
    ----------
    settings
        TRAIL settings; only ``security_protocol``, ``sasl_*`` and ``ssl_cafile`` are read.
    """
    protocol = f"TRAIL_SECURITY_PROTOCOL={settings.security_protocol}"
    if _uses_sasl(settings):
        if settings.sasl_mechanism is None:
            raise KafkaSecurityError(f"{protocol} needs TRAIL_SASL_MECHANISM ({_MECHANISMS})")
        missing = [
            name
            for name, value in (
                ("TRAIL_SASL_USERNAME", settings.sasl_username),
                ("TRAIL_SASL_PASSWORD", settings.sasl_password),
            )
            if not value
        ]
        if missing:
            raise KafkaSecurityError(f"{protocol} needs {' and '.join(missing)}")
    else:
        given = [
            name
            for name, value in (
                ("TRAIL_SASL_MECHANISM", settings.sasl_mechanism),
                ("TRAIL_SASL_USERNAME", settings.sasl_username),
                ("TRAIL_SASL_PASSWORD", settings.sasl_password),
            )
            if value is not None
        ]
        if given:
            # Ignoring them would connect without the authentication the user asked for.
            raise KafkaSecurityError(
                f"{', '.join(given)} set, but {protocol} does not use SASL: "
                "use SASL_SSL (or SASL_PLAINTEXT), or unset them"
            )
    if settings.ssl_cafile is not None and not _uses_tls(settings):
        raise KafkaSecurityError(
            f"TRAIL_SSL_CAFILE set, but {protocol} does not use TLS: use SSL or SASL_SSL"
        )


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of ``settings`` (None without TLS).

    It verifies the broker's certificate chain (against ``TRAIL_SSL_CAFILE`` when set, else
    the system's CAs) and its host name, as ``ssl.create_default_context`` does.

    Raises
    ------
    KafkaSecurityError
        If the settings contradict each other or the CA file cannot be used.
    """
    check_settings(settings)
    if not _uses_tls(settings):
        return None
    cafile = settings.ssl_cafile
    try:
        return ssl.create_default_context(cafile=str(cafile) if cafile is not None else None)
    except FileNotFoundError:
        raise KafkaSecurityError(f"TRAIL_SSL_CAFILE={cafile}: no such file") from None
    except ssl.SSLError as exc:
        raise KafkaSecurityError(
            f"TRAIL_SSL_CAFILE={cafile} holds no usable PEM certificate ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise KafkaSecurityError(
            f"TRAIL_SSL_CAFILE={cafile} cannot be read: {exc.strerror or exc}"
        ) from None


def client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments common to producers, consumers and admin clients.

    Parameters
    ----------
    settings
        TRAIL settings: ``broker``, ``security_protocol``, ``sasl_*``, ``ssl_cafile``.

    Returns
    -------
    dict
        ``bootstrap_servers`` and ``security_protocol``, plus ``ssl_context`` with TLS and
        ``sasl_mechanism``, ``sasl_plain_username``, ``sasl_plain_password`` with SASL (aiokafka
        takes the SCRAM credentials under the ``sasl_plain_*`` names too).

    Raises
    ------
    KafkaSecurityError
        If the settings contradict each other or the CA file cannot be used.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.broker,
        "security_protocol": settings.security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if _uses_sasl(settings):
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password
    return options


def faust_credentials(settings: Settings) -> Any:
    """The Faust app's ``broker_credentials`` for ``settings`` (None for PLAINTEXT).

    Faust turns them into the same aiokafka options as :func:`client_options`: its
    ``SASLCredentials`` means SASL_SSL exactly when it is given an SSL context, so the
    context is always passed with SASL_SSL (the system's CAs when no CA file is set).

    Raises
    ------
    KafkaSecurityError
        If the settings contradict each other or the CA file cannot be used.
    """
    context = ssl_context(settings)
    if settings.security_protocol == "PLAINTEXT":
        return None
    import faust

    if not _uses_sasl(settings):
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password,
        ssl_context=context,
        mechanism=settings.sasl_mechanism,
    )


def _hosts(broker: str) -> list[tuple[str, int]]:
    hosts = []
    for server in broker.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            raise KafkaSecurityError(f"TRAIL_BROKER={broker!r}: expected host:port[,host:port]")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def _refused(settings: Settings, where: str, exc: BaseException) -> KafkaSecurityError:
    """The clear error for a failed handshake with a broker that accepted the TCP connection."""
    from aiokafka import errors

    protocol = settings.security_protocol
    if isinstance(exc, ssl.SSLCertVerificationError):
        trust = (
            f"TRAIL_SSL_CAFILE={settings.ssl_cafile}"
            if settings.ssl_cafile is not None
            else "the system's CAs (TRAIL_SSL_CAFILE is not set)"
        )
        return KafkaSecurityError(
            f"the TLS certificate of the Kafka broker at {where} is not trusted: "
            f"{exc.verify_message or exc.reason}; checked against {trust}. Set "
            "TRAIL_SSL_CAFILE to the PEM file of the CA that signed the broker's certificate"
        )
    if isinstance(exc, ssl.SSLError):
        return KafkaSecurityError(
            f"TLS handshake with the Kafka broker at {where} failed ({exc.reason or exc}): "
            f"is it the broker's {protocol} listener?"
        )
    if isinstance(exc, errors.SaslAuthenticationFailed):
        return KafkaSecurityError(
            f"the Kafka broker at {where} rejected user {settings.sasl_username!r} "
            f"({settings.sasl_mechanism}): check TRAIL_SASL_USERNAME, TRAIL_SASL_PASSWORD and "
            "TRAIL_SASL_MECHANISM"
        )
    if isinstance(exc, errors.UnsupportedSaslMechanismError | errors.IllegalSaslStateError):
        # aiokafka puts either the enabled mechanisms or its connection object in the message.
        detail = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
        return KafkaSecurityError(
            f"the Kafka broker at {where} does not accept TRAIL_SASL_MECHANISM="
            f"{settings.sasl_mechanism}{f' ({detail})' if detail else ''}: use one it enables"
        )
    if isinstance(exc, TimeoutError):
        return KafkaSecurityError(
            f"the Kafka broker at {where} did not complete the {protocol} handshake: "
            f"is it the broker's {protocol} listener?"
        )
    # The socket opened, then the broker closed or reset it: a listener of another protocol
    # (TLS to a plain port, no SASL on a SASL port, ...).
    return KafkaSecurityError(
        f"the Kafka broker at {where} closed the connection during the {protocol} handshake "
        f"({type(exc).__name__}): is it the broker's {protocol} listener?"
    )


async def verify_connection(settings: Settings, timeout_s: float = VERIFY_TIMEOUT_S) -> None:
    """Check that a secured broker accepts these settings, before any client starts.

    Opens one connection (TLS handshake, SASL authentication, one Metadata request) to the
    first bootstrap server that accepts a TCP connection, then closes it. A broker that cannot
    be reached at all is left to the clients (they report it, or wait for it, as they always
    did); PLAINTEXT is not checked at all.

    Parameters
    ----------
    settings
        TRAIL settings.
    timeout_s
        Upper bound for each server's handshake and authentication.

    Raises
    ------
    KafkaSecurityError
        The settings contradict each other, the broker's certificate is not trusted, the
        broker rejected the credentials or the mechanism, or it did not finish the handshake
        within ``timeout_s``; the message says which setting to change.
    """
    options = client_options(settings)
    if settings.security_protocol == "PLAINTEXT":
        return
    # The clients take the bootstrap list; one connection takes a host and a port.
    del options["bootstrap_servers"]
    for host, port in _hosts(settings.broker):
        where = f"{host}:{port}"
        if not await _reachable(host, port, timeout_s):
            continue  # the clients report it (or wait for it) if no server answers
        try:
            await asyncio.wait_for(_handshake(host, port, options), timeout_s)
        except Exception as exc:
            raise _refused(settings, where, exc) from None
        return


async def _handshake(host: str, port: int, options: dict[str, Any]) -> None:
    """Connect (TLS handshake, SASL authentication) and ask for metadata: a SASL listener
    answers ApiVersions before authentication, so only a real request proves access."""
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    conn = await create_conn(host, port, client_id="trail-verify", **options)
    try:
        await conn.send(MetadataRequest([]))
    finally:
        conn.close()


async def _reachable(host: str, port: int, timeout_s: float) -> bool:
    """Whether a plain TCP connection opens: it tells "no broker there" (not our concern)
    from "a broker that does not finish the handshake" (a wrong protocol or port)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError) as exc:
        log.debug("%s:%d not reachable: %r", host, port, exc)
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass  # closing a socket nobody wrote to: nothing to report
    return True


# ------------------------------------------------------------------------------ topics
@dataclass(frozen=True)
class TopicSpec:
    """A topic the app needs: its name, partition count and topic configs (created with them
    when missing; an existing topic is left as it is)."""

    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


async def ensure_topics(settings: Settings, specs: Sequence[TopicSpec]) -> dict[str, int]:
    """Create missing topics; return every topic's partition count (existing ones as they are).

    Concurrent creators (two workers starting at once) are fine: "already exists" is success.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=30_000)
    await admin.start()
    try:
        # list_topics, not describe: a Metadata request for a missing topic may auto-create it
        # with the broker's defaults.
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        name=s.name,
                        num_partitions=s.partitions,
                        replication_factor=settings.replication_factor,
                        topic_configs=dict(s.config),
                    )
                    for s in missing
                ]
            )
            for topic, code, *rest in response.topic_errors:
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS
                    raise RuntimeError(f"could not create topic {topic!r}: error {code} {rest}")
        deadline = asyncio.get_running_loop().time() + 30.0
        while True:
            counts = await _partition_counts(admin, [s.name for s in specs])
            if len(counts) == len(specs):
                return counts
            if asyncio.get_running_loop().time() > deadline:
                absent = sorted({s.name for s in specs} - set(counts))
                raise TimeoutError(f"topics {absent} have no leaders after 30 s")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def _partition_counts(admin: Any, names: Iterable[str]) -> dict[str, int]:
    """Partition counts of the topics that exist and have a leader for every partition."""
    counts: dict[str, int] = {}
    for described in await admin.describe_topics(list(names)):
        partitions = described.get("partitions") or []
        if described.get("error_code") == 0 and partitions:
            if all(p.get("leader", -1) >= 0 for p in partitions):
                counts[described["topic"]] = len(partitions)
    return counts


def items_topic_spec(name: str, partitions: int) -> TopicSpec:
    """The catalog topic: compacted (the last value of each item id is kept, a null value
    removes it), with as many partitions as the events topic."""
    return TopicSpec(name, partitions, {"cleanup.policy": "compact"})
