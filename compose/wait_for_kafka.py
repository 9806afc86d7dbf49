"""Readiness probe for the local Kafka broker started by compose/kafka.sh.

A TCP connect is not enough: the socket opens before a KRaft broker has registered with its
controller. This probe sends real Metadata requests (aiokafka) until the broker answers with at
least one live broker, or the deadline passes.

Usage: python compose/wait_for_kafka.py 127.0.0.1:19092 [--timeout 90] [--coordinators]
Exit codes: 0 ready, 1 not ready before the deadline, 2 aiokafka is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

DEFAULT_TIMEOUT_S = 90.0
DEFAULT_INTERVAL_S = 0.25


async def probe_once(bootstrap: str, request_timeout_s: float) -> int:
    """Send one Metadata request; return how many brokers the cluster reports (0 if none).

    Raises whatever aiokafka raises when the broker cannot be reached or does not answer.
    """
    from aiokafka.client import AIOKafkaClient

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


async def find_coordinators_once(bootstrap: str, request_timeout_s: float) -> None:
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
    )
    await admin.start()
    try:
        await admin.find_coordinator("trail-wait-for-kafka", coordinator_type=0)
        await admin.find_coordinator("trail-wait-for-kafka", coordinator_type=1)
    finally:
        await admin.close()


async def attempt_once(bootstrap: str, timeout_s: float, coordinators: bool) -> str | None:
    """One readiness check within ``timeout_s``; returns None when ready, else the reason."""
    request_timeout_s = min(5.0, timeout_s)
    try:
        brokers = await asyncio.wait_for(probe_once(bootstrap, request_timeout_s), timeout_s)
    except Exception as exc:  # any failure means "not ready yet"
        return f"metadata request failed: {type(exc).__name__}: {exc}"
    if brokers == 0:
        return "metadata answered with no brokers"
    if coordinators:
        try:
            await asyncio.wait_for(find_coordinators_once(bootstrap, request_timeout_s), timeout_s)
        except Exception as exc:  # coordinator topics still being created
            return f"no coordinator yet: {type(exc).__name__}: {exc}"
    return None


async def wait_for_kafka(
    bootstrap: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = DEFAULT_INTERVAL_S,
    verbose: bool = False,
    coordinators: bool = False,
) -> bool:
    """Poll ``bootstrap`` with Metadata requests until it reports a broker or time runs out.

    With ``coordinators``, also wait until group and transaction coordinators are available.
    """
    deadline = time.monotonic() + timeout_s
    last_error = "no attempt made"
    attempts = 0
    while (remaining := deadline - time.monotonic()) > 0:
        attempts += 1
        error = await attempt_once(bootstrap, max(0.1, remaining), coordinators)
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
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

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
        wait_for_kafka(args.bootstrap, args.timeout, args.interval, args.verbose, args.coordinators)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
