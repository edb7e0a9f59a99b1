"""Consumer groups: two Python members share a 4-partition topic, the one
left takes everything after the other leaves, and commits resume exactly."""

from __future__ import annotations

import threading
import time

import pytest

import strom
from strom.errors import ErrorCode, StromError

TOPIC, PARTITIONS = "shared", 4


def produce(addr, n, start=0):
    with strom.Producer(addr, linger_ms=1) as p:
        futs = [p.send(TOPIC, b"%d" % i, key=b"k%d" % i) for i in range(start, start + n)]
        p.flush(30)
    return [f.result() for f in futs]


class Member:
    """One consumer polled by its own thread until told to stop."""

    def __init__(self, addr, name):
        self.name = name
        self.events = []
        self.records = []
        self.consumer = strom.Consumer(addr, group_id="g", client_id=name, session_timeout_ms=6000, auto_commit_interval_ms=200)
        self.consumer.subscribe(
            [TOPIC],
            on_assign=lambda ps: self.events.append(("assign", ps)),
            on_revoke=lambda ps: self.events.append(("revoke", ps)),
        )
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            got = self.consumer.poll(200)
            with self.lock:
                self.records += got
        self.consumer.close()

    def assignment(self):
        return self.consumer.assignment()

    def values(self):
        with self.lock:
            return [int(r.value) for r in self.records]

    def leave(self):
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def wait_for(cond, timeout_s=40.0, what=""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % what)


def test_two_members_share_then_one_takes_all_and_commits_resume(server):
    admin = strom.Admin(server.addr)
    admin.create_topic(TOPIC, PARTITIONS)
    a = Member(server.addr, "a")
    b = Member(server.addr, "b")
    everything = {(t, p) for t in [TOPIC] for p in range(PARTITIONS)}
    wait_for(
        lambda: len(a.assignment()) == 2 and len(b.assignment()) == 2 and set(a.assignment()) | set(b.assignment()) == everything,
        what="a 2 + 2 split",
    )
    first = produce(server.addr, 400)
    wait_for(lambda: len(a.values()) + len(b.values()) >= 400, what="the first 400 records")
    # Each member read exactly its own partitions' records, and both got a share.
    for m in (a, b):
        parts = {r.partition for r in m.records}
        assert parts <= {p for _, p in m.assignment()} and m.values()
    assert sorted(a.values() + b.values()) == list(range(400))
    by_partition = {}
    for md in first:
        by_partition.setdefault(md.partition, 0)
        by_partition[md.partition] += 1
    assert len(by_partition) == PARTITIONS

    # b leaves (commits, revokes, LeaveGroup): a gets every partition.
    b.leave()
    assert b.events[-1][0] == "revoke"
    wait_for(lambda: set(a.assignment()) == everything, what="a to own all 4 partitions")
    produce(server.addr, 200, start=400)
    wait_for(lambda: len(a.values()) + len(b.values()) >= 600, what="records 400..600")
    assert sorted(a.values() + b.values()) == list(range(600)), "no record lost or read twice across the rebalance"
    kinds = [e[0] for e in a.events]
    assert kinds[:3] == ["assign", "revoke", "assign"] and kinds[-1] == "assign"

    # a leaves too; a new member of the same group resumes at the committed
    # offsets: it sees only what was produced after.
    a.leave()
    committed = admin.committed("g")
    assert sum(committed[(TOPIC, p)] for p in range(PARTITIONS)) == 600
    produce(server.addr, 50, start=600)
    c = Member(server.addr, "c")
    wait_for(lambda: len(c.values()) >= 50, what="the new member's 50 records")
    time.sleep(0.5)
    assert sorted(c.values()) == list(range(600, 650))
    c.leave()
    (g,) = admin.describe_groups(["g"])
    assert g.state == "Empty" and all(o.lag == 0 for o in g.offsets)
    admin.close()


def test_fenced_member_rejoins_and_resumes_from_its_last_accepted_commit(server):
    admin = strom.Admin(server.addr)
    admin.create_topic(TOPIC, PARTITIONS)
    c = strom.Consumer(server.addr, group_id="solo", session_timeout_ms=6000, enable_auto_commit=False)
    c.subscribe([TOPIC])
    c.poll(3000)
    assert len(c.assignment()) == PARTITIONS
    gen = c.generation
    produce(server.addr, 10)
    got = []
    while len(got) < 10:
        got += c.poll(1000)
    c.commit()
    # Silence the heartbeat past the session timeout: the coordinator drops
    # the member, and refuses its next commit.
    c._hb_stop.set()
    c._hb_thread.join(5)
    time.sleep(7.5)
    produce(server.addr, 5, start=10)
    later = []
    while len(later) < 5:
        later += c.poll(1000)
    with pytest.raises(StromError) as e:
        c.commit()
    assert e.value.code in (ErrorCode.UnknownMemberId, ErrorCode.IllegalGeneration)
    # The next poll rejoins under a new generation and starts again from the
    # group's committed offsets: the 5 uncommitted records come again
    # (at least once), nothing before them.
    again = []
    deadline = time.monotonic() + 30
    while len(again) < 5 and time.monotonic() < deadline:
        again += c.poll(500)
    assert c.generation > gen
    assert sorted(int(r.value) for r in again) == list(range(10, 15))
    c.commit()
    c.close()
    admin.close()
