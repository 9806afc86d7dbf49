"""Fault injection for the kill -9 recovery tests, and nothing else.

The worker itself never exits on purpose: its durability pipeline calls an optional
``after_published`` hook once a round that published windows is acknowledged, before that
round's checkpoint is written (the worst moment for duplicates). ``trail worker`` installs a
hook only when :data:`CRASH_AFTER_PUBLISH_ENV` is set, and this module is the one place that
reads it: the tests set it to N, and the worker dies like kill -9 (exit status 137, no
shutdown, no final checkpoint) after the N-th such round.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

log = logging.getLogger("trail.worker")

#: Set (to N) only by tests: die after the N-th round that published windows.
CRASH_AFTER_PUBLISH_ENV = "TRAIL_TEST_CRASH_AFTER_PUBLISH"


def crash_after_publish(rounds: int) -> Callable[[], None]:
    """A hook that ends the process like kill -9 when it is called for the ``rounds``-th time."""
    if rounds < 1:
        raise ValueError(f"{CRASH_AFTER_PUBLISH_ENV} must be at least 1, not {rounds}")
    calls = 0

    def hook() -> None:
        nonlocal calls
        calls += 1
        if calls >= rounds:
            log.error("fault injection: exiting after publishing, before the checkpoint")
            os._exit(137)

    return hook


def fault_hook(environ: Mapping[str, str]) -> Callable[[], None] | None:
    """The hook the tests asked for in ``environ`` (None: the environment asks for none)."""
    value = environ.get(CRASH_AFTER_PUBLISH_ENV)
    if not value:
        return None
    try:
        rounds = int(value)
    except ValueError:
        raise ValueError(f"{CRASH_AFTER_PUBLISH_ENV} must be a number, not {value!r}") from None
    return crash_after_publish(rounds)
