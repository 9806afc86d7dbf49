"""The trend fits round the same on every CPU: the learned ranker's trees depend on them."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import numpy as np
from streams.trend.stats import slope_and_acceleration
counts = np.random.default_rng(7).poisson(3.0, size=(2000, 8)).astype(np.float64) * 1.37
slope, accel = slope_and_acceleration(counts)
sys.stdout.write(slope.tobytes().hex() + accel.tobytes().hex())
"""


def _fit_bytes(coretype: str | None) -> str:
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    if coretype is not None:
        env["OPENBLAS_CORETYPE"] = coretype  # OpenBLAS's kernel, as another CPU would pick it
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", "import sys\n" + SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout


def test_slope_and_acceleration_do_not_depend_on_the_blas_kernel() -> None:
    """Defect: ``counts @ pinv(design)`` rounded differently under OpenBLAS's AVX-512 and
    Haswell kernels, and the online ranker's HR@10 on ML-1M moved from 0.1262 to 0.1108
    between two machines with the same log, code and packages."""
    native = _fit_bytes(None)
    assert native
    for coretype in ("Haswell", "Nehalem"):
        assert _fit_bytes(coretype) == native, coretype
