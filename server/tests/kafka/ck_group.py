"""confluent-kafka consumer group on a 4-partition topic.
  produce TOPIC FIRST COUNT : create the topic if needed, produce values FIRST..FIRST+COUNT
  consume TOPIC EXPECT      : two members of group "g" consume until EXPECT records
                              arrived, committing on revoke and at the end
Prints one JSON summary line last."""
import json, sys, threading, time
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, mode, topic = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "produce":
    first, count = int(sys.argv[4]), int(sys.argv[5])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, 4, 1)]).values():
        try:
            f.result(20)
        except Exception as e:  # already exists on the second round
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(first, first + count):
        p.produce(topic, key=b"%d" % i, value=b"%d" % i)
        if i % 1000 == 0:
            p.poll(0)
    print(json.dumps({"unflushed": p.flush(60)}))
    sys.exit(0)

expect = int(sys.argv[4])
lock = threading.Lock()
seen = {}
assigned = {}
def member(name):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "g",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    def on_revoke(consumer, parts):
        try:
            consumer.commit(asynchronous=False)
        except Exception:
            pass
    def on_assign(consumer, parts):
        with lock:
            assigned[name] = sorted(p.partition for p in parts)
    c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    deadline = time.time() + 60
    while time.time() < deadline:
        m = c.poll(0.2)
        with lock:
            if len(seen) >= expect and m is None:
                break
        if m is None or m.error():
            continue
        with lock:
            seen.setdefault(m.value().decode(), []).append(name)
    try:
        c.commit(asynchronous=False)
    except Exception:
        pass
    c.close()
threads = [threading.Thread(target=member, args=(f"m{i}",)) for i in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
values = sorted(int(v) for v in seen)
print(json.dumps({"distinct": len(seen), "duplicates": sum(1 for v in seen.values() if len(v) > 1),
                  "min": values[0] if values else None, "max": values[-1] if values else None,
                  "assigned": assigned,
                  "per_member": {m: sum(1 for v in seen.values() if m in v) for m in ("m0", "m1")}}))
