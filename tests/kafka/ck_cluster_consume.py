"""confluent-kafka consumer for tests/tests/cluster_clients.rs: reads every
partition of TOPIC from the beginning up to its high watermark (asked at
the start), bootstrap = every node's Kafka listener.

  ck_cluster_consume.py BOOTSTRAP TOPIC PARTITIONS LIMIT_S

stdout: "END partition high_watermark" per partition, one
"REC partition offset value" per record, then "DONE records"."""
import sys, time
from confluent_kafka import Consumer, TopicPartition

bootstrap, topic, partitions, limit_s = sys.argv[1:5]
partitions, limit_s = int(partitions), float(limit_s)
c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"cluster-clients-{time.time()}",
              "enable.auto.commit": False, "auto.offset.reset": "earliest"})
ends = {q: c.get_watermark_offsets(TopicPartition(topic, q), timeout=20)[1]
        for q in range(partitions)}
for q, end in ends.items():
    print(f"END {q} {end}")
c.assign([TopicPartition(topic, q, 0) for q in range(partitions)])
pos = {q: 0 for q in range(partitions)}
records = 0
deadline = time.time() + limit_s
while time.time() < deadline and any(pos[q] < ends[q] for q in ends):
    for m in c.consume(1000, 0.5):
        if m.error():
            continue
        records += 1
        pos[m.partition()] = m.offset() + 1
        print(f"REC {m.partition()} {m.offset()} {m.value().decode()}")
c.close()
print(f"DONE {records}", flush=True)
