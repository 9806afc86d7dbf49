"""The suite's own rules: required tests cannot skip under CI, the Chromium lookup is the install
script's, and every package's doctests are collected."""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

pytest_plugins = ["pytester"]

REPO_ROOT = Path(__file__).resolve().parents[2]

SUITE = """
import pytest

@pytest.mark.required
def test_marked_skips_in_its_body():
    pytest.skip("the data folder is missing")

@pytest.mark.required
@pytest.mark.skipif(True, reason="no such file")
def test_marked_skipif():
    pass

@pytest.fixture
def chromium(skip_or_fail):
    skip_or_fail("no chromium on PATH")

def test_fixture_skips(chromium):
    pass

def test_optional_skip():
    pytest.skip("an optional extra is not installed")

def test_runs():
    assert True
"""


@pytest.fixture
def mini_suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A suite with this project's tests/conftest.py and four kinds of skips."""
    pytester.makeconftest((REPO_ROOT / "tests" / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    required: the README relies on it\n")
    pytester.makepyfile(test_mini=SUITE)
    return pytester


def test_required_skips_fail_under_ci(
    mini_suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``CI=true`` each skip of a required test (``pytest.skip`` in a marked test, a
    ``skipif`` marker, ``skip_or_fail`` in a fixture) fails the run, with its reason; a skip of
    an unmarked test stays a skip.

    Catches: a conftest that skips required tests under CI as it does elsewhere (a hook that
    does not turn the report into a failure, or ``skip_or_fail`` calling ``pytest.skip``).
    """
    monkeypatch.setenv("CI", "true")
    result = mini_suite.runpytest("-p", "no:cacheprovider", "-ra")
    # The two marked tests fail (one in its body, one at setup: an error); the fixture that
    # cannot provide fails at setup too.
    result.assert_outcomes(passed=1, failed=1, errors=2, skipped=1)
    output = result.stdout.str()
    for reason in ("the data folder is missing", "no such file", "no chromium on PATH"):
        assert reason in output
    assert "a test the README relies on may not skip" in output
    assert result.ret != 0


def test_required_skips_say_why_outside_ci(
    mini_suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without CI the same tests skip, and a summary names each required one and its reason.

    Catches: required tests that fail on a developer's machine without the shared data, or
    skips of required tests that the summary leaves out.
    """
    monkeypatch.delenv("CI", raising=False)
    result = mini_suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=4)
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "*required tests skipped (each fails under CI=true)*",
            "test_mini.py::test_marked_skips_in_its_body: the data folder is missing",
            "test_mini.py::test_marked_skipif: no such file",
            "test_mini.py::test_fixture_skips: no chromium on PATH",
        ]
    )
    assert "test_optional_skip:" not in result.stdout.str()


def _widget_conftest(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """tests/widget/conftest.py as a plain module (a conftest cannot be imported by name)."""
    path = REPO_ROOT / "tests" / "widget" / "conftest.py"
    name = "widget_conftest_under_test"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its dataclasses look their module up while they are defined.
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def test_chromium_is_found_where_the_install_script_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The browser tests find Chromium exactly where ``scripts/system-deps.sh`` is satisfied
    (``command -v chromium``): any ``chromium`` on PATH, or ``$TRAIL_CHROMIUM``.

    Catches: a lookup of one fixed path (``/usr/bin/chromium``): with Chromium elsewhere on
    PATH the install script is content and every browser test skipped.
    """
    find_chromium = _widget_conftest(monkeypatch).find_chromium
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    chromium = bin_dir / "chromium"
    chromium.write_text("#!/bin/sh\nexit 0\n")
    chromium.chmod(chromium.stat().st_mode | stat.S_IXUSR)
    monkeypatch.delenv("TRAIL_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert find_chromium() == str(chromium)

    other = tmp_path / "elsewhere" / "my-chromium"
    other.parent.mkdir()
    other.write_text("#!/bin/sh\nexit 0\n")
    other.chmod(other.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("TRAIL_CHROMIUM", str(other))
    assert find_chromium() == str(other)
    monkeypatch.setenv("TRAIL_CHROMIUM", str(tmp_path / "nothing"))
    assert find_chromium() is None

    monkeypatch.delenv("TRAIL_CHROMIUM")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_chromium() is None


def _packages_with_doctests() -> set[str]:
    found = set()
    for path in REPO_ROOT.glob("*/**/*.py"):
        top = path.relative_to(REPO_ROOT).parts[0]
        if top.startswith(".") or top in {"tests", "build"} or top.endswith(".egg-info"):
            continue
        if (REPO_ROOT / top / "__init__.py").is_file() and ">>> " in path.read_text():
            found.add(top)
    return found


def test_every_package_with_doctests_is_collected() -> None:
    """``pytest`` with no arguments (what ``make test`` runs) collects the doctests of every
    package that has some: each one is in ``testpaths`` and ``--doctest-modules`` is on.

    Catches: a ``testpaths`` that leaves a package out (``export/`` was: its doctests never
    ran).
    """
    options = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"
    ]
    packages = _packages_with_doctests()
    assert {"export", "model", "schemas", "streams"} <= packages
    assert packages <= set(options["testpaths"])
    assert "--doctest-modules" in options["addopts"].split()
    assert os.path.isdir(REPO_ROOT / "tests")
