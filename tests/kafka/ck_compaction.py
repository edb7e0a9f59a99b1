"""confluent-kafka (librdkafka) against a compacted topic
(tests/tests/compaction.rs drives the phases and kills the server between
them).

Phases (STATE is a JSON file the phases share):

  create BOOTSTRAP TOPIC STATE DELETE_RETENTION_MS SEGMENT_BYTES
      Creates TOPIC (1 partition) with cleanup.policy=delete and small
      segments (SEGMENT_BYTES), then turns it into a compacted topic with
      IncrementalAlterConfigs (cleanup.policy=compact, delete.retention.ms,
      min.cleanable.dirty.ratio, min.compaction.lag.ms,
      max.compaction.lag.ms) and checks DescribeConfigs shows them. Checks
      that a record without a key is refused with INVALID_RECORD.
  produce BOOTSTRAP TOPIC STATE KEYS ROUNDS VALUE_BYTES TOMBSTONES
      ROUNDS rounds of one value per key for KEYS keys, then tombstones for
      the first TOMBSTONES keys, then unique "filler" keys until the data
      above sits in closed segments; records every delivery report's
      offset in STATE.
  fillers BOOTSTRAP TOPIC STATE BYTES
      More unique filler keys (a new dirty segment, so the cleaner runs
      again).
  verify BOOTSTRAP TOPIC STATE MODE DEADLINE_S
      Reads the partition from the beginning until it holds exactly the
      expected records, or DEADLINE_S pass: for each key its latest
      delivered value at its original offset, fillers included; MODE
      "tombstones-kept" expects the tombstones of the deleted keys,
      "tombstones-gone" expects those keys absent. Prints one JSON line
      (match, reads, records, offsets span, first differences) and exits 0
      on a match, 1 otherwise.
"""
import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

phase, bootstrap, topic, state_path = sys.argv[1:5]
args = sys.argv[5:]


def load():
    with open(state_path) as f:
        return json.load(f)


def save(state):
    with open(state_path, "w") as f:
        json.dump(state, f)


def produce(records):
    """records: list of (key, value or None). Returns offsets in order."""
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            # In order, once each, also across kills of the server (the
            # server answers a connection's requests concurrently, and a
            # plain producer's retry could store a value twice).
            "enable.idempotence": True,
            # Batches well under the topic's small max.message.bytes.
            "batch.size": 16000,
            "acks": "all",
            "message.timeout.ms": 60000,
        }
    )
    out = [None] * len(records)
    errors = []

    def report(i):
        def cb(err, msg):
            if err is not None:
                errors.append(str(err))
            else:
                out[i] = msg.offset()

        return cb

    for i, (k, v) in enumerate(records):
        while True:
            try:
                p.produce(topic, key=k.encode(), value=None if v is None else v.encode(), partition=0, on_delivery=report(i))
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(60)
    if left or errors or any(o is None for o in out):
        print(json.dumps({"error": "produce failed", "unflushed": left, "errors": errors[:5]}))
        sys.exit(2)
    return out


if phase == "create":
    admin = AdminClient({"bootstrap.servers": bootstrap})
    configs = {"cleanup.policy": "delete", "segment.bytes": args[1]}
    for f in admin.create_topics([NewTopic(topic, 1, 1, config=configs)]).values():
        f.result(20)
    deadline = time.time() + 20
    while time.time() < deadline:
        t = admin.list_topics(timeout=5).topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == 1:
            break
        time.sleep(0.1)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    wanted = {
        "cleanup.policy": "compact",
        "delete.retention.ms": args[0],
        "min.cleanable.dirty.ratio": "0.01",
        "min.compaction.lag.ms": "0",
        "max.compaction.lag.ms": "600000",
    }
    for k, v in wanted.items():
        res.add_incremental_config(ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET))
    for f in admin.incremental_alter_configs([res]).values():
        f.result(20)
    described = {}
    for f in admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values():
        for name, entry in f.result(20).items():
            described[name] = entry.value
    shown = {k: described.get(k) for k in wanted}
    # A bad value is refused with INVALID_CONFIG.
    bad = ConfigResource(ConfigResource.Type.TOPIC, topic)
    bad.add_incremental_config(
        ConfigEntry("min.cleanable.dirty.ratio", "2", incremental_operation=AlterConfigOpType.SET)
    )
    bad_error = None
    for f in admin.incremental_alter_configs([bad]).values():
        try:
            f.result(20)
        except Exception as e:  # noqa: BLE001 - the error is the point
            bad_error = e.args[0].name() if e.args and hasattr(e.args[0], "name") else str(e)
    # Keyless records are refused on a compacted topic.
    time.sleep(0.5)
    p = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 20000, "retries": 0})
    keyless = []
    p.produce(topic, value=b"no key", partition=0, on_delivery=lambda err, msg: keyless.append(err))
    p.flush(20)
    keyless_error = keyless[0].name() if keyless and keyless[0] is not None else None
    save({"records": [], "filler": 0})
    print(json.dumps({"described": shown, "bad_config_error": bad_error, "keyless_error": keyless_error}))
    ok = shown == wanted and keyless_error == "INVALID_RECORD" and bad_error == "INVALID_CONFIG"
    sys.exit(0 if ok else 1)

