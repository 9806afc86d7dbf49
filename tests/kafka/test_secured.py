"""A broker that only lets in who logs in over TLS: every TRAIL client, credentials from
``TRAIL_*`` settings, against the real SASL_SSL listener of ``compose/kafka.sh start --secure``
(fixture ``kafka_secured``; SCRAM-SHA-512 and PLAIN, a certificate made at start).

- The worker on both runtimes (aiokafka, Faust) scores exactly what the embedded replay does;
  ``trail produce`` writes and ``trail tail`` reads; the widget's Kafka source serves what is
  on the trending topic.
- A wrong password, an untrusted certificate or settings that cannot work stop every command
  with one ``error:`` line and exit status 2: no traceback, no retry loop, no hang.

The first tests need no broker: they pin what :mod:`streams.kafka.options` builds.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka_support import (
    REPO_ROOT,
    RUNTIMES,
    WorkerProcess,
    assert_same_updates,
    dedupe,
    expected_outputs,
    ml100k,
    score_updates,
    unique_settings,
)

from schemas import encode
from streams.kafka.options import (
    KafkaSecurityError,
    client_options,
    faust_credentials,
    verify_connection,
)
from streams.kafka_cli import event_values, produce_log
from streams.settings import Settings

kafka = pytest.mark.kafka

#: Upper bound for a command that must fail: it fails within seconds (most of them imports);
#: a hang (or a retry loop) runs into this and fails the test.
FAIL_WITHIN_S = 90.0
N_EVENTS = 6_000
#: Passwords of these tests (the broker's own is random, made at its start).
SOME_PASSWORD = "p"  # noqa: S105 - no broker checks it
WRONG_PASSWORD = "not-the-password"  # noqa: S105 - the broker must refuse it


def secured_settings(secured: Any, prefix: str, **overrides: Any) -> Settings:
    """Unique topics on the secured listener, logged in as its user; 1-day windows (the
    first N_EVENTS of ML-100K span nine days)."""
    env = secured.env(overrides.pop("mechanism", "SCRAM-SHA-512"))
    values: dict[str, Any] = {
        key.removeprefix("TRAIL_").lower(): value for key, value in env.items()
    }
    values["window"] = "1d"
    values.update(overrides)
    broker = values.pop("broker")
    return unique_settings(broker, prefix, **values)


#: The connection settings: a client gets only those the test gives it.
CONNECTION_VARIABLES = re.compile(r"TRAIL_(BROKER|SECURITY_PROTOCOL|SASL_.*|SSL_.*)")


def client_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without its connection settings, and ``env`` on top."""
    base = {k: v for k, v in os.environ.items() if not CONNECTION_VARIABLES.fullmatch(k)}
    return {**base, "PYTHONUNBUFFERED": "1", **env}


def trail(
    *args: str, env: dict[str, str], timeout: float = FAIL_WITHIN_S
) -> subprocess.CompletedProcess[str]:
    """``trail ARGS`` in a subprocess, its connection settings from ``env`` only."""
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        cwd=REPO_ROOT,
        env=client_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def read_all(settings: Settings, topic: str, idle_s: float = 2.0) -> list[Any]:
    """Every record of ``topic`` over the secured listener (until nothing new for idle_s)."""

    async def read() -> list[Any]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            topic, **client_options(settings), group_id=None, auto_offset_reset="earliest"
        )
        await consumer.start()
        records: list[Any] = []
        try:
            last = time.monotonic()
            while time.monotonic() - last < idle_s:
                batches = await consumer.getmany(timeout_ms=300, max_records=10_000)
                for batch in batches.values():
                    records.extend(batch)
                    last = time.monotonic() if batch else last
        finally:
            await consumer.stop()
        return records

    return asyncio.run(read())


