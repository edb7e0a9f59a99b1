"""``strom-py`` / ``python -m strom``: a small command line in the spirit of the ``strom`` CLI.

    strom-py [--server HOST:PORT] create TOPIC --partitions N
    strom-py [--server HOST:PORT] list
    strom-py [--server HOST:PORT] produce TOPIC [--partition P] [--key-separator SEP] [--acks A]
    strom-py [--server HOST:PORT] consume TOPIC [--partition P]
        [--from-beginning | --offset N] [--count N] [--format TEMPLATE]

``produce`` prints ``PARTITION OFFSET`` for every input line, in input order,
and places keys with murmur2 exactly as the Rust producer does.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from strom.client import EARLIEST, LATEST, Client
from strom.errors import StromError
from strom.frames import ConsumerRecord, partition_for_key
from strom.producer import Producer, RecordMetadata


def render(template: str, rec: ConsumerRecord) -> bytes:
    fields = {
        "key": rec.key if rec.key is not None else b"null",
        "value": rec.value if rec.value is not None else b"null",
        "offset": str(rec.offset).encode(),
        "partition": str(rec.partition).encode(),
        "timestamp": str(rec.timestamp_ms).encode(),
        "headers": b",".join(k.encode() + b"=" + v for k, v in rec.headers),
    }
    out = template.replace("\\t", "\t").replace("\\n", "\n").encode()
    for name, value in fields.items():
        out = out.replace(b"{" + name.encode() + b"}", value)
    return out + b"\n"


def main(argv: Optional[Sequence[str]] = None, prog: str = "strom-py") -> int:
    ap = argparse.ArgumentParser(prog=prog, description="Strom client (Python)")
    ap.add_argument("--server", default=os.environ.get("STROM_SERVER") or "127.0.0.1:9400")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create")
    c.add_argument("topic")
    c.add_argument("--partitions", type=int, default=1)
    sub.add_parser("list")
    p = sub.add_parser("produce")
    p.add_argument("topic")
    p.add_argument("--partition", type=int)
    p.add_argument("--key-separator")
    p.add_argument("--acks", choices=["none", "leader", "durable"], default="leader")
    k = sub.add_parser("consume")
    k.add_argument("topic")
    k.add_argument("--partition", type=int)
    k.add_argument("--from-beginning", action="store_true")
    k.add_argument("--offset", type=int)
    k.add_argument("--count", type=int)
    k.add_argument("--format", default="{value}")
    args = ap.parse_args(argv)
    out = sys.stdout.buffer
    try:
        if args.cmd == "create":
            with Client(args.server) as client:
                client.create_topic(args.topic, args.partitions)
            print("Created topic %s." % args.topic)
        elif args.cmd == "list":
            with Client(args.server) as client:
                for name in sorted(client.list_topics()):
                    print(name)
        elif args.cmd == "produce":
            sep = args.key_separator.encode() if args.key_separator else None
            results: List[Optional[RecordMetadata]] = []
            errors: List[Exception] = []
            with Producer(args.server, acks=args.acks, linger_ms=10) as producer:
                n = producer.partition_count(args.topic)
                rr = 0
                for line in sys.stdin.buffer.read().splitlines():
                    key, value = None, line
                    if sep and sep in line:
                        key, value = line.split(sep, 1)
                    if args.partition is not None:
                        part = args.partition
                    elif key is not None:
                        part = partition_for_key(key, n)
                    else:
                        part, rr = rr % n, rr + 1
                    i = len(results)
                    results.append(None)

                    def done(err: Optional[Exception], md: Optional[RecordMetadata], i: int = i) -> None:
                        if err is not None:
                            errors.append(err)
                        results[i] = md

                    producer.produce(args.topic, value, key=key, partition=part, on_delivery=done)
                producer.flush()
            if errors:
                raise errors[0]
            for md in results:
                if md is not None and md.offset is not None:
                    out.write(b"%d %d\n" % (md.partition, md.offset))
        elif args.cmd == "consume":
            with Client(args.server) as client:
                n = client.partition_count(args.topic)
                parts = [args.partition] if args.partition is not None else list(range(n))
                pos: Dict[int, int] = {}
                for part in parts:
                    if args.offset is not None:
                        pos[part] = args.offset
                    else:
                        pos[part] = client.list_offset(args.topic, part, EARLIEST if args.from_beginning else LATEST)
                printed = 0
                while args.count is None or printed < args.count:
                    got = False
                    for part in parts:
                        records, _ = client.fetch(args.topic, part, pos[part], max_wait_ms=100)
                        for rec in records:
                            if args.count is not None and printed >= args.count:
                                break
                            out.write(render(args.format, rec))
                            printed += 1
                            pos[part] = rec.offset + 1
                            got = True
                    if got:
                        out.flush()
        out.flush()
        return 0
    except (StromError, OSError, ValueError) as e:
        print("%s: %s" % (prog, e), file=sys.stderr)
        return 1


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
