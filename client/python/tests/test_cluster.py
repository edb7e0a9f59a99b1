"""Leader following in a real 3-node cluster (three `strom-server
--node-id N --peer ...` processes on 127.0.0.1, one shard each): topic
changes find the controller, each partition's requests go to its leader,
and an idempotent producer keeps going through a SIGKILL of a leader with
every acknowledged record stored exactly once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time

import pytest

import strom
from conftest import START_TIMEOUT_S, server_bin

NODES = 3


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Cluster:
    def __init__(self):
        binary = server_bin()
        if binary is None:
            if os.environ.get("CI") == "true":
                pytest.fail("no strom-server binary")
            pytest.skip("no strom-server binary")
        ports = free_ports(4 * NODES)
        self.addrs = [
            {k: "127.0.0.1:%d" % ports[4 * i + j] for j, k in enumerate(("native", "kafka", "raft", "http"))}
            for i in range(NODES)
        ]
        self.dirs = [tempfile.TemporaryDirectory(prefix="strom-pycluster-") for _ in range(NODES)]
        self.procs = []
        for i, a in enumerate(self.addrs):
            args = [
                str(binary), "--cores", "1", "--node-id", str(i + 1), "--data-dir", os.path.join(self.dirs[i].name, "data"),
                "--listen", a["native"], "--shard-ports", "off", "--http", a["http"],
                "--kafka-listen", a["kafka"], "--raft-listen", a["raft"],
            ]  # fmt: skip
            for j, b in enumerate(self.addrs):
                if j != i:
                    args += ["--peer", "%d,raft=%s,kafka=%s,native=%s" % (j + 1, b["raft"], b["kafka"], b["native"])]
            err = open(os.path.join(self.dirs[i].name, "stderr.log"), "wb")
            env = {**os.environ, "STROM_LOG": os.environ.get("STROM_LOG", "warn")}
            self.procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env))
        for p in self.procs:
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                line = p.stdout.readline().decode(errors="replace")
                if not line or line.startswith("ready"):
                    break
        self.bootstrap = ",".join(a["native"] for a in self.addrs)

    def kill(self, node_id):
        p = self.procs[node_id - 1]
        p.send_signal(signal.SIGKILL)
        p.wait(20)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(20)
            p.stdout.close()
        for d in self.dirs:
            d.cleanup()


@pytest.fixture
def cluster():
    c = Cluster()
    try:
        yield c
    finally:
        c.stop()


def wait_for_leaders(admin, topic, partitions, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            t = admin.topic(topic, refresh=True)
            if len(t.partitions) == partitions and all(p.leader_node for p in t.partitions):
                return [p.leader_node for p in t.partitions]
        except strom.StromError:
            pass
        time.sleep(0.2)
    raise AssertionError("no leader for every partition of %s" % topic)


def test_leader_following_through_a_leader_kill(cluster):
    admin = strom.Admin(cluster.bootstrap)
    assert admin.cluster and sorted(admin.info.nodes) == [1, 2, 3]
    # Topic changes reach the controller whichever node the client asked.
    deadline = time.monotonic() + 60
    while True:
        try:
            admin.create_topic("ha", 3)
            break
        except strom.StromError as e:  # the metadata group may still be electing
            if time.monotonic() > deadline:
                raise
            if e.code == strom.ErrorCode.TopicAlreadyExists:
                break
            time.sleep(0.2)
    leaders = wait_for_leaders(admin, "ha", 3)
    for p, leader in enumerate(leaders):
        assert admin.connection_for("ha", p).info.node_id == leader

    acked = {}
    errors = []
    victim = next((l for l in leaders if l != admin.info.node_id), leaders[0])
    with strom.Producer(cluster.bootstrap, acks="durable", linger_ms=2, delivery_timeout_ms=60_000) as prod:
        for i in range(600):
            if i == 200:
                prod.flush(60)
                cluster.kill(victim)
            prod.produce(
                "ha", b"%d" % i, key=b"%d" % i,
                on_delivery=lambda e, md, i=i: errors.append((i, e)) if e else acked.__setitem__(i, md),
            )  # fmt: skip
            if i % 50 == 49:
                prod.flush(60)
        assert prod.flush(90) == 0
    assert not errors, errors[:5]
    assert len(acked) == 600
    # Read every partition from its (possibly new) leader: each acknowledged
    # record exactly once, at the offset it was acknowledged with.
    leaders = wait_for_leaders(admin, "ha", 3)
    assert victim not in leaders
    c = strom.Consumer(cluster.bootstrap)
    c.assign([("ha", p) for p in range(3)])
    got = {}
    deadline = time.monotonic() + 60
    while len(got) < 600 and time.monotonic() < deadline:
        for r in c.poll(500):
            assert (r.partition, r.offset) not in got
            got[(r.partition, r.offset)] = int(r.value)
    c.close()
    assert sorted(got.values()) == list(range(600)), "every acknowledged record once"
    for i, md in acked.items():
        assert got[(md.partition, md.offset)] == i
    admin.close()
