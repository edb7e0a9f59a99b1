"""Fixtures: real ``strom-server`` processes on 127.0.0.1 (free ports, own
temp data directory, ``--cores 1``), as tests/src/lib.rs starts them.

The binary: ``$STROM_SERVER_BIN`` (tests/tests/python.rs passes the one the
Rust harness built), else ``strom-server`` under ``$CARGO_TARGET_DIR`` or
the repository's ``target/`` (debug, then release). When none exists the
tests are skipped, except under ``CI=true``, where that is a failure.
Every wait is bounded; the server is killed when the test ends.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterator, List, Optional

import pytest

HERE = pathlib.Path(__file__).resolve().parent
PKG = HERE.parent
REPO = PKG.parent.parent
# Run against the source tree unless STROM_TEST_INSTALLED=1 (then the installed package).
if os.environ.get("STROM_TEST_INSTALLED") != "1":
    sys.path.insert(0, str(PKG))

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20


def server_bin() -> Optional[pathlib.Path]:
    env = os.environ.get("STROM_SERVER_BIN")
    if env:
        return pathlib.Path(env)
    roots: List[pathlib.Path] = []
    if os.environ.get("CARGO_TARGET_DIR"):
        roots.append(pathlib.Path(os.environ["CARGO_TARGET_DIR"]))
    roots.append(REPO / "target")
    for root in roots:
        for profile in ("debug", "release"):
            p = root / profile / "strom-server"
            if p.exists():
                return p
    return None


class Server:
    """One running strom-server; ``addr`` is its native address."""

    def __init__(self, cores: int = 1, extra: Optional[List[str]] = None):
        binary = server_bin()
        if binary is None:
            msg = "no strom-server binary (build it with `cargo build -p strom-server` or set STROM_SERVER_BIN)"
            if os.environ.get("CI") == "true":
                pytest.fail(msg)
            pytest.skip(msg)
        self.dir = tempfile.TemporaryDirectory(prefix="strom-pytest-")
        self.stderr = open(os.path.join(self.dir.name, "stderr.log"), "wb")
        args = [
            str(binary), "--data-dir", os.path.join(self.dir.name, "data"),
            "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--kafka-listen", "127.0.0.1:0",
            "--cores", str(cores), "--group-initial-rebalance-delay-ms", "100",
            *(extra or []),
        ]  # fmt: skip
        env = dict(os.environ)
        env.setdefault("STROM_LOG", "warn")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL, env=env)
        self.addr = ""
        self.kafka = ""
        deadline = time.monotonic() + START_TIMEOUT_S
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), True)
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode(errors="replace")
            if not line:
                break
            if line.startswith("listening native="):
                self.addr = line.split("=", 1)[1].strip()
            if line.startswith("listening kafka="):
                self.kafka = line.split("=", 1)[1].strip()
            if line.startswith("ready") and self.addr:
                return
        self.stop()
        raise RuntimeError("strom-server did not start: %s" % self.read_stderr())

    def read_stderr(self) -> str:
        try:
            with open(os.path.join(self.dir.name, "stderr.log"), "rb") as f:
                return f.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()
        self.dir.cleanup()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def server2() -> Iterator[Server]:
    """A server with two shards (direct shard-port routing)."""
    s = Server(cores=2)
    try:
        yield s
    finally:
        s.stop()
