"""kafka-python: KafkaAdminClient create/delete topic, produce and consume,
a consumer group that commits and resumes. Prints one JSON line last."""
import json, sys
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

bootstrap, T = sys.argv[1], sys.argv[2]
out = {}
admin = KafkaAdminClient(bootstrap_servers=bootstrap)
admin.create_topics([NewTopic(T, 2, 1)])
out["created"] = T in admin.list_topics()
p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
for i in range(1000):
    p.send(T, key=b"k%d" % i, value=b"v%d" % i, headers=[("h", b"%d" % i)])
p.flush()
c = KafkaConsumer(T, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                  consumer_timeout_ms=5000, enable_auto_commit=False, group_id=None)
msgs = list(c)
c.close()
out["consumed"] = len(msgs)
out["intact"] = all(m.value == b"v" + m.key[1:] and m.headers == [("h", m.key[1:])] for m in msgs)
# A group: consume 600 records, commit, then a second consumer of the group
# gets exactly the remaining 400.
g = KafkaConsumer(T, bootstrap_servers=bootstrap, group_id="kpg", auto_offset_reset="earliest",
                  enable_auto_commit=False, consumer_timeout_ms=5000, max_poll_records=50)
first = []
for m in g:
    first.append(m)
    if len(first) >= 600:
        break
# Commit exactly what was consumed, per partition.
from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata
last = {}
for m in first:
    last[m.partition] = m.offset + 1
try:
    g.commit({TopicPartition(T, p): OffsetAndMetadata(o, "", -1) for p, o in last.items()})
except TypeError:
    g.commit({TopicPartition(T, p): OffsetAndMetadata(o, "") for p, o in last.items()})
g.close()
g2 = KafkaConsumer(T, bootstrap_servers=bootstrap, group_id="kpg", auto_offset_reset="earliest",
                   enable_auto_commit=False, consumer_timeout_ms=5000)
rest = list(g2)
g2.close()
out["group_first"] = len(first)
out["group_rest"] = len(rest)
out["group_union"] = len({(m.partition, m.offset) for m in first} | {(m.partition, m.offset) for m in rest})
lister = getattr(admin, "list_consumer_groups", None) or getattr(admin, "list_groups")
out["groups"] = sorted(str(g[0] if isinstance(g, tuple) else getattr(g, "group_id", getattr(g, "group", g))) for g in lister())
admin.delete_topics([T])
out["deleted"] = T not in admin.list_topics()
admin.close()
print(json.dumps(out))
