"""confluent-kafka (librdkafka): admin create topic, then per compression
codec produce N records with enable.idempotence=true and read them all back.
Prints one JSON summary line last."""
import json, sys, time
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, n = sys.argv[1], int(sys.argv[2])
codecs = ["none", "gzip", "snappy", "lz4", "zstd"]
admin = AdminClient({"bootstrap.servers": bootstrap})
futures = admin.create_topics([NewTopic(f"idem-{c}", 3, 1) for c in codecs])
for f in futures.values():
    f.result(20)
out = {}
for codec in codecs:
    topic = f"idem-{codec}"
    errors = []
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                  "compression.type": codec, "linger.ms": 5})
    def cb(err, msg):
        if err is not None:
            errors.append(str(err))
    for i in range(n):
        while True:
            try:
                p.produce(topic, key=b"%d" % i, value=b"v%d-" % i + b"x" * 50,
                          headers=[("i", b"%d" % i)], on_delivery=cb)
                break
            except BufferError:
                p.poll(0.05)
        if i % 1000 == 0:
            p.poll(0)
    left = p.flush(60)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused-" + topic,
                  "enable.auto.commit": False})
    parts = [TopicPartition(topic, q, 0) for q in range(3)]
    ends = {q: c.get_watermark_offsets(TopicPartition(topic, q), timeout=10)[1] for q in range(3)}
    c.assign(parts)
    keys = set()
    count = 0
    bad = 0
    pos = {q: 0 for q in range(3)}
    deadline = time.time() + 60
    while time.time() < deadline and any(pos[q] < ends[q] for q in range(3)):
        for m in c.consume(10000, 0.5):
            if m.error():
                continue
            count += 1
            keys.add(m.key())
            pos[m.partition()] = m.offset() + 1
            if m.value() != b"v" + m.key() + b"-" + b"x" * 50 or m.headers() != [("i", m.key())]:
                bad += 1
    c.close()
    out[codec] = {"unflushed": left, "errors": len(errors), "first_error": errors[:1],
                  "end_offsets": sum(ends.values()), "consumed": count,
                  "distinct": len(keys), "bad": bad}
print(json.dumps(out))
