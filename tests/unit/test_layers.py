"""The import layers of pyproject.toml name every module they are meant to hold.

import-linter checks only the modules a ``layers`` contract names: a new module of ``streams/``
left out of it could import anything, in any direction, and ``lint-imports`` would still pass.
"""

from __future__ import annotations

import pkgutil
import re
import tomllib
from pathlib import Path

import streams

REPO_ROOT = Path(__file__).resolve().parents[2]


def _layers() -> list[set[str]]:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts = [c for c in config["contracts"] if c["type"] == "layers"]
    assert len(contracts) == 1, "one layers contract, from the application down to schemas"
    return [
        {name.strip().strip("()") for name in re.split(r"[:|]", layer)}
        for layer in contracts[0]["layers"]
    ]


def test_every_module_of_streams_is_in_a_layer() -> None:
    """Each top-level module and package of ``streams/`` is in exactly one layer, and so are
    ``schemas``, ``model`` and ``export``.

    Catches: a module added to ``streams/`` (or a layer dropped from the contract) that no
    layer names, whose imports import-linter then never checks; and the old pyproject.toml,
    which had no layers contract at all.
    """
    layers = _layers()
    named = [name for layer in layers for name in layer]
    assert len(named) == len(set(named)), "a module named in two layers"
    modules = {f"streams.{m.name}" for m in pkgutil.iter_modules(streams.__path__)}
    assert modules | {"schemas", "model", "export"} == set(named)


def test_the_layers_run_from_the_application_down_to_schemas() -> None:
    """The order the docs describe: schemas, the pure core, model, export, the application.

    Catches: two layers swapped (say ``model`` above ``export``, which would let model import
    the ONNX runtime again) with every module still named.
    """
    position = {name: i for i, layer in enumerate(_layers()) for name in layer}
    assert position["schemas"] > position["streams.trend"] > position["streams.scoring"]
    assert position["streams.scoring"] == position["streams.eventlog"] > position["model"]
    assert position["model"] > position["export"] > position["streams.engine"]
    assert position["streams.engine"] > position["streams.registry"] > position["streams.kafka"]
    assert position["streams.registry"] == position["streams.evaluation"]
