"""confluent-kafka (librdkafka): an idempotent producer writes one record at
a time to partition 0 while its log fails once (the test sets
STROM_TEST_PARTITION_FAULT on the server) and the server reopens it. The
producer must see the retriable errors as retriable: every record is
delivered without an error, and each is stored exactly once, at the offset
reported. Prints one JSON summary line last.

Usage: ck_reopen.py BOOTSTRAP TOPIC RECORDS"""
import json, sys, time
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
admin = AdminClient({"bootstrap.servers": bootstrap})
for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
    f.result(20)
deadline = time.time() + 20
while time.time() < deadline:
    t = admin.list_topics(timeout=5).topics.get(topic)
    if t is not None and t.error is None and len(t.partitions) > 0:
        break
    time.sleep(0.1)

errors = []
delivered = []


def cb(err, msg):
    if err is not None:
        errors.append(str(err))
    else:
        delivered.append((msg.value().decode(), msg.offset()))


p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
              "acks": "all", "linger.ms": 0, "retry.backoff.ms": 50,
              "message.timeout.ms": 60000, "allow.auto.create.topics": False})
started = time.time()
unflushed = 0
for i in range(n):
    p.produce(topic, partition=0, value=b"r-%d" % i, on_delivery=cb)
    # One record per request.
    unflushed += p.flush(60)
took = time.time() - started

c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused-reopen",
              "enable.auto.commit": False})
low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
c.assign([TopicPartition(topic, 0, 0)])
stored = []
deadline = time.time() + 20
while time.time() < deadline and len(stored) < high:
    for m in c.consume(1000, 0.5):
        if m.error():
            continue
        stored.append((m.value().decode(), m.offset()))
c.close()
print(json.dumps({
    "errors": errors,
    "unflushed": unflushed,
    "delivered": delivered,
    "stored": stored,
    "low": low,
    "high": high,
    "seconds": took,
}))
