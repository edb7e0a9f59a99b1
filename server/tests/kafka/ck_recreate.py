"""confluent-kafka (librdkafka): one idempotent producer writes to a topic,
the topic is deleted and created again under the same name, and the same
producer writes again. Every record written after re-creation must be
stored in the new topic, at offsets from 0, and none may be reported as a
duplicate of the deleted topic's records. Prints one JSON summary line last.

Usage: ck_recreate.py BOOTSTRAP TOPIC BATCH_RECORDS"""
import json, sys, time
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
admin = AdminClient({"bootstrap.servers": bootstrap})


def wait_for(present, limit_s=20):
    deadline = time.time() + limit_s
    while time.time() < deadline:
        md = admin.list_topics(timeout=5)
        t = md.topics.get(topic)
        there = t is not None and t.error is None and len(t.partitions) > 0
        if there == present:
            return True
        time.sleep(0.1)
    return False


def create():
    for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        f.result(20)
    assert wait_for(True), "topic did not appear"


errors = []
delivered = []


def cb(err, msg):
    if err is not None:
        errors.append(str(err))
    else:
        delivered.append((msg.value().decode(), msg.offset()))


p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
              "acks": "all", "linger.ms": 50, "topic.metadata.refresh.interval.ms": 500,
              # The test creates the topic itself, both times.
              "allow.auto.create.topics": False})


def produce_round(tag):
    """n records in one batch (flushed together), then wait for them."""
    del delivered[:]
    for i in range(n):
        p.produce(topic, partition=0, value=b"%s-%d" % (tag.encode(), i), on_delivery=cb)
    left = p.flush(30)
    return left, list(delivered)


create()
# Before: two batches, sequences 0..n-1 and n..2n-1, offsets 0..2n-1.
before = []
for tag in ("old-a", "old-b"):
    left, d = produce_round(tag)
    assert left == 0, f"{tag}: {left} unflushed"
    before += d
for f in admin.delete_topics([topic]).values():
    f.result(20)
assert wait_for(False), "topic was not deleted"
# Topic ids are allocated in order and place partition p of topic id t on
# shard (t + p) % shards: a spacer topic between the two incarnations puts
# the new partition 0 on the shard that held the old one (with 2 shards),
# where the old producer state would be found if it were keyed by name.
for f in admin.create_topics([NewTopic(topic + "-spacer", 1, 1)]).values():
    f.result(20)
# Let the producer see the topic gone, then come back (new topic id).
p.list_topics(topic, timeout=5)
time.sleep(1.0)
create()
p.list_topics(topic, timeout=5)
time.sleep(1.0)
after = []
unflushed = 0
for tag in ("new-a", "new-b"):
    left, d = produce_round(tag)
    unflushed += left
    after += d

c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused-recreate",
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
    "before": before,
    "after_reported": after,
    "stored": stored,
    "low": low,
    "high": high,
}))
