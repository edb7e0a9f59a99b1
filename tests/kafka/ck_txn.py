"""confluent-kafka (librdkafka) transactions against strom-server, driven by
tests/tests/kafka_txn.rs. Every mode prints one JSON summary line last.

Modes (BOOTSTRAP TOPIC are the first two arguments of every mode):
  basic     commit, abort, commit (10 values each); read back with
            read_committed and read_uncommitted.
  fence     two producers with the same transactional.id: the second's
            init aborts the first's open transaction and fences it.
  timeout   a transaction left open (transaction.timeout.ms=TIMEOUT_MS) and
            a plain record after it: read_committed sees the plain record
            only once the coordinator aborted the open transaction.
  prepare   commits txn A, leaves txn B open (flushed), prints
            {"ready": true} and sleeps (the test SIGKILLs the server).
  commit-crash  commits a transaction while the server aborts after the
            prepare record (STROM_TEST_TXN_FAULT); prints the commit's outcome.
  read      reads back both ways.
  refused   cluster mode: metadata answers, init_transactions fails.
  check     after the restart: a new producer with the same id (its init
            aborts B), commits C; reads back both ways.

Usage: ck_txn.py MODE BOOTSTRAP TOPIC [TIMEOUT_MS]"""
import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

mode, bootstrap, topic = sys.argv[1], sys.argv[2], sys.argv[3]
PARTITIONS = 2


def create_topic():
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        f.result(20)
    deadline = time.time() + 20
    while time.time() < deadline:
        t = admin.list_topics(timeout=5).topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == PARTITIONS:
            return
        time.sleep(0.1)
    raise SystemExit("topic not visible")


def producer(txn_id, timeout_ms=60000):
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": txn_id,
            "transaction.timeout.ms": timeout_ms,
            "linger.ms": 5,
        }
    )
    p.init_transactions(30)
    return p


def send(p, values):
    for i, v in enumerate(values):
        p.produce(topic, value=v.encode(), key=str(i).encode(), partition=i % PARTITIONS)
    p.flush(30)


