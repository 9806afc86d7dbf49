"""One source of truth each: the defaults every command shares, the cache folder, the tie order.

Each of these was written in two or three places that had drifted apart; the tests pin that
every reader now gets the same answer from the one place.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from model.base import cached_model_dir
from model.sasrec.data import tie_order
from schemas import TrendingItem, TrendingSnapshot
from streams.cli import COMMANDS, build_parser, main, settings_from_args
from streams.eventlog import load_events
from streams.kafka.trending import merge_trending
from streams.settings import Settings
from streams.trend.catalog import ItemCatalog, id_order, rank_positions, tie_ranks
from streams.trend.folders import default_cache_dir
from streams.trend.windows import DEFAULT_WINDOW

DAY = 86_400


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ``TRAIL_*`` setting of the developer's shell leaks into a test of the defaults."""
    for name in ("TRAIL_WINDOW", "TRAIL_SCORER", "TRAIL_CACHE_DIR", "TRAIL_CACHE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _window_of(command: str, *argv: str) -> str:
    args = build_parser(command).parse_args([command, *argv])
    if command in ("replay", "evaluate"):
        return settings_from_args(args).window
    if command == "worker":
        # Whichever module `trail worker` runs, as the command line finds it.
        worker = importlib.import_module(COMMANDS["worker"][0])
        return str(worker.settings_from_args(args).window)
    assert command == "widget"
    from streams.widget.cli import _settings as widget_settings

    return widget_settings(args).window


def test_every_command_has_the_window_settings_has(clean_env: pytest.MonkeyPatch) -> None:
    """``trail replay``, ``evaluate``, ``worker`` and ``widget --demo`` without ``--window``
    window as ``Settings`` does, and that is the documented week (README, ``--help``).

    Catches the defaults drifting apart again: Settings said 1h while ``trail replay`` forced
    7d (``args.window or "7d"``) and the widget demo wrote its own "7d"."""
    windows = {
        "replay": _window_of("replay", "log.csv"),
        "evaluate": _window_of("evaluate", "log.csv"),
        "worker": _window_of("worker"),
        "widget": _window_of("widget", "--demo", "ml-100k"),
    }
    assert Settings().window == DEFAULT_WINDOW == "7d"
    assert windows == dict.fromkeys(windows, DEFAULT_WINDOW)


def test_replay_reads_its_settings_from_the_environment_under_its_flags(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """Defaults, then ``TRAIL_*`` variables, then flags, as Settings' docstring says.

    Catches ``trail replay`` passing its own defaults as if they were flags (``window="7d"``,
    ``--scorer`` defaulting to ``river``), which hid TRAIL_WINDOW and TRAIL_SCORER."""
    clean_env.setenv("TRAIL_WINDOW", "1d")
    clean_env.setenv("TRAIL_SCORER", "ewma-2")
    settings = settings_from_args(build_parser("replay").parse_args(["replay", "log.csv"]))
    assert (settings.window, settings.scorer) == ("1d", "ewma-2")
    flagged = build_parser("replay").parse_args(
        ["replay", "log.csv", "--window", "2d", "--scorer", "mostpop"]
    )
    assert (settings_from_args(flagged).window, settings_from_args(flagged).scorer) == (
        "2d",
        "mostpop",
    )


def _write_log(path: Path, rows: int = 12_000) -> None:
    """A log of ``rows`` events over 20 days; over 256 KiB, so its parse is cached."""
    lines = ["user_id,item_id,timestamp"]
    step = 20 * DAY // rows
    for k in range(rows):
        lines.append(f"user-{k % 97:05d},item-{k % 13:03d},{1_700_000_000 + k * step}")
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 256 * 1024


def _predictions(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_trail_window_in_the_environment_windows_a_replay(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``TRAIL_WINDOW=1d trail replay LOG`` ranks day by day, exactly as ``--window 1d``.

    Catches the replay command ignoring the variable (it used to window by 7d whatever
    TRAIL_WINDOW said)."""
    log = tmp_path / "log.csv"
    _write_log(log)
    common = ["replay", str(log), "--scorer", "ewma-1", "--print-top", "0", "--no-progress"]
    assert main([*common, "--window", "1d", "--predictions-out", str(tmp_path / "flag.jsonl")]) == 0
    clean_env.setenv("TRAIL_WINDOW", "1d")
    assert main([*common, "--predictions-out", str(tmp_path / "env.jsonl")]) == 0
    by_flag = _predictions(tmp_path / "flag.jsonl")
    by_env = _predictions(tmp_path / "env.jsonl")
    assert by_env == by_flag
    ends = [int(str(p["window_end"])) for p in by_env]
    assert len(ends) > 10 and {b - a for a, b in zip(ends, ends[1:], strict=False)} == {DAY}


def test_the_cache_folder_is_one_variable_read_the_same_everywhere(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """TRAIL_CACHE_DIR moves the datasets' and parsed logs' cache, the base model's and the
    exports' (Settings.cache_dir) together; TRAIL_CACHE, the name ``trail model fetch --help``
    documented before, still counts when TRAIL_CACHE_DIR is unset, and loses to it.

    Catches the two names again meaning two folders: the base model and the datasets read
    only TRAIL_CACHE, Settings (the exports) only TRAIL_CACHE_DIR."""
    new, old = tmp_path / "new", tmp_path / "old"
    for env in ({"TRAIL_CACHE_DIR": new}, {"TRAIL_CACHE": old, "TRAIL_CACHE_DIR": new}):
        for name, value in env.items():
            clean_env.setenv(name, str(value))
        assert Settings().cache_dir == new
        assert default_cache_dir() == new
        assert cached_model_dir().parents[1] == new
    clean_env.delenv("TRAIL_CACHE_DIR")
    assert Settings().cache_dir == default_cache_dir() == old
    assert cached_model_dir().parents[1] == old
    clean_env.delenv("TRAIL_CACHE")
    home = Path.home() / ".cache" / "trail"
    assert Settings().cache_dir == default_cache_dir() == home
    # "~" in the variable is the home folder for every reader, an empty value is unset.
    clean_env.setenv("TRAIL_CACHE_DIR", "~/trail-cache")
    assert Settings().cache_dir == default_cache_dir() == Path.home() / "trail-cache"
    clean_env.setenv("TRAIL_CACHE_DIR", "")
    assert Settings().cache_dir == default_cache_dir() == home


def test_trail_replay_keeps_its_parsed_log_in_the_settings_cache(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``trail replay`` parses a big text log once into ``$TRAIL_CACHE_DIR/parsed``, and so
    does the event-log loader called with no folder.

    Catches the old split: the replay command and the loader's default cached where
    TRAIL_CACHE said (or in ~/.cache/trail), whatever TRAIL_CACHE_DIR said."""
    log, other = tmp_path / "log.csv", tmp_path / "other.csv"
    _write_log(log)
    _write_log(other)
    cache = tmp_path / "cache"
    clean_env.setenv("TRAIL_CACHE_DIR", str(cache))
    argv = ["replay", str(log), "--scorer", "mostpop", "--print-top", "0", "--no-progress"]
    assert main(argv) == 0
    assert len(list((cache / "parsed").glob("*.parquet"))) == 1
    assert load_events(other, progress=False).item_ids.shape == (12_000,)
    assert len(list((cache / "parsed").glob("*.parquet"))) == 2


TRICKY_IDS = [
    ["10", "9", "1_000", "+3", " 7"],  # integers as Python reads them: 1_000, +3, " 7"
    ["b", "a", "10", "9"],  # not all integers: code-point order
    ["100000000000000000000", "5", "18446744073709551616", "-4"],  # beyond 64 bits
    [],
]


@pytest.mark.parametrize("ids", TRICKY_IDS)
def test_sasrec_breaks_ties_as_the_engine_does(ids: list[str]) -> None:
    """SASRec's item order is the engine's tie order (``ItemCatalog.tie_order``).

    Catches a third implementation of the order: SASRec's own regex took ``1_000`` and
    ``" 7"`` for strings, where the engine reads them as the integers Python parses."""
    catalog = ItemCatalog()
    if ids:
        catalog.codes(np.array(ids, dtype=object))
    by_engine = [ids[i] for i in np.argsort(catalog.tie_order()).tolist()]
    assert tie_order(ids) == by_engine == [ids[i] for i in id_order(ids).tolist()]


def test_item_ids_beyond_64_bits_are_ranked_numerically(tmp_path: Path) -> None:
    """A log whose item ids are all integers, one of them past int64, replays and ranks its
    ties numerically.

    Catches ``id_order`` packing the ids into int64: an OverflowError at the first window
    close, a traceback instead of a ranking."""
    big = "100000000000000000000"  # 1e20 > 2**63
    path = tmp_path / "log.csv"
    lines = ["user_id,item_id,timestamp"]
    for day in range(21):  # every item once a day: all scores tie
        for item in (big, "7", "30"):
            lines.append(f"u{day}-{item},{item},{1_700_006_400 + day * DAY + 60}")
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "p.jsonl"
    argv = ["replay", str(path), "--window", "1d", "--scorer", "mostpop"]
    assert main([*argv, "--predictions-out", str(out), "--print-top", "0", "--no-progress"]) == 0
    rankings = [p["ranking"] for p in _predictions(out)]
    assert rankings and all(r == ["7", "30", big] for r in rankings)


def _partition_top(items: list[tuple[str, float]]) -> TrendingSnapshot:
    return TrendingSnapshot(
        window_start=0,
        window_end=DAY,
        model_version="m@1",
        items=tuple(
            TrendingItem(item_id=i, rank=r, score=s) for r, (i, s) in enumerate(items, start=1)
        ),
        changed_items=len(items),
        events=float(len(items)),
    )


@pytest.mark.parametrize("ids", [ids for ids in TRICKY_IDS if len(ids) >= 2])
def test_the_trending_merge_ranks_as_the_engine_does(ids: list[str]) -> None:
    """The global trending list orders the partitions' items exactly as one engine ranks the
    same scores and ids (``rank_positions`` over ``tie_ranks``).

    Catches the merge's own copy of the order beside the engine's: it rounded with Python's
    ``round(score, 9)`` where the engine rounds with numpy, and the two differ at
    0.4030967245 (Python rounds it up to the next item's 0.403096725, a tie that the ids then
    break; numpy rounds it down, below that item whatever the ids). The lower score goes to
    the id that comes first in the tie order, so that only the rounding can put it first."""
    first, second = id_order(ids).tolist()[:2]
    scores = [0.5] * len(ids)
    scores[first], scores[second] = 0.4030967245, 0.403096725
    items = list(zip(ids, scores, strict=True))
    merged = merge_trending([_partition_top(items[0::2]), _partition_top(items[1::2])], len(ids))
    order = rank_positions(np.array(scores), tie_ranks(ids)).tolist()
    assert [i.item_id for i in merged.items] == [ids[p] for p in order]
    assert [i.rank for i in merged.items] == list(range(1, len(ids) + 1))

