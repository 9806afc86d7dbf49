"""The event-log package keeps what the single module did: where it looks for shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.eventlog import DatasetError
from streams.eventlog.named import dataset_file

REPOSITORY = Path(__file__).resolve().parents[2]


def test_the_shared_data_folder_defaults_to_the_one_beside_the_repository(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without TRAIL_SHARED_DATA, amazon-beauty is looked up in ``../shared/data`` beside the
    checkout. Catches a path counted from the wrong depth (the default is now computed in
    streams/trend/folders.py, where ``parents[2]`` is the repository, not its parent)."""
    monkeypatch.delenv("TRAIL_SHARED_DATA", raising=False)
    expected = REPOSITORY.parent / "shared" / "data" / "amazon-beauty-5core" / "interactions.csv.gz"
    if expected.is_file():
        assert dataset_file("amazon-beauty", tmp_path, progress=False) == expected
    else:
        with pytest.raises(DatasetError, match=str(expected)):
            dataset_file("amazon-beauty", tmp_path, progress=False)

