"""confluent-kafka (librdkafka) producer for tests/tests/cluster_clients.rs:
enable.idempotence=true, acks=all, bootstrap = every node's Kafka listener.
Produces "{prefix}-{i}" (i = 0, 1, ...) to partition i % PARTITIONS, paced,
until a line "stop" (or EOF) on stdin or LIMIT_S seconds, then flushes.

  ck_cluster_produce.py BOOTSTRAP TOPIC PARTITIONS PREFIX LIMIT_S

stdout: "PROGRESS n" (records of partition 0 acknowledged so far) while
producing; at the
end one "ACK value partition offset sent_ms acked_ms" per acknowledged
record, one "ERR value sent_ms error" per failed one, then
"DONE sent acked failed unflushed". Times are wall-clock ms."""
import os, sys, threading, time
from confluent_kafka import Producer

bootstrap, topic, partitions, prefix, limit_s = sys.argv[1:6]
partitions, limit_s = int(partitions), float(limit_s)
stop = threading.Event()


def watch_stdin():
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    stop.set()


threading.Thread(target=watch_stdin, daemon=True).start()
now_ms = lambda: int(time.time() * 1000)
sent_ms = {}
acked, failed = [], []
acked0 = [0]


def delivered(err, msg):
    v = msg.value().decode()
    if err is None:
        acked.append((v, msg.partition(), msg.offset(), now_ms()))
        if msg.partition() == 0:
            acked0[0] += 1
    else:
        failed.append((v, str(err).replace("\n", " ")))


config = {
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": 60000,
    "retry.backoff.ms": 50,
}
if os.environ.get("RDKAFKA_DEBUG"):
    config["debug"] = os.environ["RDKAFKA_DEBUG"]  # by hand, e.g. "eos,msg"
p = Producer(config)
deadline = time.time() + limit_s
i, reported = 0, 0
while not stop.is_set() and time.time() < deadline:
    v = f"{prefix}-{i}"
    try:
        p.produce(topic, value=v.encode(), partition=i % partitions, on_delivery=delivered)
    except BufferError:
        p.poll(0.05)
        continue
    sent_ms[v] = now_ms()
    i += 1
    p.poll(0)
    if acked0[0] - reported >= 20:
        reported = acked0[0]
        print(f"PROGRESS {reported}", flush=True)
    time.sleep(0.002)
left = p.flush(60)
for v, part, off, at in acked:
    print(f"ACK {v} {part} {off} {sent_ms[v]} {at}")
for v, e in failed:
    print(f"ERR {v} {sent_ms.get(v, 0)} {e}")
print(f"DONE {i} {len(acked)} {len(failed)} {left}", flush=True)
