"""No pickle-based load anywhere in the tree: a planted file must never be able to run code.

Every tracked ``.py`` file is parsed and searched for what can unpickle: the ``pickle`` family
of modules (and ``joblib``, ``dill``, ``cloudpickle``, ``shelve``), ``torch.load`` without
``weights_only=True``, any ``weights_only=False``, ``np.load(..., allow_pickle=True)`` and
``pd.read_pickle``. The syntax tree is searched rather than the text, so a docstring that says
"never pickle" is no finding while an aliased import (``import pickle as p``) is one.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THIS = Path(__file__).resolve()

#: Modules whose loads unpickle.
PICKLING_MODULES = frozenset(
    {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve"}
)
#: Attribute calls that unpickle whatever module they come from.
PICKLING_CALLS = frozenset({"read_pickle", "Unpickler"})


def _is_true(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node: ast.expr) -> str:
    """``a.b.c`` for a chain of attributes on a name, ``""`` for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def pickle_findings(source: str, name: str = "<string>") -> list[str]:
    """``"name:line: what"`` for every pickle-based load in ``source``."""
    findings: list[str] = []
    tree = ast.parse(source, filename=name)
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLING_MODULES:
                    findings.append(f"{where}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            if module in PICKLING_MODULES:
                findings.append(f"{where}: from {node.module} import ...")
            if module == "torch" and any(a.name == "load" for a in node.names):
                findings.append(f"{where}: from torch import load")
            if any(a.name in PICKLING_CALLS for a in node.names):
                findings.append(f"{where}: imports {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Call):
            keywords = {k.arg: k.value for k in node.keywords if k.arg is not None}
            called = _dotted(node.func)
            if "weights_only" in keywords and not _is_true(keywords["weights_only"]):
                findings.append(f"{where}: weights_only other than True")
            if called == "torch.load" and "weights_only" not in keywords:
                findings.append(f"{where}: torch.load without weights_only=True")
            if called.split(".")[-1] == "load" and _is_true(
                keywords.get("allow_pickle", ast.Constant(False))
            ):
                findings.append(f"{where}: {called}(allow_pickle=True)")
            if called.split(".")[-1] in PICKLING_CALLS:
                findings.append(f"{where}: {called}")
        elif isinstance(node, ast.Attribute) and node.attr in PICKLING_CALLS:
            findings.append(f"{where}: .{node.attr}")
    return sorted(set(findings))


def tracked_python_files() -> list[Path]:
    """The tracked ``.py`` files (every ``.py`` outside hidden and virtual-env folders when
    the tree is not a git checkout)."""
    git = shutil.which("git")
    if git is not None and (ROOT / ".git").exists():
        listed = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            [git, "ls-files", "-z", "--", "*.py"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
        return [ROOT / name for name in listed.split("\0") if name]
    return [
        path
        for path in ROOT.rglob("*.py")
        if not any(
            part.startswith(".") or part in {"venv", "build"}
            for part in path.relative_to(ROOT).parts
        )
    ]


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\npickle.loads(b'')",
        "import pickle as p",
        "from pickle import loads",
        "from _pickle import Unpickler",
        "import joblib",
        "from joblib import load",
        "import dill",
        "import torch\ntorch.load('x')",
        "import torch\ntorch.load('x', weights_only=False)",
        "import torch\ntorch.load('x', map_location='cpu', weights_only=flag)",
        "from torch import load",
        "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
        "import numpy\nnumpy.load('x.npz', allow_pickle=True)",
        "import pandas as pd\npd.read_pickle('x.pkl')",
        "from pandas import read_pickle",
        "frame.to_csv('x'); frame2 = pd.read_pickle",
        "load_checkpoint(path, weights_only=False)",
    ],
)
def test_the_scan_finds_each_pickle_pattern(snippet: str) -> None:
    """The detector itself: each pattern it is meant to refuse is found."""
    assert pickle_findings(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        '"""We never pickle: JSON only."""',
        "# no pickle here",
        "import torch\ntorch.load('x', map_location='cpu', weights_only=True)",
        "import numpy as np\nnp.load('x.npy')\nnp.load('y.npy', allow_pickle=False)",
        "from safetensors.torch import load_file\nload_file('x.safetensors')",
        "import json\njson.loads('{}')",
    ],
)
def test_the_scan_passes_safe_code(snippet: str) -> None:
    """Safe loads and words in text are no findings (else the tree test would be noise)."""
    assert pickle_findings(snippet) == []


def test_no_pickle_based_load_in_the_tree() -> None:
    """Catches: ``torch.load(..., weights_only=False)`` in model/training.py (the resumable
    checkpoint of ``trail train --out DIR``), or any other unpickling load added anywhere."""
    files = [path for path in tracked_python_files() if path.resolve() != THIS]
    assert any(path.name == "training.py" for path in files), "the scan saw no model code"
    findings = [
        finding
        for path in files
        if path.is_file()
        for finding in pickle_findings(
            path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))
        )
    ]
    assert findings == []
