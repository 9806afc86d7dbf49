"""Fixtures for tests against a real Apache Kafka broker (see compose/kafka.sh), shared by
tests/kafka and tests/widget so that one session starts one broker.

``kafka_bootstrap`` (session): starts a private single-node KRaft broker on free ports with a
fresh data dir under pytest's tmp dir, yields ``"127.0.0.1:PORT"`` and stops it at session end.
With ``TRAIL_KAFKA_BOOTSTRAP`` set, that broker is used as is and nothing is started or stopped.

``kafka_secured`` (session): a second private broker, started with ``compose/kafka.sh start
--secure`` (its own ports, data dir and a 512 MB heap), whose SASL_SSL listener takes SCRAM-SHA-512
and PLAIN over TLS with a certificate made at start; a :class:`SecuredKafka` says where it is and
gives the ``TRAIL_*`` variables of a client (``env()``), or of a misconfigured one.

``kafka_topic_factory``: ``create(partitions=4, prefix="t") -> name`` creates a uniquely named
topic, waits until every partition has a leader, and deletes the topics after the test. Its
admin calls run in a fresh thread (:func:`run_in_thread`), so it also works beside a
Playwright browser, whose sync API keeps an event loop running on the main thread.

The tests themselves carry ``pytestmark = pytest.mark.kafka``; deselect with ``-m "not kafka"``.

Required tests: a test the README relies on (the protocol's brute-force check, the real
datasets, the browser tests, the shipped model) carries ``@pytest.mark.required``, or its
fixture calls the ``skip_or_fail`` fixture instead of ``pytest.skip``. Outside CI such a test
may skip, and says why (``-ra`` lists the reasons, and a summary line counts them); under CI
(``CI=true`` in the environment, as ``.ci/run`` sets it) the same skip is a failure, so a CI
run never passes with the promise untested.

Tiny TRAIL models (tests/model, tests/stream): ``one_torch_thread`` runs a module's tests on
one PyTorch thread (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``), and
``perturbed_adapter(base)`` writes a TRAIL adapter on a tiny base model whose LoRA and score
head are far from zero, as if trained.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_SH = REPO_ROOT / "compose" / "kafka.sh"
# First run fetches ~45 MB of jars with Maven; later runs start in a few seconds.
START_TIMEOUT_S = float(os.environ.get("TRAIL_KAFKA_START_TIMEOUT", "90"))
FETCH_ALLOWANCE_S = 600.0

TopicFactory = Callable[..., str]


# ------------------------------------------------------------------- required tests and CI
def in_ci() -> bool:
    """Whether this run is a CI run: ``CI`` set to true (as CI services and ``.ci/run`` do)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


_CI_RULE = "CI=true: a test the README relies on may not skip"
#: Opens the reason of a skip made by :func:`skip_or_fail`, so the summary counts it.
_REQUIRED_PREFIX = "required: "


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with ``reason``; under CI fail with it instead (a required test cannot run)."""
    if in_ci():
        pytest.fail(f"{reason} ({_CI_RULE})", pytrace=False)
    pytest.skip(_REQUIRED_PREFIX + reason)


@pytest.fixture(name="skip_or_fail", scope="session")
def skip_or_fail_fixture() -> Callable[[str], NoReturn]:
    """:func:`skip_or_fail` for fixtures of other folders (a conftest cannot be imported)."""
    return skip_or_fail


_REQUIRED_SKIPS = pytest.StashKey[list[str]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A skipped ``required`` test: a failure under CI, a counted skip elsewhere.

    Covers every way a test skips (``skipif``, ``importorskip``, ``pytest.skip`` in a fixture
    or in the test), so no required test needs its own CI check.
    """
    report = yield
    if not report.skipped or hasattr(report, "wasxfail"):  # wasxfail: expected, not a skip
        return report
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    if reason.startswith(_REQUIRED_PREFIX):
        reason = reason.removeprefix(_REQUIRED_PREFIX)
    elif item.get_closest_marker("required") is None:
        return report
    if in_ci():
        report.outcome = "failed"
        report.longrepr = f"required test skipped: {reason} ({_CI_RULE})"
    else:
        item.config.stash.setdefault(_REQUIRED_SKIPS, []).append(f"{item.nodeid}: {reason}")
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Outside CI, say which required tests skipped (under CI each would have failed)."""
    skipped = config.stash.get(_REQUIRED_SKIPS, [])
    if skipped:
        terminalreporter.section("required tests skipped (each fails under CI=true)")
        for line in skipped:
            terminalreporter.write_line(line)


# ------------------------------------------------------------------- tiny TRAIL models
@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One PyTorch thread for a module's tests. The tiny models gain nothing from threads,
    and on a loaded two-core host PyTorch's default threads made them tens of times slower
    (a `trail evaluate` of a tiny adapter 45 s instead of 2 s, five explanations 27 s
    instead of 0.3 s)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def perturbed_adapter(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make(base, head_std=0.1, head_bias=0.1) -> folder``: a TRAIL adapter on the tiny base
    model ``base``, its LoRA weights drawn with standard deviation 0.3 and its score head's
    with ``head_std`` (bias ``head_bias``), from seed 0.

    A fresh adapter would prove nothing: LoRA's B and the head start at zero (the merge and
    the LM's residuals change nothing), and with small LoRA weights the random model repeats
    one token whatever it is asked. With these, scores and greedy tokens depend on the
    prompt, so a comparison of them can fail.
    """

    def make(base: Path, *, head_std: float = 0.1, head_bias: float = 0.1) -> Path:
        import torch

        from model.trail import TrailConfig, TrailModel

        torch.manual_seed(0)
        model = TrailModel.from_base(TrailConfig(base_model=str(base), lora_top_fraction=1.0))
        with torch.no_grad():
            for name, parameter in model.lm.named_parameters():
                if "lora_A" in name or "lora_B" in name:
                    parameter.normal_(0.0, 0.3)
            model.head.proj.weight.normal_(0.0, head_std)
            model.head.proj.bias.fill_(head_bias)
        out = tmp_path_factory.mktemp("adapter")
        model.save(out)
        return out

    return make


