#!/usr/bin/env python3
"""Produce throughput through Strom's Kafka listener with a librdkafka
producer (confluent-kafka), printed beside the native protocol's figure
measured in the same run, each as a ratio to raw loopback TCP
(`strom-bench baseline`, 128 KiB writes; the 1 MiB figure is the ceiling).

Usage: bench/kafka_throughput.py [--records N] [--value-bytes B] [--cores C]
         [--acks 1|-1] [--compression none|lz4|...]
Needs release builds of strom-server and strom-bench
(`cargo build --release -p strom-server -p strom-bench`) and
`pip install confluent-kafka flatbuffers crc32c`.

Both producers run in this Python process on the same cores as the server:
librdkafka batches and pipelines on its own threads (the Python call per
record is the bottleneck for small records); the native figure sends
prebuilt 1,000-record frames one request at a time with the synchronous
Python client, so its protocol work, not Python, dominates."""
import argparse, json, os, re, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
sys.path.insert(0, os.path.join(ROOT, "client", "python"))


def start_server(data_dir, cores):
    p = subprocess.Popen([os.path.join(REL, "strom-server"), "--data-dir", data_dir, "--cores", str(cores),
                          "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--kafka-listen", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, text=True)
    addrs = {}
    for line in p.stdout:
        m = re.match(r"listening (\w+)=(\S+)", line)
        if m:
            addrs[m.group(1)] = m.group(2)
        if line.startswith("ready"):
            break
    return p, addrs


def baseline():
    out = tempfile.mkdtemp(prefix="strom-kbench-base-")
    js = os.path.join(out, "b.json")
    subprocess.run([os.path.join(REL, "strom-bench"), "baseline", "--dir", out, "--bytes", str(64 << 20),
                    "--sync-ops", "50", "--tcp-secs", "2", "--json", js], check=True, stdout=subprocess.DEVNULL)
    figs = {f["name"]: f["value"] for f in json.load(open(js))["figures"]}
    shutil.rmtree(out, ignore_errors=True)
    return figs["raw_tcp_loopback_128k"] * 1e9, figs["raw_tcp_loopback_1m"] * 1e9


def kafka_produce(bootstrap, n, value_bytes, acks, compression):
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic("kbench", 1, 1)]).values():
        f.result(20)
    p = Producer({"bootstrap.servers": bootstrap, "acks": str(acks), "linger.ms": 5,
                  "batch.size": 1 << 20, "compression.type": compression,
                  "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1 << 20})
    value = b"x" * value_bytes
    errors = []
    cb = lambda err, msg: errors.append(err) if err else None
    t0 = time.perf_counter()
    for i in range(n):
        while True:
            try:
                p.produce("kbench", value, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.001)
    p.flush(120)
    dt = time.perf_counter() - t0
    assert not errors, errors[:3]
    return n * value_bytes / dt, n / dt


def native_produce(native, n, value_bytes, acks):
    from strom import Client, wire
    from strom.frames import encode_frame
    c = Client(native)
    c.create_topic("nbench", 1)
    per = 1000
    frame = encode_frame([(None, b"x" * value_bytes, None, None)] * per)
    conn = c.connection_for("nbench", 0)
    req = wire.produce(wire.ACKS_LEADER if acks == 1 else wire.ACKS_DURABLE, 30_000, [("nbench", 0, len(frame))])
    batches = max(1, n // per)
    t0 = time.perf_counter()
    for _ in range(batches):
        (r,) = wire.read_produce(conn.call(req, [frame]), 1)
        assert r.error == 0, r
    dt = time.perf_counter() - t0
    c.close()
    return batches * per * value_bytes / dt, batches * per / dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--value-bytes", type=int, default=1000)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--acks", type=int, default=1, choices=[1, -1])
    ap.add_argument("--compression", default="none")
    a = ap.parse_args()
    tcp128, tcp1m = baseline()
    data = tempfile.mkdtemp(prefix="strom-kbench-")
    server, addrs = start_server(data, a.cores)
    try:
        k_bps, k_rps = kafka_produce(addrs["kafka"], a.records, a.value_bytes, a.acks, a.compression)
        n_bps, n_rps = native_produce(addrs["native"], a.records, a.value_bytes, a.acks)
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(data, ignore_errors=True)
    print(f"# kafka_throughput: {a.records} records of {a.value_bytes} B, acks={a.acks}, "
          f"compression={a.compression}, {a.cores} shards")
    print(f"raw_tcp_loopback_128k      {tcp128 / 1e9:6.2f} GB/s   (baseline)")
    print(f"raw_tcp_loopback_1m        {tcp1m / 1e9:6.2f} GB/s   (ceiling)")
    print(f"kafka_produce_librdkafka   {k_bps / 1e6:8.1f} MB/s  {k_rps:10.0f} rec/s  ratio {k_bps / tcp128:.3f}")
    print(f"native_produce_python      {n_bps / 1e6:8.1f} MB/s  {n_rps:10.0f} rec/s  ratio {n_bps / tcp128:.3f}")


if __name__ == "__main__":
    main()
