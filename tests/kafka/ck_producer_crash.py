"""confluent-kafka (librdkafka) idempotent producer across SIGKILLs of the
server (tests/tests/producer_state_crash.rs kills and restarts it on the same
data directory and Kafka port meanwhile).

Creates TOPIC (PARTITIONS partitions, small segments so that rolls and
producer-state snapshots happen often), then produces uniquely numbered
values ("v-<n>") round-robin over the partitions with enable.idempotence,
acks=all and a message timeout far longer than the test, as fast as
--rate allows, until STOP_FILE exists. Then it flushes (bounded), reads
every partition from the start up to its high watermark, and prints one
JSON summary line last:

  produced, delivered, errors (delivery errors, first ones), fatal,
  stored, duplicates (count, sample: value -> copies), missing (delivered
  but not stored: count, sample), misplaced (stored elsewhere than the
  delivery report said: count, sample), unflushed, kills (per kill in
  KILLS_FILE: messages produced before it and delivered after it, i.e.
  whose delivery spanned the kill), txretries (librdkafka's retried
  requests) and resent (messages it transmitted more than once), from its
  last statistics, idemp (librdkafka's eos statistics),
  client_errors (error_cb, counted by name).

Usage: ck_producer_crash.py BOOTSTRAP TOPIC PARTITIONS STOP_FILE KILLS_FILE [RATE]"""
import json
import os
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
stop_file, kills_file = sys.argv[4], sys.argv[5]
rate = int(sys.argv[6]) if len(sys.argv) > 6 else 4000

admin = AdminClient({"bootstrap.servers": bootstrap})
configs = {"segment.bytes": "65536", "max.message.bytes": "65536"}
for f in admin.create_topics([NewTopic(topic, partitions, 1, config=configs)]).values():
    f.result(20)
deadline = time.time() + 20
while time.time() < deadline:
    t = admin.list_topics(timeout=5).topics.get(topic)
    if t is not None and t.error is None and len(t.partitions) == partitions:
        break
    time.sleep(0.1)

produced_at = {}  # value -> time of produce()
delivered = {}  # value -> (partition, offset, time of the report)
errors = []
client_errors = {}
fatal = []
stats = {}


def on_delivery(err, msg):
    v = msg.value().decode()
    if err is not None:
        errors.append("%s: %s" % (v, err))
    else:
        delivered[v] = (msg.partition(), msg.offset(), time.time())


def on_error(err):
    client_errors[err.name()] = client_errors.get(err.name(), 0) + 1
    if err.fatal():
        fatal.append(str(err))


def on_stats(s):
    stats["last"] = json.loads(s)


p = Producer({
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    "acks": "all",
    "max.in.flight.requests.per.connection": 5,
    "linger.ms": 2,
    "batch.size": 16384,
    "message.timeout.ms": 600000,
    "retry.backoff.ms": 50,
    "retry.backoff.max.ms": 200,
    "reconnect.backoff.ms": 20,
    "reconnect.backoff.max.ms": 200,
    "socket.timeout.ms": 5000,
    "topic.metadata.refresh.interval.ms": 1000,
    "statistics.interval.ms": 500,
    "allow.auto.create.topics": False,
    "error_cb": on_error,
    "stats_cb": on_stats,
})

n = 0
started = time.time()
chunk = max(1, rate // 100)
while not os.path.exists(stop_file):
    for _ in range(chunk):
        v = "v-%09d" % n
        produced_at[v] = time.time()
        while True:
            try:
                p.produce(topic, partition=n % partitions, value=v.encode(), on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        n += 1
    p.poll(0)
    # Pace to `rate` per second.
    ahead = n / rate - (time.time() - started)
    if ahead > 0:
        p.poll(ahead)
    if fatal:
        break

unflushed = p.flush(180)
# One more statistics interval, so that the last one counts every send.
p.poll(1.0)

kills = []
if os.path.exists(kills_file):
    with open(kills_file) as f:
        kills = [float(line) for line in f if line.strip()]
spans = []
for k in kills:
    spans.append(sum(1 for v, (_, _, at) in delivered.items() if produced_at[v] < k < at))

c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused-crash",
              "enable.auto.commit": False, "fetch.max.bytes": 4 << 20})
stored = {}  # value -> [(partition, offset)]
highs = []
for part in range(partitions):
    low, high = c.get_watermark_offsets(TopicPartition(topic, part), timeout=20)
    highs.append(high)
    c.assign([TopicPartition(topic, part, 0)])
    got = 0
    deadline = time.time() + 60
    while got < high and time.time() < deadline:
        for m in c.consume(10000, 0.5):
            if m.error():
                continue
            if m.offset() >= high:
                continue
            got += 1
            stored.setdefault(m.value().decode(), []).append((part, m.offset()))
    if got < high:
        errors.append("read %d of %d records of partition %d" % (got, high, part))
c.close()

dups = {v: len(at) for v, at in stored.items() if len(at) > 1}
missing = [v for v in delivered if v not in stored]
misplaced = [v for v, (part, off, _) in delivered.items()
             if v in stored and (part, off) not in stored[v]]
last = stats.get("last", {})
txretries = sum(b.get("txretries", 0) for b in last.get("brokers", {}).values())
# Messages transmitted, resends included, less those produced: how many
# librdkafka sent again (after a kill broke the connection they were on).
txmsgs = sum(q.get("txmsgs", 0)
             for t in last.get("topics", {}).values()
             for q in t.get("partitions", {}).values() if q.get("partition", -1) >= 0)
print(json.dumps({
    "produced": n,
    "delivered": len(delivered),
    "errors": errors[:20],
    "error_count": len(errors),
    "fatal": fatal,
    "stored": sum(len(a) for a in stored.values()),
    "highs": highs,
    "duplicates": len(dups),
    "duplicate_sample": dict(sorted(dups.items())[:10]),
    "missing": len(missing),
    "missing_sample": sorted(missing)[:10],
    "misplaced": len(misplaced),
    "misplaced_sample": sorted(misplaced)[:10],
    "unflushed": unflushed,
    "kills": spans,
    "txretries": txretries,
    "resent": max(0, txmsgs - n),
    "idemp": last.get("eos", {}),
    "client_errors": client_errors,
    "seconds": time.time() - started,
}))