def read_all(isolation, settle_s=2.0, bound_s=30.0):
    """Every value of the topic visible at `isolation`, in (partition,
    offset) order, plus the (low, high) watermarks the consumer saw."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "reader-%s-%f" % (isolation, time.time()),
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out = []
    deadline = time.time() + bound_s
    quiet_since = time.time()
    while time.time() < deadline:
        m = c.poll(0.2)
        if m is None:
            if time.time() - quiet_since >= settle_s:
                break
            continue
        if m.error():
            continue
        quiet_since = time.time()
        out.append((m.partition(), m.offset(), m.value().decode()))
    marks = [c.get_watermark_offsets(TopicPartition(topic, p), timeout=5) for p in range(PARTITIONS)]
    c.close()
    out.sort()
    return [v for (_, _, v) in out], marks


def summary(**kw):
    """One `key=value` line per field (lists comma-joined) for the Rust
    side, then the whole as one JSON line for people."""
    for k, v in kw.items():
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            print("%s=%s" % (k, ",".join(v)))
        else:
            print("%s=%s" % (k, json.dumps(v)))
    print(json.dumps(kw), flush=True)


if mode == "basic":
    create_topic()
    p = producer("basic-txn")
    a = ["c-%d" % i for i in range(10)]
    b = ["a-%d" % i for i in range(10)]
    c = ["c-%d" % i for i in range(10, 20)]
    p.begin_transaction()
    send(p, a)
    p.commit_transaction(30)
    p.begin_transaction()
    send(p, b)
    p.abort_transaction(30)
    p.begin_transaction()
    send(p, c)
    p.commit_transaction(30)
    committed, marks_c = read_all("read_committed")
    uncommitted, marks_u = read_all("read_uncommitted")
    summary(
        committed=sorted(committed),
        uncommitted=sorted(uncommitted),
        expect_committed=sorted(a + c),
        expect_uncommitted=sorted(a + b + c),
        marks_committed=marks_c,
        marks_uncommitted=marks_u,
    )
elif mode == "fence":
    create_topic()
    p1 = producer("fence-txn")
    p1.begin_transaction()
    send(p1, ["z-%d" % i for i in range(5)])
    # The second producer's init aborts p1's open transaction and fences it.
    p2 = producer("fence-txn")
    fenced = None
    try:
        p1.produce(topic, value=b"z-late", partition=0)
        p1.flush(10)
        p1.commit_transaction(10)
    except KafkaException as e:
        err = e.args[0]
        fenced = {"name": err.name(), "fatal": err.fatal(), "code": err.code()}
    p2.begin_transaction()
    send(p2, ["ok-%d" % i for i in range(5)])
    p2.commit_transaction(30)
    committed, _ = read_all("read_committed")
    summary(fenced=fenced, committed=sorted(committed), expect=sorted("ok-%d" % i for i in range(5)))
elif mode == "timeout":
    create_topic()
    timeout_ms = int(sys.argv[4])
    p1 = producer("timeout-txn", timeout_ms)
    p1.begin_transaction()
    send(p1, ["open-%d" % i for i in range(4)])
    # A plain record after the open transaction: above the LSO until the
    # coordinator aborts the transaction.
    plain = Producer({"bootstrap.servers": bootstrap})
    plain.produce(topic, value=b"plain", partition=0)
    plain.flush(10)
    started = time.time()
    early, _ = read_all("read_committed", settle_s=0.5, bound_s=1.0)
    seen_at = None
    late = []
    while time.time() - started < timeout_ms / 1000.0 + 20:
        late, marks = read_all("read_committed", settle_s=0.5, bound_s=2.0)
        if "plain" in late:
            seen_at = time.time() - started
            break
    uncommitted, _ = read_all("read_uncommitted")
    summary(
        early=sorted(early),
        late=sorted(late),
        seen_after_s=seen_at,
        uncommitted=sorted(uncommitted),
    )
elif mode == "prepare":
    create_topic()
    p = producer("crash-txn", 5000)
    p.begin_transaction()
    send(p, ["A-%d" % i for i in range(10)])
    p.commit_transaction(30)
    p.begin_transaction()
    send(p, ["B-%d" % i for i in range(10)])
    summary(ready=True)
    time.sleep(120)
elif mode == "commit-crash":
    # The server aborts after making the commit durable (PrepareCommit)
    # and before any marker: the commit call fails or times out here.
    create_topic()
    p = producer("prepare-txn")
    p.begin_transaction()
    send(p, ["P-%d" % i for i in range(10)])
    outcome = "committed"
    try:
        p.commit_transaction(5)
    except KafkaException as e:
        outcome = e.args[0].name()
    summary(outcome=outcome)
elif mode == "refused":
    # Cluster mode: the brokers answer, transactions are refused.
    admin = AdminClient({"bootstrap.servers": bootstrap})
    brokers = len(admin.list_topics(timeout=20).brokers)
    outcome = "initialized"
    try:
        Producer({"bootstrap.servers": bootstrap, "transactional.id": "refused"}).init_transactions(8)
    except KafkaException as e:
        outcome = e.args[0].name()
    summary(brokers=brokers, outcome=outcome)
elif mode == "read":
    committed, _ = read_all("read_committed")
    uncommitted, _ = read_all("read_uncommitted")
    summary(committed=sorted(committed), uncommitted=sorted(uncommitted))
elif mode == "check":
    p = producer("crash-txn", 5000)
    p.begin_transaction()
    send(p, ["C-%d" % i for i in range(10)])
    p.commit_transaction(30)
    committed, _ = read_all("read_committed")
    uncommitted, _ = read_all("read_uncommitted")
    summary(committed=sorted(committed), uncommitted=sorted(uncommitted))
else:
    raise SystemExit("unknown mode " + mode)
