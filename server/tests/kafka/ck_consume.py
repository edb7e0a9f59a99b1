"""confluent-kafka: read COUNT records of every partition of TOPIC from the
start; print them as JSON [partition, offset, key, value, headers, ts]."""
import base64, json, sys, time
from confluent_kafka import Consumer, TopicPartition

bootstrap, topic, parts, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
b64 = lambda b: None if b is None else base64.b64encode(b).decode()
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False})
c.assign([TopicPartition(topic, p, 0) for p in range(parts)])
out = []
deadline = time.time() + 30
while len(out) < count and time.time() < deadline:
    for m in c.consume(1000, 0.5):
        if m.error():
            continue
        out.append([m.partition(), m.offset(), b64(m.key()), b64(m.value()),
                    [[k, b64(v)] for k, v in (m.headers() or [])], m.timestamp()[1]])
c.close()
out.sort()
print(json.dumps(out))
