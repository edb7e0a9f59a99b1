"""Native clients beside Kafka clients on the same server: transaction markers
and the order of pipelined batches.

A Kafka transactional producer leaves transaction markers (control frames,
attribute bit 5) in the log; a native consumer must step over them (they
take an offset, they are not records) and read the transactions' data
records (the native protocol has no read_committed: it reads what a Kafka
read_uncommitted consumer reads). Before, the client refused any frame with
attributes set and closed the connection.
"""

from __future__ import annotations

import os
import time

import pytest

import strom


def _confluent():
    try:
        import confluent_kafka  # type: ignore[import-not-found]
    except ImportError:
        msg = "confluent-kafka is not installed (scripts/install-test-deps installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return confluent_kafka


def test_native_consumer_steps_over_transaction_markers(server):
    ck = _confluent()
    admin = strom.Admin(server.addr)
    admin.create_topic("tx", 1)
    p = ck.Producer({"bootstrap.servers": server.kafka, "transactional.id": "py-tx"})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(3):
        p.produce("tx", value=b"committed-%d" % i, partition=0)
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(2):
        p.produce("tx", value=b"aborted-%d" % i, partition=0)
    p.flush(30)
    p.abort_transaction(30)
    p.flush(30)

    c = strom.Consumer(server.addr)
    c.assign([("tx", 0)])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < 5 and time.monotonic() < deadline:
        got += c.poll(500)
    # Nothing more arrives: the markers are not records.
    got += c.poll(300)
    c.close()
    values = [r.value for r in got]
    assert values == [b"committed-0", b"committed-1", b"committed-2", b"aborted-0", b"aborted-1"]
    # Offsets 3 and 6 hold the markers.
    assert [r.offset for r in got] == [0, 1, 2, 4, 5]


def test_pipelined_kafka_batches_are_stored_in_send_order(server):
    """A plain (not idempotent) librdkafka producer pipelines up to 5
    requests per connection; the partition must store them in the order it
    sent them. Small segments roll often, and an append blocked by a roll
    used to be overtaken by a later one."""
    ck = _confluent()
    admin = strom.Admin(server.addr)
    admin.create_topic("order", 1, {"segment.bytes": str(64 * 1024)})
    p = ck.Producer(
        {
            "bootstrap.servers": server.kafka,
            "enable.idempotence": False,
            "acks": 1,
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 0,
            "batch.num.messages": 20,
        }
    )
    n = 6000
    for i in range(n):
        p.produce("order", value=b"%06d" % i + b"x" * 200, partition=0)
        if i % 500 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    c = strom.Consumer(server.addr)
    c.assign([("order", 0)])
    got = []
    deadline = time.monotonic() + 60
    while len(got) < n and time.monotonic() < deadline:
        got += c.poll(500)
    c.close()
    seq = [int(r.value[:6]) for r in got]
    assert len(seq) == n
    out_of_order = [(a, b) for a, b in zip(seq, seq[1:]) if b != a + 1]
    assert not out_of_order, "stored out of send order at %d places, first %s" % (
        len(out_of_order),
        out_of_order[:5],
    )
