#!/usr/bin/env python3
"""Produce and consume throughput of the Python package `strom`
(client/python, native protocol) beside confluent-kafka (librdkafka,
through Strom's Kafka listener), on the same server and the same topic in
the same run, printed as records/s, MB/s and the ratio strom / confluent.
When a release `strom-bench` is built, raw loopback TCP (128 KiB writes) is
measured first and every figure is also given as a ratio to it.

Usage: bench/python_clients.py [--records N] [--value-bytes B] [--cores C]
         [--acks 1|-1] [--rounds R] [--profile]
Needs a release strom-server (`cargo build --release -p strom-server`; or
STROM_SERVER_BIN) and `pip install confluent-kafka flatbuffers crc32c`.

Order (one topic, `--partitions` partitions): confluent-kafka produces N
records, strom produces N records (both: linger 5 ms, batches up to 1 MiB,
acks as given, no idempotence, no compression), then each consumer reads
all 2N records from the beginning. Both clients run in this Python process
on the same 2 cores as the server; librdkafka does its protocol work on its
own C threads, the strom package in Python. `--profile` prints the top
cProfile entries of the strom produce and consume phases.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release")
sys.path.insert(0, os.path.join(ROOT, "client", "python"))

import strom  # noqa: E402

TOPIC = "pybench"


def start_server(data_dir, cores):
    binary = os.environ.get("STROM_SERVER_BIN") or os.path.join(REL, "strom-server")
    p = subprocess.Popen(
        [binary, "--data-dir", data_dir, "--cores", str(cores), "--listen", "127.0.0.1:0",
         "--http", "127.0.0.1:0", "--kafka-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "STROM_LOG": os.environ.get("STROM_LOG", "warn")},
    )  # fmt: skip
    addrs = {}
    for line in p.stdout:
        m = re.match(r"listening (\w+)=(\S+)", line)
        if m:
            addrs[m.group(1)] = m.group(2)
        if line.startswith("ready"):
            break
    return p, addrs


def baseline():
    bench = os.path.join(REL, "strom-bench")
    if not os.path.exists(bench):
        return None
    out = tempfile.mkdtemp(prefix="strom-pybench-base-")
    js = os.path.join(out, "b.json")
    subprocess.run([bench, "baseline", "--dir", out, "--bytes", str(64 << 20), "--sync-ops", "50", "--tcp-secs", "2",
                    "--json", js], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    figs = {f["name"]: f["value"] for f in json.load(open(js))["figures"]}
    shutil.rmtree(out, ignore_errors=True)
    return figs["raw_tcp_loopback_128k"] * 1e9


def confluent_produce(kafka, n, value):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": kafka, "acks": str(ARGS.acks), "linger.ms": 5, "batch.size": 1 << 20,
                  "compression.type": "none", "enable.idempotence": False,
                  "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1 << 20})  # fmt: skip
    errors = []
    cb = lambda err, msg: errors.append(err) if err else None  # noqa: E731
    t0 = time.perf_counter()
    for i in range(n):
        while True:
            try:
                p.produce(TOPIC, value, key=b"%d" % i, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.001)
    assert p.flush(120) == 0
    dt = time.perf_counter() - t0
    assert not errors, errors[:3]
    return dt


def strom_produce(native, n, value):
    errors = []
    cb = lambda err, md: errors.append(err) if err else None  # noqa: E731
    p = strom.Producer(native, acks=ARGS.acks, linger_ms=5, batch_bytes=1 << 20, idempotent=False)
    p.partition_count(TOPIC)
    t0 = time.perf_counter()
    produce = p.produce
    for i in range(n):
        produce(TOPIC, value, key=b"%d" % i, on_delivery=cb)
    assert p.flush(120) == 0
    dt = time.perf_counter() - t0
    p.close()
    assert not errors, errors[:3]
    return dt


def confluent_consume(kafka, total, partitions):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": kafka, "group.id": "pybench-ck", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "fetch.max.bytes": 16 << 20,
                  "max.partition.fetch.bytes": 4 << 20})  # fmt: skip
    c.assign([TopicPartition(TOPIC, p, 0) for p in range(partitions)])
    got = size = 0
    t0 = time.perf_counter()
    deadline = time.monotonic() + 300
    while got < total and time.monotonic() < deadline:
        for m in c.consume(num_messages=10_000, timeout=1.0):
            if m.error():
                continue
            size += len(m.value())
            got += 1
    dt = time.perf_counter() - t0
    c.close()
    assert got == total, (got, total)
    return dt, size


def strom_consume(native, total, partitions):
    c = strom.Consumer(native, fetch_max_bytes=16 << 20, partition_max_bytes=4 << 20)
    c.assign([(TOPIC, p) for p in range(partitions)])
    got = size = 0
    t0 = time.perf_counter()
    deadline = time.monotonic() + 300
    while got < total and time.monotonic() < deadline:
        for r in c.poll(1000):
            size += len(r.value)
            got += 1
    dt = time.perf_counter() - t0
    c.close()
    assert got == total, (got, total)
    return dt, size


def profiled(fn, *args):
    prof = cProfile.Profile()
    prof.enable()
    try:
        return fn(*args)
    finally:
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(12)
        PROFILES.append((fn.__name__, s.getvalue()))


PROFILES: list = []
ARGS: argparse.Namespace


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--cores", type=int, default=1)
    ap.add_argument("--acks", type=int, default=1, choices=[1, -1])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    ARGS = a = ap.parse_args()
    tcp = baseline()
    value = b"x" * a.value_bytes
    n = a.records
    rows = {}
    for rnd in range(a.rounds):
        data = tempfile.mkdtemp(prefix="strom-pybench-")
        server, addrs = start_server(data, a.cores)
        try:
            with strom.Admin(addrs["native"]) as admin:
                admin.create_topic(TOPIC, a.partitions)
            run = (lambda f, *x: profiled(f, *x)) if a.profile and rnd == 0 else (lambda f, *x: f(*x))
            ck_p = confluent_produce(addrs["kafka"], n, value)
            st_p = run(strom_produce, addrs["native"], n, value)
            ck_c, ck_bytes = confluent_consume(addrs["kafka"], 2 * n, a.partitions)
            st_c, st_bytes = run(strom_consume, addrs["native"], 2 * n, a.partitions)
            assert ck_bytes == st_bytes == 2 * n * a.value_bytes
        finally:
            server.terminate()
            server.wait(30)
            shutil.rmtree(data, ignore_errors=True)
        for name, secs, count in (("produce_confluent", ck_p, n), ("produce_strom", st_p, n),
                                  ("consume_confluent", ck_c, 2 * n), ("consume_strom", st_c, 2 * n)):  # fmt: skip
            rows.setdefault(name, []).append(count / secs)
    med = {k: sorted(v)[len(v) // 2] for k, v in rows.items()}
    print(f"# python_clients: {n} records of {a.value_bytes} B per producer, {a.partitions} partition(s), "
          f"acks={a.acks}, {a.cores} shard(s), median of {a.rounds} round(s), crc32c={strom.CRC32C_IMPLEMENTATION}")
    if tcp:
        print(f"raw_tcp_loopback_128k   {tcp / 1e9:8.2f} GB/s  (baseline)")
    for k in ("produce_confluent", "produce_strom", "consume_confluent", "consume_strom"):
        bps = med[k] * a.value_bytes
        extra = f"  ratio_to_tcp {bps / tcp:.4f}" if tcp else ""
        print(f"{k:22s} {med[k]:10.0f} rec/s {bps / 1e6:8.1f} MB/s{extra}")
    print(f"ratio produce strom/confluent {med['produce_strom'] / med['produce_confluent']:.2f}")
    print(f"ratio consume strom/confluent {med['consume_strom'] / med['consume_confluent']:.2f}")
    for name, text in PROFILES:
        print(f"\n## cProfile of {name} (top by own time)")
        print("\n".join(line for line in text.splitlines() if line.strip())[:4000])


if __name__ == "__main__":
    main()
