"""Readiness probe for the local Kafka broker started by compose/kafka.sh.

A TCP connect is not enough: the socket opens before a KRaft broker has registered with its
controller. This probe sends real Metadata requests (aiokafka) until the broker answers with at
least one live broker, or the deadline passes.

Usage: python compose/wait_for_kafka.py 127.0.0.1:19092 [--timeout 90] [--coordinators]

A secured listener is probed with ``--security-protocol SASL_SSL --sasl-mechanism M
--sasl-username U --sasl-password-file F --ssl-cafile CA`` (or ``SSL`` / ``SASL_PLAINTEXT``):
the probe then connects over TLS, authenticates and asks for metadata on that one connection,
and a failure names its cause (an untrusted certificate, rejected credentials).

Exit codes: 0 ready, 1 not ready before the deadline, 2 aiokafka is not installed or the
options are unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT_S = 90.0
DEFAULT_INTERVAL_S = 0.25
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class Security:
    """How to reach a secured listener; the default is a plain one."""

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: str | None = None
    cafile: str | None = None

    def client_kwargs(self) -> dict[str, Any]:
        """aiokafka connection keyword arguments (empty for PLAINTEXT: aiokafka's defaults)."""
        if self.protocol == "PLAINTEXT":
            return {}
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if "SSL" in self.protocol.split("_"):
            kwargs["ssl_context"] = ssl.create_default_context(cafile=self.cafile)
        if self.protocol.startswith("SASL_"):
            kwargs.update(
                sasl_mechanism=self.mechanism,
                sasl_plain_username=self.username,
                sasl_plain_password=self.password,
            )
        return kwargs


async def probe_secured_once(bootstrap: str, request_timeout_s: float, security: Security) -> int:
    """Connect (TLS, SASL) to the first ``host:port`` and send one Metadata request on that
    connection; return how many brokers it reports.

    ``AIOKafkaClient.bootstrap`` would only say "Unable to bootstrap": a direct connection
    raises the cause itself (``ssl.SSLCertVerificationError``, ``SaslAuthenticationFailed``).
    """
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    conn = await create_conn(
        host,
        int(port),
        client_id="trail-wait-for-kafka",
        request_timeout_ms=max(1, int(request_timeout_s * 1000)),
        **security.client_kwargs(),
    )
    try:
        metadata = await conn.send(MetadataRequest([]))
        return len(metadata.brokers)
    finally:
        conn.close()


async def probe_once(
    bootstrap: str, request_timeout_s: float, security: Security | None = None
) -> int:
    """Send one Metadata request; return how many brokers the cluster reports (0 if none).

    Raises whatever aiokafka raises when the broker cannot be reached or does not answer.
    """
    from aiokafka.client import AIOKafkaClient

    if security is not None and security.protocol != "PLAINTEXT":
        return await probe_secured_once(bootstrap, request_timeout_s, security)

    client = AIOKafkaClient(
        bootstrap_servers=bootstrap,
        client_id="trail-wait-for-kafka",
        request_timeout_ms=max(1, int(request_timeout_s * 1000)),
        retry_backoff_ms=50,
    )
    try:
        # bootstrap() connects and sends MetadataRequest; it raises if no host answered.
        await client.bootstrap()
        return len(client.cluster.brokers())
    finally:
        await client.close()


async def find_coordinators_once(
    bootstrap: str, request_timeout_s: float, security: Security | None = None
) -> None:
    """Ask for a group and a transaction coordinator; raises until the broker has one.

    The first FindCoordinator request makes the broker create ``__consumer_offsets`` and
    ``__transaction_state``; doing it here means the first consumer group of a test or worker
    does not wait for (and log) GROUP_COORDINATOR_NOT_AVAILABLE.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="trail-wait-for-kafka",
        request_timeout_ms=max(1, int(request_timeout_s * 1000)),
        **(security or Security()).client_kwargs(),
    )
    await admin.start()
    try:
        await admin.find_coordinator("trail-wait-for-kafka", coordinator_type=0)
        await admin.find_coordinator("trail-wait-for-kafka", coordinator_type=1)
    finally:
        await admin.close()


async def attempt_once(
    bootstrap: str, timeout_s: float, coordinators: bool, security: Security | None = None
) -> str | None:
    """One readiness check within ``timeout_s``; returns None when ready, else the reason."""
    request_timeout_s = min(5.0, timeout_s)
    try:
        brokers = await asyncio.wait_for(
            probe_once(bootstrap, request_timeout_s, security), timeout_s
        )
    except Exception as exc:  # any failure means "not ready yet"
        return f"metadata request failed: {type(exc).__name__}: {exc}"
    if brokers == 0:
        return "metadata answered with no brokers"
    if coordinators:
        try:
            await asyncio.wait_for(
                find_coordinators_once(bootstrap, request_timeout_s, security), timeout_s
            )
        except Exception as exc:  # coordinator topics still being created
            return f"no coordinator yet: {type(exc).__name__}: {exc}"
    return None


async def wait_for_kafka(
    bootstrap: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = DEFAULT_INTERVAL_S,
    verbose: bool = False,
    coordinators: bool = False,
    security: Security | None = None,
) -> bool:
    """Poll ``bootstrap`` with Metadata requests until it reports a broker or time runs out.

    With ``coordinators``, also wait until group and transaction coordinators are available;
    with ``security``, connect as it says.
    """
    deadline = time.monotonic() + timeout_s
    last_error = "no attempt made"
    attempts = 0
    while (remaining := deadline - time.monotonic()) > 0:
        attempts += 1
        error = await attempt_once(bootstrap, max(0.1, remaining), coordinators, security)
        if error is None:
            if verbose:
                print(f"kafka at {bootstrap} ready after {attempts} attempt(s)", file=sys.stderr)
            return True
        last_error = error
        if verbose:
            print(f"kafka at {bootstrap} not ready: {last_error}", file=sys.stderr)
        await asyncio.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))
    print(
        f"kafka at {bootstrap} not ready after {timeout_s:g}s ({attempts} attempt(s)); "
        f"last error: {last_error}",
        file=sys.stderr,
    )
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("bootstrap", help="host:port of the broker, e.g. 127.0.0.1:19092")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, help="seconds")
    parser.add_argument(
        "--coordinators",
        action="store_true",
        help="also wait for group and transaction coordinators (creates their topics)",
    )
    parser.add_argument("--security-protocol", choices=PROTOCOLS, default="PLAINTEXT")
    parser.add_argument("--sasl-mechanism", choices=MECHANISMS, default=None)
    parser.add_argument("--sasl-username", default=None)
    parser.add_argument(
        "--sasl-password-file",
        type=Path,
        default=None,
        help="file holding the password (not an argument: others can read those in ps)",
    )
    parser.add_argument("--ssl-cafile", default=None, help="PEM CA bundle that signed the broker")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        security = _security(args)
    except (OSError, ValueError) as exc:
        print(f"wait_for_kafka: {exc}", file=sys.stderr)
        return 2

    try:
        import aiokafka  # noqa: F401
    except ImportError:
        print(
            "wait_for_kafka: aiokafka is not installed in this Python "
            f"({sys.executable}); install the project with the [kafka] extra",
            file=sys.stderr,
        )
        return 2

    # aiokafka logs every refused connection at ERROR level; while polling that is expected.
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.WARNING if args.verbose else logging.CRITICAL)

    ok = asyncio.run(
        wait_for_kafka(
            args.bootstrap,
            args.timeout,
            args.interval,
            args.verbose,
            args.coordinators,
            security,
        )
    )
    return 0 if ok else 1


def _security(args: argparse.Namespace) -> Security:
    """The ``--security-protocol`` group of options, checked."""
    protocol = args.security_protocol
    password = None
    if args.sasl_password_file is not None:
        password = args.sasl_password_file.read_text(encoding="utf-8").strip()
    if protocol.startswith("SASL_") and not (args.sasl_mechanism and args.sasl_username):
        raise ValueError(f"{protocol} needs --sasl-mechanism and --sasl-username")
    if protocol.startswith("SASL_") and password is None:
        raise ValueError(f"{protocol} needs --sasl-password-file")
    security = Security(
        protocol, args.sasl_mechanism, args.sasl_username, password, args.ssl_cafile
    )
    security.client_kwargs()  # an unreadable CA file fails here, once, not at every attempt
    return security


if __name__ == "__main__":
    sys.exit(main())
