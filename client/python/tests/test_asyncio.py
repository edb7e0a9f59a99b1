"""The asyncio variants against a real strom-server."""

from __future__ import annotations

import asyncio

import pytest

from strom import AsyncClient, AsyncConsumer, AsyncProducer
from strom.errors import ErrorCode, StromError
from strom.frames import partition_for_key


def test_asyncio_round_trip_with_keys_and_headers(server):
    async def go():
        async with await AsyncClient.connect(server.addr) as admin:
            await admin.create_topic("aio", 3)
            assert (await admin.list_topics()) == {"aio": 3}
        sent = {}
        async with AsyncProducer(server.addr, acks="durable", linger_ms=2) as p:
            futs = []
            for i in range(300):
                key = b"k%d" % (i % 13)
                futs.append((i, key, await p.send("aio", b"v%d" % i, key=key, headers=[("i", b"%d" % i)])))
            md = await p.send_and_wait("aio", b"last", partition=2)
            assert md.partition == 2 and md.offset is not None
            for i, key, f in futs:
                m = await f
                assert m.partition == partition_for_key(key, 3)
                sent[(m.partition, m.offset)] = (key, b"v%d" % i, [("i", b"%d" % i)])
        sent[(md.partition, md.offset)] = (None, b"last", [])
        c = await AsyncConsumer.connect(server.addr)
        await c.assign([("aio", p) for p in range(3)])
        got = {}
        for _ in range(100):
            for r in await c.poll(500):
                got[(r.partition, r.offset)] = (r.key, r.value, r.headers)
            if len(got) >= len(sent):
                break
        await c.close()
        assert got == sent

    asyncio.run(asyncio.wait_for(go(), 60))


def test_asyncio_group_members_share_and_commit(server):
    async def go():
        async with await AsyncClient.connect(server.addr) as admin:
            await admin.create_topic("ag", 4)
            async with AsyncProducer(server.addr) as p:
                for i in range(100):
                    await p.send("ag", b"%d" % i, key=b"%d" % i)
            a = await AsyncConsumer.connect(server.addr, group_id="ag", session_timeout_ms=6000)
            b = await AsyncConsumer.connect(server.addr, group_id="ag", session_timeout_ms=6000)
            events = []

            async def on_assign(parts):
                events.append(("a assign", parts))

            a.subscribe(["ag"], on_assign=on_assign, on_revoke=lambda parts: events.append(("a revoke", parts)))
            b.subscribe(["ag"])
            values = []
            for _ in range(60):
                ra, rb = await asyncio.gather(a.poll(300), b.poll(300))
                values += [int(r.value) for r in ra + rb]
                if len(a.assignment()) == 2 and len(b.assignment()) == 2 and len(values) >= 100:
                    break
            assert sorted(set(a.assignment()) | set(b.assignment())) == [("ag", p) for p in range(4)]
            assert sorted(set(values)) == list(range(100))
            assert events[-1] == ("a assign", a.assignment())
            await a.commit()
            await b.commit()
            await a.close()
            await b.close()
            committed = await admin.committed("ag")
            assert sum(committed.values()) == 100

    asyncio.run(asyncio.wait_for(go(), 90))


def test_asyncio_producer_reports_refusals(server):
    async def go():
        async with await AsyncClient.connect(server.addr) as admin:
            await admin.create_topic("one", 1)
        async with AsyncProducer(server.addr) as p:
            fut = await p.send("one", b"v", partition=3)
            with pytest.raises(StromError) as e:
                await fut
            assert e.value.code == ErrorCode.UnknownPartition

    asyncio.run(asyncio.wait_for(go(), 60))