elif phase == "produce":
    keys, rounds, value_bytes, tombstones = (int(a) for a in args[:4])
    state = load()
    recs = []
    for r in range(rounds):
        for k in range(keys):
            v = ("k%d-r%d-" % (k, r)).ljust(value_bytes, "x")
            recs.append(("key-%d" % k, v))
    for k in range(tombstones):
        recs.append(("key-%d" % k, None))
    offsets = produce(recs)
    state["records"] += [[o, k, v] for o, (k, v) in zip(offsets, recs)]
    state["tombstoned"] = ["key-%d" % k for k in range(tombstones)]
    save(state)
    print(json.dumps({"produced": len(recs), "last_offset": offsets[-1]}))

elif phase == "fillers":
    nbytes = int(args[0])
    state = load()
    n = max(1, nbytes // 1000)
    first = state["filler"]
    recs = [("filler-%d" % i, ("f%d-" % i).ljust(1000, "y")) for i in range(first, first + n)]
    offsets = produce(recs)
    state["filler"] = first + n
    state["records"] += [[o, k, v] for o, (k, v) in zip(offsets, recs)]
    save(state)
    print(json.dumps({"fillers": n, "last_offset": offsets[-1]}))

elif phase == "verify":
    mode, deadline_s = args[0], float(args[1])
    state = load()
    latest = {}
    for o, k, v in state["records"]:
        if k not in latest or latest[k][0] < o:
            latest[k] = (o, v)
    expected = sorted(
        (o, k, v)
        for k, (o, v) in latest.items()
        if not (mode == "tombstones-gone" and v is None)
    )
    end = max(o for o, _, _ in state["records"]) + 1
    deadline = time.time() + deadline_s
    reads = 0
    got = []
    while True:
        reads += 1
        c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "verify-%f" % time.time(),
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
            }
        )
        c.assign([TopicPartition(topic, 0, 0)])
        got = []
        stop = time.time() + 30
        while time.time() < stop:
            m = c.poll(1.0)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    if m.offset() >= end:
                        break
                    continue
                got.append(("error", str(m.error())))
                break
            v = m.value()
            got.append((m.offset(), m.key().decode(), None if v is None else v.decode()))
            if m.offset() + 1 >= end:
                break
        c.close()
        if got == expected or time.time() >= deadline:
            break
        time.sleep(1.0)
    match = got == expected
    diff = []
    for a, b in zip(got, expected):
        if a != b:
            diff.append([a[:2] if isinstance(a, tuple) else a, b[:2]])
            if len(diff) >= 5:
                break
    offs = [g[0] for g in got if isinstance(g[0], int)]
    print(
        json.dumps(
            {
                "match": match,
                "reads": reads,
                "records": len(got),
                "expected": len(expected),
                "produced": len(state["records"]),
                "end": end,
                "gaps": sum(1 for a, b in zip(offs, offs[1:]) if b != a + 1),
                "diff": diff,
            }
        )
    )
    sys.exit(0 if match else 1)
else:
    sys.exit("unknown phase " + phase)
