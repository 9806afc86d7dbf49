"""The folders TRAIL keeps outside the repository: its cache, and the shared data folder.

One definition for every layer. :class:`streams.settings.Settings` takes ``cache_dir`` from
here, and so do the layers below it that cannot import it (``model/`` fetching the base
model, ``streams.eventlog`` downloading and parsing datasets) when they are called without a
folder. This sits in ``streams.trend`` because that is the lowest package every other one may
import; it imports nothing but the standard library, so asking for a path stays cheap.

These two functions and ``Settings`` are the only readers of the environment: the lower
layers would otherwise need ``Settings``, which sits above them.

>>> default_cache_dir({"TRAIL_CACHE_DIR": "/srv/trail"}).as_posix()
'/srv/trail'
>>> default_cache_dir({}) == Path.home() / ".cache" / "trail"
True
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: The environment variable of the cache folder (``Settings.cache_dir``): downloaded datasets,
#: parsed logs, the converted base model and the ONNX exports all live below it.
CACHE_DIR_ENV = "TRAIL_CACHE_DIR"
#: The name it had before the settings were gathered in ``Settings``; ``trail model fetch
#: --help`` and the dataset errors told users to set it, so it is still read, but only when
#: :data:`CACHE_DIR_ENV` is not set.
LEGACY_CACHE_DIR_ENV = "TRAIL_CACHE"
#: Where the named dataset ``amazon-beauty`` is read from, when set.
SHARED_DATA_ENV = "TRAIL_SHARED_DATA"


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Return the cache folder: ``$TRAIL_CACHE_DIR``, else ``$TRAIL_CACHE``, else
    ``~/.cache/trail``.

    Parameters
    ----------
    environ : Mapping of str to str, optional
        The environment to read; ``os.environ`` when not given. An empty value counts as
        unset.

    Returns
    -------
    pathlib.Path
        The folder, with ``~`` expanded; it may not exist yet.

    >>> default_cache_dir({"TRAIL_CACHE": "/old", "TRAIL_CACHE_DIR": ""}).as_posix()
    '/old'
    >>> default_cache_dir({"TRAIL_CACHE": "/old", "TRAIL_CACHE_DIR": "/new"}).as_posix()
    '/new'
    """
    env = os.environ if environ is None else environ
    configured = env.get(CACHE_DIR_ENV) or env.get(LEGACY_CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "trail"


def shared_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Return the shared data folder: ``$TRAIL_SHARED_DATA``, else ``../shared/data`` beside
    the repository.

    Parameters
    ----------
    environ : Mapping of str to str, optional
        The environment to read; ``os.environ`` when not given.

    Returns
    -------
    pathlib.Path
        The folder; it may not exist.

    >>> shared_data_dir({"TRAIL_SHARED_DATA": "/data"}).as_posix()
    '/data'
    """
    env = os.environ if environ is None else environ
    configured = env.get(SHARED_DATA_ENV)
    if configured:
        return Path(configured).expanduser()
    # From streams/trend/folders.py, parents[2] is the repository and parents[3] holds it.
    return Path(__file__).resolve().parents[3] / "shared" / "data"
