"""Produce and consume over SASL_SSL (or SSL) with confluent-kafka ("ck") or
kafka-python ("kp"); or, with mode "badpass", time how long a wrong password
takes to fail. Prints one JSON line last.

usage: sec_clients.py CLIENT MODE BOOTSTRAP PROTOCOL MECHANISM USER PASSWORD CA TOPIC N
"""
import json, sys, time

client, mode, bootstrap, proto, mech, user, password, ca, topic, n = sys.argv[1:11]
n = int(n)
out = {"client": client, "mechanism": mech}


def ck_conf():
    c = {"bootstrap.servers": bootstrap, "security.protocol": proto,
         "ssl.ca.location": ca, "socket.timeout.ms": 10000}
    if proto.startswith("SASL"):
        c.update({"sasl.mechanisms": mech, "sasl.username": user, "sasl.password": password})
    return c


def kp_conf():
    c = {"bootstrap_servers": bootstrap, "security_protocol": proto, "ssl_cafile": ca,
         "request_timeout_ms": 15000}
    if proto.startswith("SASL"):
        c.update({"sasl_mechanism": mech, "sasl_plain_username": user,
                  "sasl_plain_password": password})
    return c


if client == "ck":
    from confluent_kafka import Producer, Consumer, TopicPartition, KafkaException
    from confluent_kafka.admin import AdminClient
    if mode == "badpass":
        # librdkafka reports an authentication failure through error_cb
        # (and keeps retrying); the first report is the answer.
        started = time.time()
        errs = []
        p = Producer(dict(ck_conf(), **{"error_cb": lambda e: errs.append(str(e))}))
        while not errs and time.time() - started < 20:
            p.poll(0.1)
        out["failed"] = bool(errs)
        out["error"] = errs[0] if errs else ""
        out["seconds"] = time.time() - started
    else:
        errors = []
        p = Producer(dict(ck_conf(), **{"acks": "all"}))
        for i in range(n):
            p.produce(topic, key=b"k%d" % i, value=b"v%d" % i,
                      on_delivery=lambda err, m: err and errors.append(str(err)))
            if i % 1000 == 0:
                p.poll(0)
        out["unflushed"] = p.flush(30)
        out["errors"] = len(errors)
        c = Consumer(dict(ck_conf(), **{"group.id": "sec-" + topic, "enable.auto.commit": False}))
        c.assign([TopicPartition(topic, 0, 0)])
        got = []
        deadline = time.time() + 30
        while len(got) < n and time.time() < deadline:
            m = c.poll(1.0)
            if m is None or m.error():
                continue
            got.append(m)
        c.close()
        out["consumed"] = len(got)
        out["intact"] = all(m.value() == b"v" + m.key()[1:] for m in got)
else:
    from kafka import KafkaProducer, KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient
    if mode == "badpass":
        started = time.time()
        try:
            a = KafkaAdminClient(**kp_conf())
            a.list_topics()
            out["failed"] = False
        except Exception as e:  # the error class differs between versions
            out["failed"] = True
            out["error"] = "%s: %s" % (type(e).__name__, e)
        out["seconds"] = time.time() - started
    else:
        p = KafkaProducer(acks="all", **kp_conf())
        futures = [p.send(topic, key=b"k%d" % i, value=b"v%d" % i) for i in range(n)]
        p.flush(30)
        out["errors"] = sum(1 for f in futures if f.failed())
        out["unflushed"] = sum(1 for f in futures if not f.is_done)
        c = KafkaConsumer(consumer_timeout_ms=5000, enable_auto_commit=False, group_id=None,
                          **kp_conf())
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        got = []
        deadline = time.time() + 30
        while len(got) < n and time.time() < deadline:
            for recs in c.poll(timeout_ms=1000).values():
                got.extend(recs)
        c.close()
        out["consumed"] = len(got)
        out["intact"] = all(m.value == b"v" + m.key[1:] for m in got)
print(json.dumps(out))
sys.stdout.flush()
import os
os._exit(0)  # no client teardown (a failed client may retry in its destructor)
