"""The package builds as a wheel holding the generated code, py.typed and the CLI entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import PKG


def test_wheel_builds_with_everything_inside(tmp_path):
    # --no-build-isolation uses the setuptools installed here (no download);
    # scripts/install-test-deps installs `wheel`, which setuptools needs for it.
    try:
        import wheel  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("the `wheel` package is missing (scripts/install-test-deps installs it)")
        pytest.skip("the `wheel` package is missing")
    # Built from a copy, so the source tree gets no build/ or egg-info.
    src = tmp_path / "src"
    shutil.copytree(PKG, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache", "tests"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    (whl,) = [p for p in tmp_path.iterdir() if p.suffix == ".whl"]
    names = set(zipfile.ZipFile(whl).namelist())
    for want in (
        "strom/__init__.py", "strom/py.typed", "strom/aio.py", "strom/producer.py", "strom/consumer.py",
        "strom/protocol/Request.py", "strom/protocol/ErrorCode.py", "strom/record/RecordBatch.py",
    ):  # fmt: skip
        assert want in names, want
    meta = [n for n in names if n.endswith("entry_points.txt")]
    assert meta and b"strom-py = strom.cli:_entry" in zipfile.ZipFile(whl).read(meta[0])
