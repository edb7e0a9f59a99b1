"""kafka-python consumer for tests/tests/cluster_clients.rs: reads every
partition of TOPIC from the beginning up to its end offset (asked at the
start), bootstrap = every node's Kafka listener.

  kp_cluster_consume.py BOOTSTRAP TOPIC PARTITIONS LIMIT_S

stdout as ck_cluster_consume.py."""
import sys, time
from kafka import KafkaConsumer, TopicPartition

bootstrap, topic, partitions, limit_s = sys.argv[1:5]
partitions, limit_s = int(partitions), float(limit_s)
c = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False,
                  group_id=None, auto_offset_reset="earliest")
tps = [TopicPartition(topic, q) for q in range(partitions)]
c.assign(tps)
ends = {tp.partition: off for tp, off in c.end_offsets(tps).items()}
for q, end in sorted(ends.items()):
    print(f"END {q} {end}")
c.seek_to_beginning(*tps)
pos = {q: 0 for q in range(partitions)}
records = 0
deadline = time.time() + limit_s
while time.time() < deadline and any(pos[q] < ends[q] for q in ends):
    for tp, msgs in c.poll(timeout_ms=500).items():
        for m in msgs:
            records += 1
            pos[tp.partition] = m.offset + 1
            print(f"REC {tp.partition} {m.offset} {m.value.decode()}")
c.close()
print(f"DONE {records}", flush=True)