def _free_ports(n: int) -> list[int]:
    """Ask the kernel for ``n`` distinct free TCP ports on 127.0.0.1."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _script_env(port: int, controller_port: int, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TRAIL_KAFKA_PORT"] = str(port)
    env["TRAIL_KAFKA_CONTROLLER_PORT"] = str(controller_port)
    env["TRAIL_KAFKA_DATA"] = str(data_dir)
    # The readiness probe needs aiokafka: the interpreter running pytest has it.
    env.setdefault("TRAIL_PYTHON", sys.executable)
    return env


def run_kafka_script(
    command: str, env: dict[str, str], timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """``bash compose/kafka.sh COMMAND`` with ``env``; its output captured."""
    return subprocess.run(
        ["bash", str(KAFKA_SH), command],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def kafka_script_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment that points compose/kafka.sh at this session's broker."""
    port, controller_port = _free_ports(2)
    data_dir = tmp_path_factory.mktemp("kafka")
    return _script_env(port, controller_port, data_dir)


def _start_broker(env: dict[str, str], tools: tuple[str, ...] = ("bash", "java")) -> dict[str, str]:
    """``compose/kafka.sh start`` with ``env``: the ``KEY=VALUE`` lines it printed (the broker
    is stopped again and the test fails if it does not start)."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"kafka tests need {', '.join(missing)} on PATH to run compose/kafka.sh "
            "(or set TRAIL_KAFKA_BOOTSTRAP, or deselect with -m 'not kafka')",
            pytrace=False,
        )
    started = time.monotonic()
    try:
        result = run_kafka_script("start", env, timeout=START_TIMEOUT_S + FETCH_ALLOWANCE_S)
    except subprocess.TimeoutExpired as exc:
        run_kafka_script("stop", env, timeout=60)
        pytest.fail(f"compose/kafka.sh start timed out: {exc}", pytrace=False)
    if result.returncode != 0:
        run_kafka_script("stop", env, timeout=60)
        pytest.fail(
            f"compose/kafka.sh start failed (rc={result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    printed = dict(
        line.split("=", 1) for line in result.stdout.splitlines() if line.startswith("KAFKA_")
    )
    if not printed.get("KAFKA_BOOTSTRAP"):
        run_kafka_script("stop", env, timeout=60)
        pytest.fail(f"compose/kafka.sh start printed no KAFKA_BOOTSTRAP:\n{result.stdout}")
    sys.stderr.write(
        f"\n[kafka] broker {printed['KAFKA_BOOTSTRAP']} ready in "
        f"{time.monotonic() - started:.1f}s (data {env['TRAIL_KAFKA_DATA']})\n"
    )
    return printed


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_script_env: dict[str, str]) -> Iterator[str]:
    """Bootstrap address of a running broker: ``TRAIL_KAFKA_BOOTSTRAP`` or one started here."""
    external = os.environ.get("TRAIL_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return

    env = kafka_script_env
    bootstrap = _start_broker(env)["KAFKA_BOOTSTRAP"]
    try:
        yield bootstrap
    finally:
        stop = run_kafka_script("stop", env, timeout=120)
        if stop.returncode != 0:
            sys.stderr.write(f"[kafka] stop failed: {stop.stdout}\n{stop.stderr}\n")


@dataclass(frozen=True)
class SecuredKafka:
    """The SASL_SSL listener of the ``kafka_secured`` broker and its one user."""

    bootstrap: str  # the SASL_SSL listener
    plain_bootstrap: str  # the same broker's plain listener (fixtures only, never under test)
    cafile: Path  # the PEM CA that signed the broker's certificate
    username: str
    password: str
    mechanisms: tuple[str, ...]  # SCRAM-SHA-512 and PLAIN

    def env(self, mechanism: str = "SCRAM-SHA-512", **changes: str | None) -> dict[str, str]:
        """The ``TRAIL_*`` variables of a client of this listener.

        ``changes`` replaces settings by name (``sasl_password="wrong"``) or, with None,
        leaves them out (``ssl_cafile=None``: the system's CAs, which do not trust it).
        """
        values: dict[str, str | None] = {
            "broker": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": mechanism,
            "sasl_username": self.username,
            "sasl_password": self.password,
            "ssl_cafile": str(self.cafile),
        }
        values.update(changes)
        return {f"TRAIL_{k.upper()}": v for k, v in values.items() if v is not None}


@pytest.fixture(scope="session")
def kafka_secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    """A second private broker with a SASL_SSL listener (``compose/kafka.sh start --secure``),
    stopped at session end. Started only by the tests that ask for it."""
    port, controller_port, secure_port = _free_ports(3)
    env = _script_env(port, controller_port, tmp_path_factory.mktemp("kafka-secured"))
    env["TRAIL_KAFKA_SECURE"] = "1"
    env["TRAIL_KAFKA_SECURE_PORT"] = str(secure_port)
    # A small heap: the machine is shared, and the tests send a few thousand records.
    env["TRAIL_KAFKA_HEAP_OPTS"] = "-Xms128m -Xmx512m"
    printed = _start_broker(env, ("bash", "java", "openssl"))
    try:
        yield SecuredKafka(
            bootstrap=printed["KAFKA_SECURE_BOOTSTRAP"],
            plain_bootstrap=printed["KAFKA_BOOTSTRAP"],
            cafile=Path(printed["KAFKA_SSL_CAFILE"]),
            username=printed["KAFKA_SASL_USERNAME"],
            password=Path(printed["KAFKA_SASL_PASSWORD_FILE"]).read_text().strip(),
            mechanisms=tuple(printed["KAFKA_SASL_MECHANISMS"].split(",")),
        )
    finally:
        stop = run_kafka_script("stop", env, timeout=120)
        if stop.returncode != 0:
            sys.stderr.write(f"[kafka] stop failed: {stop.stdout}\n{stop.stderr}\n")


async def _create_topic(bootstrap: str, name: str, partitions: int, timeout_s: float) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name=name, num_partitions=partitions, replication_factor=1)]
        )
        for topic, code, *rest in response.topic_errors:
            if code != 0:
                raise RuntimeError(f"create topic {topic!r} failed: error {code} {rest}")
        # KRaft commits the topic on the controller first; wait until metadata shows a leader
        # for every partition so producers and consumers see the topic right away.
        deadline = time.monotonic() + timeout_s
        while True:
            described = await admin.describe_topics([name])
            parts = described[0].get("partitions", []) if described else []
            if (
                described
                and described[0].get("error_code") == 0
                and len(parts) == partitions
                and all(p.get("leader", -1) >= 0 for p in parts)
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name!r} not ready after {timeout_s}s: {described}")
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


async def _delete_topics(bootstrap: str, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


def run_in_thread(function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """``asyncio.run(function(*args))`` in a fresh thread, which has no running event loop."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(function(*args))
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.fixture
def kafka_script() -> Callable[..., subprocess.CompletedProcess[str]]:
    """:func:`run_kafka_script` as a fixture."""
    return run_kafka_script


@pytest.fixture
def in_thread() -> Callable[..., Any]:
    """:func:`run_in_thread` as a fixture (test modules cannot import a conftest)."""
    return run_in_thread


@pytest.fixture
def kafka_topic_factory(kafka_bootstrap: str) -> Iterator[TopicFactory]:
    """Create uniquely named topics: ``name = kafka_topic_factory(partitions=4, prefix="t")``."""
    created: list[str] = []

    def create(partitions: int = 4, prefix: str = "t", timeout_s: float = 30.0) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        run_in_thread(_create_topic, kafka_bootstrap, name, partitions, timeout_s)
        created.append(name)
        return name

    yield create

    if created:
        try:
            run_in_thread(_delete_topics, kafka_bootstrap, created)
        except Exception as exc:  # best effort: the broker's data dir is thrown away anyway
            sys.stderr.write(f"[kafka] could not delete topics {created}: {exc}\n")
