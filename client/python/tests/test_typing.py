"""The package's type hints hold: mypy checks strom/ (the generated code is
followed silently: flatc's Python output carries no annotations)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import PKG


def test_mypy_finds_no_issues(tmp_path):
    try:
        import mypy  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("mypy is missing (scripts/install-test-deps installs it)")
        pytest.skip("mypy is missing")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--follow-imports=silent",
         "--cache-dir", str(tmp_path / "cache"), "strom"],
        capture_output=True, text=True, timeout=300, cwd=PKG,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success" in out.stdout
