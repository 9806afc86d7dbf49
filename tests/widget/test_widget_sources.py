"""The widget's Kafka source connects with the one options builder (no broker needed)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from streams.kafka.options import KafkaSecurityError, client_options
from streams.settings import Settings
from streams.widget.hub import TrendingHub
from streams.widget.sources import KafkaSource

PASSWORD = "not-a-secret"  # noqa: S105 - a test value, never sent anywhere


def _source_options(settings: Settings) -> dict[str, Any]:
    source = KafkaSource(TrendingHub(), settings, trending_topic="trending", scores_topic="scores")
    return source._client_options()


def _comparable(options: dict[str, Any]) -> dict[str, Any]:
    """The options with the TLS context (a fresh object each time) replaced by its checks."""
    context = options.get("ssl_context")
    if context is None:
        return options
    assert isinstance(context, ssl.SSLContext)
    return {**options, "ssl_context": (context.check_hostname, context.verify_mode)}


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"security_protocol": "SSL"},
        {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "u",
            "sasl_password": PASSWORD,
        },
        {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "u",
            "sasl_password": PASSWORD,
        },
    ],
)
def test_kafka_source_uses_the_shared_client_options(values: dict[str, Any]) -> None:
    """The source's consumer gets exactly :func:`client_options` plus its client id, for every
    protocol: no option builder of its own."""
    settings = Settings(broker="k:1", **values)
    expected = {**client_options(settings), "client_id": "trail-widget"}
    assert _comparable(_source_options(settings)) == _comparable(expected)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        # SASL settings on a protocol without SASL: the widget's own builder keyed SASL on the
        # mechanism and sent them, connecting without the authentication asked for.
        (
            {"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": PASSWORD},
            "does not use SASL",
        ),
        # A SASL protocol without a mechanism: it sent no SASL options at all, and the broker
        # refused the connection with no word about which setting was missing.
        (
            {"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": PASSWORD},
            "needs TRAIL_SASL_MECHANISM",
        ),
    ],
)
def test_kafka_source_refuses_settings_keyed_on_the_wrong_thing(
    values: dict[str, Any], named: str
) -> None:
    """SASL follows the security protocol, not the mechanism. Catches the widget's old copy of
    the options builder (SASL sent whenever ``sasl_mechanism`` was set, never when it was not):
    with it both settings built options instead of raising."""
    with pytest.raises(KafkaSecurityError, match=named):
        _source_options(Settings(broker="k:1", **values))