async def _send(settings: Settings, records: list[tuple[str, bytes | None, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    try:
        for topic, key, value in records:
            await producer.send(topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def send(settings: Settings, records: list[tuple[str, bytes | None, bytes]]) -> None:
    asyncio.run(_send(settings, records))


def one_error(result: subprocess.CompletedProcess[str], *phrases: str) -> str:
    """Assert that a command failed with exit status 2 and exactly one ``error:`` line that
    says each phrase, and no traceback; return that line."""
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    assert len(errors) == 1, output
    for phrase in phrases:
        assert phrase in errors[0], output
    return errors[0]


# ------------------------------------------------------------------------------ no broker
def test_client_options_follow_the_protocol() -> None:
    """Each protocol gets what it needs and nothing else: TLS for SSL and SASL_SSL, SASL for
    the SASL protocols (the widget's own copy keyed SASL on the mechanism instead)."""
    plain = client_options(Settings(broker="k:1"))
    assert plain == {"bootstrap_servers": "k:1", "security_protocol": "PLAINTEXT"}

    tls = client_options(Settings(broker="k:1", security_protocol="SSL"))
    assert set(tls) == {"bootstrap_servers", "security_protocol", "ssl_context"}
    assert tls["ssl_context"].check_hostname
    assert tls["ssl_context"].verify_mode.name == "CERT_REQUIRED"

    sasl = client_options(
        Settings(
            broker="k:1",
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="u",
            sasl_password=SOME_PASSWORD,
        )
    )
    assert sasl == {
        "bootstrap_servers": "k:1",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "u",
        "sasl_plain_password": SOME_PASSWORD,
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": "p"},
            "TRAIL_SECURITY_PROTOCOL=SASL_SSL needs TRAIL_SASL_MECHANISM",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
            "needs TRAIL_SASL_PASSWORD",
        ),
        (
            {"security_protocol": "SSL", "sasl_mechanism": "PLAIN"},
            "TRAIL_SASL_MECHANISM set, but TRAIL_SECURITY_PROTOCOL=SSL does not use SASL",
        ),
        (
            {"ssl_cafile": "/etc/hostname"},
            "TRAIL_SSL_CAFILE set, but TRAIL_SECURITY_PROTOCOL=PLAINTEXT does not use TLS",
        ),
        (
            {"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"},
            "TRAIL_SSL_CAFILE=/nonexistent/ca.pem: no such file",
        ),
        (
            {"security_protocol": "SSL", "ssl_cafile": "/etc/hostname"},
            "TRAIL_SSL_CAFILE=/etc/hostname holds no usable PEM certificate",
        ),
    ],
)
def test_settings_that_cannot_work_are_refused_by_name(
    values: dict[str, str], message: str
) -> None:
    """Catches a builder that ignores a setting the protocol does not use (or lacks one it
    needs) and connects without the protection asked for, or fails later and vaguely."""
    settings = Settings(broker="k:1", **values)
    with pytest.raises(KafkaSecurityError, match=re.escape(message)):
        client_options(settings)
    with pytest.raises(KafkaSecurityError, match=re.escape(message)):
        faust_credentials(settings)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL", "SSL", "PLAINTEXT"])
def test_faust_credentials_are_the_same_options(protocol: str, mechanism: str) -> None:
    """Faust turns its credentials into exactly the aiokafka options the other clients get.

    Catches the old Faust builder, which refused SCRAM ("PLAIN only"), and any drift between
    the two (e.g. SASL_SSL credentials without an SSL context, which Faust takes for
    SASL_PLAINTEXT)."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    sasl = protocol.startswith("SASL")
    settings = Settings(
        broker="k:1",
        security_protocol=protocol,
        sasl_mechanism=mechanism if sasl else None,
        sasl_username="u" if sasl else None,
        sasl_password=SOME_PASSWORD if sasl else None,
    )
    credentials = faust_credentials(settings)
    options = client_options(settings)
    del options["bootstrap_servers"]
    if protocol == "PLAINTEXT":
        assert credentials is None
        return
    faust_options = credentials_to_aiokafka_auth(credentials)
    faust_context = faust_options.pop("ssl_context", None)
    context = options.pop("ssl_context", None)
    assert faust_options == options
    assert (faust_context is None) == (context is None)
    if context is not None:
        assert faust_context.verify_mode == context.verify_mode
        assert faust_context.check_hostname == context.check_hostname


def test_verify_is_a_no_op_for_plaintext_and_leaves_unreachable_brokers_to_the_clients() -> None:
    """No broker on the port: nothing to verify (the clients report or wait, as before);
    PLAINTEXT is never checked."""
    asyncio.run(verify_connection(Settings(broker="127.0.0.1:1")))
    asyncio.run(
        verify_connection(
            Settings(
                broker="127.0.0.1:1",
                security_protocol="SASL_SSL",
                sasl_mechanism="PLAIN",
                sasl_username="u",
                sasl_password=SOME_PASSWORD,
            )
        )
    )


def test_a_listener_that_never_answers_the_handshake_is_a_clear_error() -> None:
    """A port that accepts connections and then says nothing (another service, a listener
    of another protocol) is reported once ``timeout_s`` has passed, not waited on for ever."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        host, port = server.getsockname()
        settings = Settings(
            broker=f"{host}:{port}",
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="u",
            sasl_password=SOME_PASSWORD,
        )
        with pytest.raises(KafkaSecurityError, match="did not complete the SASL_SSL handshake"):
            asyncio.run(verify_connection(settings, timeout_s=1.0))


# ------------------------------------------------------------------------------ the broker
@kafka
def test_compose_script_serves_only_authenticated_tls_clients_on_the_secure_port(
    kafka_secured: Any,
) -> None:
    """The SASL_SSL listener takes both mechanisms with the printed credentials; the wrong
    password, no CA file and a plaintext client are each refused with their own reason."""
    for mechanism in kafka_secured.mechanisms:
        settings = secured_settings(kafka_secured, "probe", mechanism=mechanism)
        asyncio.run(verify_connection(settings))
    wrong = secured_settings(kafka_secured, "probe", sasl_password=WRONG_PASSWORD)
    with pytest.raises(KafkaSecurityError, match="rejected user"):
        asyncio.run(verify_connection(wrong))
    untrusted = secured_settings(kafka_secured, "probe", ssl_cafile=None)
    with pytest.raises(KafkaSecurityError, match="is not trusted"):
        asyncio.run(verify_connection(untrusted))
    plaintext_client = secured_settings(
        kafka_secured,
        "probe",
        security_protocol="SASL_PLAINTEXT",
        ssl_cafile=None,
    )
    with pytest.raises(KafkaSecurityError, match="is it the broker's SASL_PLAINTEXT listener"):
        asyncio.run(verify_connection(plaintext_client))


@kafka
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_worker_scores_through_sasl_ssl(kafka_secured: Any, tmp_path: Path, runtime: str) -> None:
    """``trail worker`` on both runtimes, logged in with SCRAM-SHA-512 from ``TRAIL_*``
    variables, publishes exactly the embedded replay's scores.

    Catches the old Faust builder (it refused SCRAM) and any client of the worker (producer,
    reader, group consumer, Faust app, admin) built without the security settings."""
    settings = secured_settings(kafka_secured, f"worker-{runtime}", runtime=runtime)
    log = ml100k(N_EVENTS)
    asyncio.run(produce_log(settings, log))
    worker = WorkerProcess(
        settings, tmp_path, runtime, "--until-idle", "3", env=kafka_secured.env()
    )
    try:
        assert worker.wait(240) == 0, worker.log_text()
    finally:
        worker.close()
    got, _ = dedupe(score_updates(read_all(settings, settings.scores_topic)))
    assert_same_updates(got, expected_outputs(log, settings.partitions, settings))


@kafka
def test_produce_and_tail_through_sasl_ssl(kafka_secured: Any, tmp_path: Path) -> None:
    """``trail produce`` writes every event and ``trail tail`` prints every score, logged in
    with PLAIN, every setting from ``TRAIL_*`` variables (no --broker)."""
    settings = secured_settings(kafka_secured, "cli", mechanism="PLAIN", window="1h")
    env = kafka_secured.env("PLAIN")
    log = ml100k(300)
    csv_path = tmp_path / "events.csv"
    rows = ["user_id,item_id,timestamp"]
    rows += [
        f"{u},{i},{int(t)}"
        for u, i, t in zip(log.user_ids, log.item_ids, log.timestamps, strict=True)
    ]
    csv_path.write_text("\n".join(rows) + "\n")
    produced = trail(
        "produce", str(csv_path), "--topic", settings.events_topic, "--no-progress", env=env
    )
    assert produced.returncode == 0, produced.stderr
    records = read_all(settings, settings.events_topic)
    assert sorted(r.value for r in records) == sorted(event_values(log))

    updates = [u for parts in expected_outputs(log, 1, settings).by_partition for u in parts]
    updates = updates[:25]
    assert len(updates) == 25
    send(settings, [(settings.scores_topic, u.item_id.encode(), encode(u)) for u in updates])
    tailed = trail(
        "tail",
        "scores",
        "--topic",
        settings.scores_topic,
        "--from-beginning",
        "--json",
        "--max",
        str(len(updates)),
        "--timeout",
        "60",
        env=env,
    )
    assert tailed.returncode == 0, tailed.stderr
    # Keyed by item: several partitions, so only the order within each is kept.
    assert sorted(tailed.stdout.splitlines()) == sorted(encode(u).decode() for u in updates)


class Widget:
    """``trail widget`` on a free port, its output collected."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "widget", "--port", "0", *args],
            cwd=REPO_ROOT,
            env=client_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.url: str | None = None
        self._found = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith("TRAIL_WIDGET_URL=") and self.url is None:
                self.url = line.split("=", 1)[1].strip()
                self._found.set()
        self._found.set()

    def get_json(self, path: str) -> Any:
        assert self._found.wait(60) and self.url, self.output()
        with urllib.request.urlopen(self.url + path, timeout=10) as response:  # noqa: S310
            return orjson.loads(response.read())

    def output(self) -> str:
        return "".join(self.lines)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)


@pytest.fixture
def widget_processes() -> Iterator[list[Widget]]:
    started: list[Widget] = []
    yield started
    for widget in started:
        widget.close()


@kafka
def test_widget_kafka_source_follows_the_secured_topics(
    kafka_secured: Any, widget_processes: list[Widget]
) -> None:
    """The widget's Kafka source, logged in with SCRAM-SHA-512 from ``TRAIL_*`` variables,
    serves the last trending snapshot on the topic."""
    settings = secured_settings(kafka_secured, "widget")
    log = ml100k(N_EVENTS)
    snapshots = expected_outputs(log, 1, settings).trending[0]
    assert len(snapshots) >= 2
    send(settings, [(settings.trending_topic, b"global", encode(s)) for s in snapshots])
    last = snapshots[-1]
    widget = Widget(
        kafka_secured.env(),
        "--trending-topic",
        settings.trending_topic,
        "--scores-topic",
        settings.scores_topic,
    )
    widget_processes.append(widget)
    deadline = time.monotonic() + 60
    view = widget.get_json("/api/trending")
    while view["window_end"] != last.window_end and time.monotonic() < deadline:
        assert widget.process.poll() is None, widget.output()
        time.sleep(0.2)
        view = widget.get_json("/api/trending")
    assert view["window_end"] == last.window_end, widget.output()
    assert [row["item_id"] for row in view["items"]] == [i.item_id for i in last.items]
    health = widget.get_json("/healthz")
    assert health["source_ready"] and health["source_errors"] == 0, widget.output()


# ------------------------------------------------------------------------------ refusals
def _commands(settings: Settings, tmp: Path) -> dict[str, list[str]]:
    """Every client command, with the arguments of a normal run."""
    csv_path = tmp / "events.csv"
    csv_path.write_text("user_id,item_id,timestamp\nu1,i1,1000\n")
    worker = [
        "worker",
        "--events-topic",
        settings.events_topic,
        "--scores-topic",
        settings.scores_topic,
        "--trending-topic",
        settings.trending_topic,
        "--dlq-topic",
        settings.dlq_topic,
        "--app-id",
        settings.app_id,
        "--metrics-port",
        "0",
        "--scorer",
        "ewma-2",
    ]
    return {
        "worker-aiokafka": [*worker, "--runtime", "aiokafka"],
        "worker-faust": [*worker, "--runtime", "faust"],
        "produce": ["produce", str(csv_path), "--topic", settings.events_topic, "--no-progress"],
        "tail": ["tail", "scores", "--topic", settings.scores_topic, "--timeout", "60"],
        "widget": ["widget", "--port", "0", "--trending-topic", settings.trending_topic],
    }


COMMANDS = ("worker-aiokafka", "worker-faust", "produce", "tail", "widget")

REFUSALS = {
    "wrong-password": (
        {"sasl_password": WRONG_PASSWORD},
        ("rejected user 'trail' (SCRAM-SHA-512)", "TRAIL_SASL_PASSWORD"),
    ),
    "untrusted-certificate": (
        {"ssl_cafile": None},
        ("TLS certificate", "is not trusted", "TRAIL_SSL_CAFILE"),
    ),
    "no-mechanism": (
        {"sasl_mechanism": None},
        ("TRAIL_SECURITY_PROTOCOL=SASL_SSL needs TRAIL_SASL_MECHANISM",),
    ),
}


@kafka
@pytest.mark.parametrize("refusal", list(REFUSALS))
@pytest.mark.parametrize("command", COMMANDS)
def test_refused_login_is_one_clear_error_and_exit_2(
    kafka_secured: Any, tmp_path: Path, command: str, refusal: str
) -> None:
    """A wrong password, a certificate the client does not trust, or SASL_SSL without a
    mechanism: every command stops with one ``error:`` line naming the setting to fix.

    Catches aiokafka's bare "Unable to bootstrap from [...]" traceback, the widget's source
    retrying for ever (and its options, which without a mechanism fell back to PLAIN), and
    any wait that never ends (the subprocess limit fails the test)."""
    changes, phrases = REFUSALS[refusal]
    settings = secured_settings(kafka_secured, "refused")
    env = kafka_secured.env(**changes)
    try:
        result = trail(*_commands(settings, tmp_path)[command], env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{command} did not stop within {FAIL_WITHIN_S:g}s: {exc.output!r}")
    one_error(result, *phrases)
