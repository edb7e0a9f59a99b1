"""A fake TCP peer answers the handshake correctly and then sends broken
answers: every one is refused with ProtocolError (or ConnectionClosed), the
connection is closed, and nothing crashes, hangs or allocates what a forged
length asks for."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

import flatbuffers
import pytest

import strom
from strom import wire
from strom.aio import AsyncClient, AsyncConsumer
from strom.errors import ConnectionClosed, ProtocolError
from strom.frames import encode_frame
from strom.protocol import ApiVersionsResponse, FetchResponse, FetchResult, Request, Response
from strom.protocol.ResponseBody import ResponseBody


def response(cid, body_type, build):
    b = flatbuffers.Builder(256)
    body = build(b)
    Response.Start(b)
    Response.AddCorrelationId(b, cid)
    Response.AddBodyType(b, body_type)
    Response.AddBody(b, body)
    b.Finish(Response.End(b))
    return bytes(b.Output())


def api_versions(b):
    v = b.CreateString("fake")
    ApiVersionsResponse.Start(b)
    ApiVersionsResponse.AddMinVersion(b, 1)
    ApiVersionsResponse.AddMaxVersion(b, 1)
    ApiVersionsResponse.AddMessageBytesMax(b, 1 << 20)
    ApiVersionsResponse.AddServerVersion(b, v)
    return ApiVersionsResponse.End(b)


def fetch_response(bytes_len):
    def build(b):
        t = b.CreateString("t")
        FetchResult.Start(b)
        FetchResult.AddTopic(b, t)
        FetchResult.AddHighWatermark(b, 3)
        FetchResult.AddBytesLen(b, bytes_len)
        r = FetchResult.End(b)
        FetchResponse.StartResultsVector(b, 1)
        b.PrependUOffsetTRelative(r)
        v = b.EndVector()
        FetchResponse.Start(b)
        FetchResponse.AddResults(b, v)
        return FetchResponse.End(b)

    return build


def envelope(table, trailer=b""):
    return struct.pack("<II", 4 + len(table) + len(trailer), len(table)) + table + trailer


class FakePeer:
    """Accepts one connection, answers the handshake, then answers the next
    request with ``answer(cid)`` (raw bytes) and closes."""

    def __init__(self, answer):
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def read_request(self, conn):
        head = b""
        while len(head) < 8:
            chunk = conn.recv(8 - len(head))
            if not chunk:
                return None
            head += chunk
        total, fb_len = struct.unpack("<II", head)
        rest = b""
        while len(rest) < total - 4:
            chunk = conn.recv(total - 4 - len(rest))
            if not chunk:
                return None
            rest += chunk
        return Request.Request.GetRootAs(bytearray(rest[:fb_len]), 0).CorrelationId()

    def run(self):
        self.listener.settimeout(20)
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(20)
            cid = self.read_request(conn)
            conn.sendall(envelope(response(cid, ResponseBody.ApiVersionsResponse, api_versions)))
            cid = self.read_request(conn)
            if cid is not None:
                try:
                    conn.sendall(self.answer(cid))
                except OSError:
                    pass
            # Then wait for the client to close its side.
            try:
                conn.recv(1)
            except OSError:
                pass
        self.listener.close()


GOOD_FRAME = encode_frame([(b"k", b"v", [("h", b"1")], None)] * 3)


def corrupted_frame(cid):
    frame = bytearray(GOOD_FRAME)
    frame[100] ^= 0x01  # one payload bit
    return envelope(response(cid, ResponseBody.FetchResponse, fetch_response(len(frame))), bytes(frame))


CASES = {
    "corrupted frame": (corrupted_frame, ProtocolError),
    "forged 4 GiB length": (lambda cid: struct.pack("<II", 0xFFFFFFF0, 16) + b"\0" * 64, ProtocolError),
    "table longer than message": (lambda cid: struct.pack("<II", 20, 100) + b"\0" * 20, ProtocolError),
    "garbage table": (lambda cid: envelope(bytes([0xFF] * 40)), ProtocolError),
    "unknown correlation id": (
        lambda cid: envelope(response(cid + 7, ResponseBody.FetchResponse, fetch_response(0))),
        ProtocolError,
    ),
    "trailer shorter than declared": (
        lambda cid: envelope(response(cid, ResponseBody.FetchResponse, fetch_response(len(GOOD_FRAME) + 10)), GOOD_FRAME),
        ProtocolError,
    ),
    "truncated frame in trailer": (
        lambda cid: envelope(response(cid, ResponseBody.FetchResponse, fetch_response(len(GOOD_FRAME) - 5)), GOOD_FRAME[:-5]),
        ProtocolError,
    ),
    "wrong body type": (
        lambda cid: envelope(response(cid, ResponseBody.ApiVersionsResponse, api_versions)),
        ProtocolError,
    ),
    "closed mid-message": (lambda cid: struct.pack("<II", 500, 100) + b"\0" * 50, ConnectionClosed),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_blocking_client_refuses_bad_answers(case):
    answer, error = CASES[case]
    peer = FakePeer(answer)
    client = strom.Client(peer.addr, direct=False, request_timeout_ms=5_000)
    with pytest.raises(error):
        client.fetch("t", 0, 0)
    assert client.main.closed
    client.close()
    peer.thread.join(10)


@pytest.mark.parametrize("case", sorted(CASES))
def test_asyncio_client_refuses_bad_answers(case):
    answer, error = CASES[case]
    peer = FakePeer(answer)

    async def go():
        client = await AsyncClient.connect(peer.addr, request_timeout_ms=5_000)
        conn = client.main
        consumer = AsyncConsumer(client)
        # Assigned, with metadata, without asking the fake peer: its one bad
        # answer goes to the fetch.
        client._meta["t"] = wire.TopicInfo("t", 0, "", {}, [wire.PartitionInfo(0, 0, "", 0, 0, 0, 0, 0)])
        consumer._positions = {("t", 0): 0}
        if error is ConnectionClosed:
            assert await consumer._fetch_round(0) == []  # retried on the next round
        else:
            with pytest.raises(error):
                await consumer._fetch_round(0)
        assert conn.closed
        client.close()

    asyncio.run(go())
    peer.thread.join(10)


def test_good_answer_from_the_fake_peer_is_read():
    # The control case: the same peer with an intact frame is read normally.
    peer = FakePeer(lambda cid: envelope(response(cid, ResponseBody.FetchResponse, fetch_response(len(GOOD_FRAME))), GOOD_FRAME))
    client = strom.Client(peer.addr, direct=False)
    records, hw = client.fetch("t", 0, 0)
    assert hw == 3 and [(r.offset, r.key, r.value, r.headers) for r in records] == [(i, b"k", b"v", [("h", b"1")]) for i in range(3)]
    client.close()
    peer.thread.join(10)
