"""Producer, consumer and admin against a real strom-server."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

import strom
from strom import wire
from strom.errors import ErrorCode, StromError
from strom.frames import encode_frame, partition_for_key


def consume_all(addr, topic, partitions, want, timeout_s=30.0):
    c = strom.Consumer(addr)
    c.assign([(topic, p) for p in range(partitions)])
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got += c.poll(500)
    c.close()
    return got


@pytest.mark.parametrize("acks", ["none", "leader", "durable"])
def test_round_trip_with_keys_headers_and_each_acks_level(server, acks):
    admin = strom.Admin(server.addr)
    admin.create_topic("rt", 3)
    sent = []
    callbacks = []
    with strom.Producer(server.addr, acks=acks, linger_ms=2, batch_bytes=4096) as p:
        futures = []
        for i in range(500):
            key = b"user-%d" % (i % 17) if i % 5 else None
            value = b"value %d" % i
            headers = [("seq", b"%d" % i), ("kind", b"even" if i % 2 == 0 else b"odd")]
            sent.append((key, value, headers))
            if i % 2:
                futures.append((i, p.send("rt", value, key=key, headers=headers)))
            else:
                p.produce("rt", value, key=key, headers=headers, on_delivery=lambda e, md, i=i: callbacks.append((i, e, md)))
        assert p.flush(30) == 0
        mds = {i: f.result(0) for i, f in futures}
    assert len(callbacks) == 250 and all(e is None for _, e, _ in callbacks)
    by_index = dict(mds)
    by_index.update({i: md for i, _, md in callbacks})
    for i, (key, _, _) in enumerate(sent):
        md = by_index[i]
        if key is not None:
            assert md.partition == partition_for_key(key, 3)  # the Rust producer's partition
        if acks == "none":
            assert md.offset is None
        else:
            assert md.offset is not None and md.offset >= 0
    got = consume_all(server.addr, "rt", 3, 500)
    assert len(got) == 500
    assert sorted(repr((r.key, r.value, r.headers)) for r in got) == sorted(repr(x) for x in sent)
    if acks != "none":
        where = {(md.partition, md.offset): sent[i][1] for i, md in by_index.items()}
        assert {(r.partition, r.offset): r.value for r in got} == where
    # Order within a partition is produce order.
    for part in range(3):
        seqs = [int(dict(r.headers)["seq"]) for r in sorted(got, key=lambda r: r.offset) if r.partition == part]
        assert seqs == sorted(seqs)
    admin.close()


def test_batching_lingers_and_fills(server):
    admin = strom.Admin(server.addr)
    admin.create_topic("lin", 1)
    # One linger window collects many records into one frame: every record
    # of it gets consecutive offsets, and far fewer frames are stored than records.
    with strom.Producer(server.addr, linger_ms=200, batch_bytes=1 << 20) as p:
        futs = [p.send("lin", b"x" * 10) for _ in range(300)]
        p.flush(30)
    offsets = [f.result().offset for f in futs]
    assert offsets == list(range(300))
    msg = admin.connection_for("lin", 0).call(wire.fetch(0, 1, 1 << 20, [("lin", 0, 0, 1 << 20)]))
    (r,) = wire.read_fetch(msg, 1)
    frames = 0
    pos = 0
    while pos < len(r.frames):
        frames += 1
        pos += int.from_bytes(bytes(r.frames[pos + 8 : pos + 12]), "little")
    assert frames <= 3, frames
    admin.close()


def test_idempotent_producer_stamps_batches_and_a_resend_is_not_stored_twice(server):
    admin = strom.Admin(server.addr)
    admin.create_topic("idem", 1)
    with strom.Producer(server.addr, acks="durable") as p:
        assert p.idempotent and p._producer_id >= 0 and p._epoch >= 0
        for i in range(10):
            p.produce("idem", b"%d" % i)
        p.flush(30)
    # The same stamped batch sent twice (as a producer resends after a lost
    # answer) is stored once and answered with the original offsets.
    pid, epoch = admin.init_producer_id()
    frame = encode_frame([(None, b"a", None, None), (None, b"b", None, None)], pid, epoch, 0)
    first = admin.connection_for("idem", 0).call(wire.produce(wire.ACKS_DURABLE, 10_000, [("idem", 0, len(frame))]), [frame])
    again = admin.connection_for("idem", 0).call(wire.produce(wire.ACKS_DURABLE, 10_000, [("idem", 0, len(frame))]), [frame])
    (r1,) = wire.read_produce(first, 1)
    (r2,) = wire.read_produce(again, 1)
    assert r1.error == 0 and r2.error == 0
    assert (r1.base_offset, r1.last_offset) == (r2.base_offset, r2.last_offset) == (10, 11)
    assert admin.list_offset("idem", 0) == 12
    admin.close()


def test_producer_reports_a_refusal_per_record(server):
    with strom.Producer(server.addr) as p:
        with pytest.raises(StromError) as e:
            p.send("missing-topic", b"v")
        assert e.value.code == ErrorCode.UnknownTopic
        strom.Admin(server.addr).create_topic("one", 1)
        fut = p.send("one", b"v", partition=5)
        p.flush(30)
        with pytest.raises(StromError) as e:
            fut.result(0)
        assert e.value.code == ErrorCode.UnknownPartition


def test_consumer_seek_long_poll_and_position(server):
    admin = strom.Admin(server.addr)
    admin.create_topic("seek", 1)
    for i in range(10):
        admin.produce("seek", 0, [(None, b"%d" % i, None, None)])
    c = strom.Consumer(server.addr, fetch_max_wait_ms=2000)
    c.assign([("seek", 0)])
    assert c.position("seek", 0) == 0
    assert [r.value for r in c.poll(2000)] == [b"%d" % i for i in range(10)]
    c.seek("seek", 0, 7)
    assert [r.offset for r in c.poll(2000)] == [7, 8, 9]
    # Long poll: a record produced while the fetch waits comes back in that poll.
    timer = threading.Timer(0.3, lambda: admin.produce("seek", 0, [(b"k", b"late", None, None)]))
    timer.start()
    t = time.monotonic()
    got = c.poll(5000)
    timer.join(30)
    assert [r.value for r in got] == [b"late"] and time.monotonic() - t < 4
    c.seek_to_beginning()
    assert c.position("seek", 0) == 0
    c.seek_to_end()
    assert c.position("seek", 0) == 11
    c.close()
    admin.close()


def test_admin_topics_and_groups(server):
    admin = strom.Admin(server.addr)
    admin.create_topic("adm", 2, {"retention.ms": "60000"})
    with pytest.raises(StromError) as e:
        admin.create_topic("adm", 1)
    assert e.value.code == ErrorCode.TopicAlreadyExists
    assert admin.list_topics() == {"adm": 2}
    (d,) = admin.describe_topics(["adm"])
    assert d.name == "adm" and len(d.partitions) == 2 and d.configs.get("retention.ms") == "60000"
    admin.create_partitions("adm", 4)
    assert admin.partition_count("adm") == 4
    admin.produce("adm", 1, [(None, b"x", None, None)] * 5)
    admin.commit("g-adm", {("adm", 1): 3})
    assert admin.committed("g-adm", [("adm", 1)]) == {("adm", 1): 3}
    assert [g.group for g in admin.list_groups()] == ["g-adm"]
    (g,) = admin.describe_groups(["g-adm"])
    lag = {(o.topic, o.partition): o.lag for o in g.offsets}
    assert lag[("adm", 1)] == 2
    admin.reset_offsets("g-adm", "adm", "earliest", partitions=[1])
    assert admin.committed("g-adm", [("adm", 1)]) == {("adm", 1): 0}
    admin.delete_topics(["adm"])
    assert admin.list_topics() == {}
    admin.close()


def test_two_shards_route_each_partition_to_its_owner(server2):
    admin = strom.Admin(server2.addr)
    assert len(admin.info.shard_ports) == 2
    admin.create_topic("rt2", 4)
    owners = [p.owner_shard for p in admin.topic("rt2").partitions]
    assert sorted(set(owners)) == [0, 1]
    for p in range(4):
        assert admin.connection_for("rt2", p).info.shard_id == owners[p]
    with strom.Producer(server2.addr) as prod:
        for i in range(200):
            prod.produce("rt2", b"%d" % i, key=b"%d" % i)
    assert len(consume_all(server2.addr, "rt2", 4, 200)) == 200
    admin.close()


def test_old_strom_client_module_still_works(server):
    import strom_client

    c = strom_client.StromClient(server.addr)
    c.create_topic("old", 1)
    base = c.produce("old", 0, [strom_client.Record(b"k", b"v")])
    records, hw = c.fetch("old", 0, base)
    assert hw == 1 and [(r.key, r.value) for r in records] == [(b"k", b"v")]
    c.close()


def test_concurrent_producers_from_threads(server):
    strom.Admin(server.addr).create_topic("thr", 2)
    with strom.Producer(server.addr, linger_ms=1) as p:
        def work(t):
            return [p.send("thr", b"%d-%d" % (t, i)) for i in range(200)]

        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            futs = [f for fs in ex.map(work, range(4)) for f in fs]
        p.flush(30)
        offsets = {(f.result().partition, f.result().offset) for f in futs}
    assert len(offsets) == 800
