"""Exactly-once consume-transform-produce with confluent-kafka (librdkafka)
against strom-server, driven by tests/tests/kafka_eos.rs, which SIGKILLs the
processor at random points and starts it again.

Modes:
  setup BOOTSTRAP INPUT OUTPUT VALUES_FILE
      creates INPUT and OUTPUT (2 partitions each) and produces every line
      of VALUES_FILE (a decimal number) to INPUT, idempotently.
  process BOOTSTRAP INPUT OUTPUT GROUP
      the processor: a transactional producer (one transactional.id, so a
      restart fences and aborts its predecessor's transaction), INPUT's
      partitions assigned from GROUP's committed offsets (read after
      init_transactions, so an aborted transaction's offsets are never
      used); per transaction up to BATCH (10) input records become output records
      (value v -> 7 * v + 3, key "<partition>:<offset>" of the input) and
      the input positions are committed with send_offsets_to_transaction.
      Exits 0 once INPUT is consumed to its end (prints done=1).
  read BOOTSTRAP OUTPUT
      prints the read_committed values of OUTPUT (values=..., keys=...)
      and how many data records read_uncommitted sees (uncommitted=N).
"""
import os
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 2
# Input records per transaction: small, so that a run spans many
# transactions and a kill lands inside one.
BATCH = 10
PACE_S = int(os.environ.get("STROM_EOS_PACE_MS", "0")) / 1000.0
mode, bootstrap = sys.argv[1], sys.argv[2]


def wait_topics(admin, names):
    deadline = time.time() + 20
    while time.time() < deadline:
        md = admin.list_topics(timeout=5).topics
        if all(n in md and md[n].error is None and len(md[n].partitions) == PARTITIONS for n in names):
            return
        time.sleep(0.1)
    raise SystemExit("topics not visible")


def read_committed(topic, settle_s=2.0, bound_s=60.0, isolation="read_committed"):
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "eos-reader-%f" % time.time(),
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out = []
    deadline = time.time() + bound_s
    quiet = time.time()
    while time.time() < deadline:
        m = c.poll(0.2)
        if m is None:
            if time.time() - quiet >= settle_s:
                break
            continue
        if m.error():
            continue
        quiet = time.time()
        out.append((m.key().decode(), m.value().decode()))
    c.close()
    return out


if mode == "setup":
    inp, outp, values_file = sys.argv[3], sys.argv[4], sys.argv[5]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(inp, PARTITIONS, 1), NewTopic(outp, PARTITIONS, 1)]).values():
        f.result(20)
    wait_topics(admin, [inp, outp])
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    with open(values_file) as f:
        for i, line in enumerate(f):
            p.produce(inp, value=line.strip().encode(), partition=i % PARTITIONS)
            if i % 500 == 0:
                p.poll(0)
    assert p.flush(30) == 0
    print("setup=1", flush=True)
elif mode == "process":
    inp, outp, group = sys.argv[3], sys.argv[4], sys.argv[5]
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": "eos-processor",
            "transaction.timeout.ms": 10000,
            "linger.ms": 5,
        }
    )
    producer.init_transactions(30)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
        }
    )
    parts = [TopicPartition(inp, p) for p in range(PARTITIONS)]
    committed = consumer.committed(parts, timeout=30)
    start = [TopicPartition(inp, tp.partition, tp.offset if tp.offset >= 0 else 0) for tp in committed]
    consumer.assign(start)
    ends = {p: consumer.get_watermark_offsets(TopicPartition(inp, p), timeout=10)[1] for p in range(PARTITIONS)}
    pos = {tp.partition: tp.offset for tp in start}
    while any(pos[p] < ends[p] for p in range(PARTITIONS)):
        msgs = consumer.consume(BATCH, 1.0)
        msgs = [m for m in msgs if m.error() is None]
        if not msgs:
            continue
        producer.begin_transaction()
        for m in msgs:
            v = int(m.value().decode())
            key = "%d:%d" % (m.partition(), m.offset())
            producer.produce(outp, key=key.encode(), value=str(7 * v + 3).encode(), partition=m.partition())
            pos[m.partition()] = m.offset() + 1
        offsets = [TopicPartition(inp, p, pos[p]) for p in range(PARTITIONS)]
        producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(30)
        # Paced so that a whole run lasts longer than the kills it must
        # survive, however fast the machine (STROM_EOS_PACE_MS).
        time.sleep(PACE_S)
    consumer.close()
    print("done=1", flush=True)
elif mode == "read":
    outp = sys.argv[3]
    got = read_committed(outp)
    print("values=" + ",".join(v for (_, v) in got))
    print("keys=" + ",".join(k for (k, _) in got))
    # Data records in the log, aborted ones included: more than the inputs
    # when a kill landed inside a transaction that had produced.
    print("uncommitted=%d" % len(read_committed(outp, isolation="read_uncommitted")), flush=True)
else:
    raise SystemExit("unknown mode " + mode)
