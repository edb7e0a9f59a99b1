"""kafka-python producer for tests/tests/cluster_clients.rs: acks=all,
retries, max 1 request in flight per connection, bootstrap = every node's
Kafka listener; IDEMPOTENT = 1 or 0 sets enable_idempotence (kafka-python
3.x has it and turns it on by default; 0 is the at-least-once producer).
Produces "{prefix}-{i}" to partition i % PARTITIONS, paced, until "stop"
(or EOF) on stdin or LIMIT_S seconds, then flushes.

  kp_cluster_produce.py BOOTSTRAP TOPIC PARTITIONS PREFIX LIMIT_S IDEMPOTENT

stdout as ck_cluster_produce.py ("PROGRESS n": partition 0's records)."""
import sys, threading, time
from kafka import KafkaProducer

bootstrap, topic, partitions, prefix, limit_s, idempotent = sys.argv[1:7]
partitions, limit_s, idempotent = int(partitions), float(limit_s), idempotent == "1"
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
lock = threading.Lock()


def on_ok(v):
    def f(md):
        with lock:
            acked.append((v, md.partition, md.offset, now_ms()))
            if md.partition == 0:
                acked0[0] += 1
    return f


def on_err(v):
    def f(e):
        with lock:
            failed.append((v, repr(e).replace("\n", " ")))
    return f


p = KafkaProducer(
    bootstrap_servers=bootstrap.split(","),
    acks="all",
    enable_idempotence=idempotent,
    retries=1000,
    max_in_flight_requests_per_connection=1,
    linger_ms=5,
    request_timeout_ms=10000,
    delivery_timeout_ms=60000,
    retry_backoff_ms=100,
    metadata_max_age_ms=5000,
)
deadline = time.time() + limit_s
i, reported = 0, 0
while not stop.is_set() and time.time() < deadline:
    v = f"{prefix}-{i}"
    sent_ms[v] = now_ms()
    fut = p.send(topic, value=v.encode(), partition=i % partitions)
    fut.add_callback(on_ok(v))
    fut.add_errback(on_err(v))
    i += 1
    with lock:
        n = acked0[0]
    if n - reported >= 20:
        reported = n
        print(f"PROGRESS {reported}", flush=True)
    time.sleep(0.002)
p.flush(60)
p.close(10)
with lock:
    for v, part, off, at in acked:
        print(f"ACK {v} {part} {off} {sent_ms[v]} {at}")
    for v, e in failed:
        print(f"ERR {v} {sent_ms.get(v, 0)} {e}")
    print(f"DONE {i} {len(acked)} {len(failed)} {i - len(acked) - len(failed)}", flush=True)
