"""Fixtures shared by the model tests: a tiny random Llama and a small toy event log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.tiny import build_tiny_model

DAY = 86_400


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


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
