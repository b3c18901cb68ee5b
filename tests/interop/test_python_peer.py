"""Interop with the Python ``fluent-logger`` package (an independent Forward client).

fluent-logger speaks only Message mode ``[tag, time, record]`` over plain TCP
or a Unix socket: no options, no ack, no handshake, no TLS (see
docs/forward.md). These tests drive every sender it has: the blocking sender,
the Event API, the background-thread sender, both logging handlers, its
``nanosecond_precision`` switch, float times, the legacy raw-string msgpack
format, its fallback record for unserialisable data, and its reconnect after
the receiver closed an idle connection. The blocking client runs in a thread;
the real server runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import msgpack
import pytest
from fluent import asynchandler, asyncsender, event, handler, sender

from qwen_fluent.forward import AuthConfig, Limits, Mode

from .conftest import start_server

pytestmark = pytest.mark.interop


def run(client: Callable[[int], Any], connections: int = 1, **server_kwargs):
    """Serve on loopback, run ``client(port)`` in a thread, then stop once everything it sent arrived.

    The client has returned once its bytes are in the kernel; the server has
    read them all once it has seen ``connections`` connections open and close.
    """

    async def main():
        server, sink = await start_server(**server_kwargs)
        stats = server.stats
        try:
            value = await asyncio.to_thread(client, server.port)
            for _ in range(500):
                if stats.connections_active == 0 and sum(stats.connections_opened.values()) >= connections:
                    break
                await asyncio.sleep(0.01)
        finally:
            await server.stop()
        return server, sink, value

    return asyncio.run(main())


RECORD = {"request_id": "r1", "path": "/v1/chat/completions", "input_tokens": 12, "status": "success"}


@pytest.mark.parametrize("nanosecond_precision", [False, True])
def test_sender_emit(nanosecond_precision):
    def client(port):
        before = time.time_ns()
        with sender.FluentSender("llm", host="127.0.0.1", port=port, nanosecond_precision=nanosecond_precision) as s:
            assert s.emit("req", RECORD), s.last_error
            assert s.emit("req", dict(RECORD, request_id="r2")), s.last_error
        return before, time.time_ns()

    server, sink, (before, after) = run(client)
    assert [m.mode for m in sink.messages] == [Mode.MESSAGE, Mode.MESSAGE]
    assert [m.tag for m in sink.messages] == ["llm.req", "llm.req"]
    assert [r["request_id"] for r in sink.records] == ["r1", "r2"]
    assert all(m.chunk is None and m.options == {} for m in sink.messages)
    for message in sink.messages:
        t = message.entries[0].time
        if nanosecond_precision:  # EventTime: sub-second part survives
            assert before / 1e9 - 1e-6 <= t <= after / 1e9 + 1e-6
        else:  # integer seconds
            assert t == int(t) and before // 10**9 <= t <= after // 10**9
    assert server.stats.messages == {"message": 2} and server.stats.errors == {}


@pytest.mark.parametrize("nanosecond_precision", [False, True])
def test_emit_with_float_time(nanosecond_precision):
    """A float time goes out as a msgpack float, or as an EventTime with nanosecond_precision."""

    def client(port):
        with sender.FluentSender("llm", host="127.0.0.1", port=port, nanosecond_precision=nanosecond_precision) as s:
            assert s.emit_with_time("req", 1_700_000_000.25, RECORD), s.last_error
            assert s.emit_with_time("req", 1_700_000_001, RECORD), s.last_error
            assert s.emit_with_time("req", sender.EventTime(1_700_000_002, 999_999_999), RECORD), s.last_error

    server, sink, _ = run(client)
    times = [m.entries[0].time for m in sink.messages]
    assert times == pytest.approx([1_700_000_000.25, 1_700_000_001, 1_700_000_002.999999999], abs=1e-6)


def test_event_api():
    def client(port):
        s = sender.FluentSender("app", host="127.0.0.1", port=port)
        try:
            event.Event("follow", {"from": "userA", "to": "userB"}, sender=s)
            event.Event("follow", {"from": "userC", "to": "userD"}, sender=s, time=1_700_000_000)
        finally:
            s.close()

    server, sink, _ = run(client)
    assert [m.tag for m in sink.messages] == ["app.follow", "app.follow"]
    assert sink.records == [{"from": "userA", "to": "userB"}, {"from": "userC", "to": "userD"}]
    assert sink.messages[1].entries[0].time == 1_700_000_000


def test_async_sender_many_events():
    """The background-thread sender: 500 events, each its own Message, all in order."""

    def client(port):
        s = asyncsender.FluentSender("llm", host="127.0.0.1", port=port, queue_maxsize=1000)
        for i in range(500):
            s.emit_with_time("bulk", 1_700_000_000 + i, {"i": i})
        s.close()  # flushes the queue, then joins the thread

    server, sink, _ = run(client)
    assert [r["i"] for r in sink.records] == list(range(500))
    assert server.stats.messages["message"] == 500


@pytest.mark.parametrize("module", [handler, asynchandler], ids=["handler", "asynchandler"])
@pytest.mark.parametrize("nanosecond_precision", [False, True])
def test_logging_handler(module, nanosecond_precision):
    def client(port):
        h = module.FluentHandler("llm.app", host="127.0.0.1", port=port, nanosecond_precision=nanosecond_precision)
        h.setFormatter(handler.FluentRecordFormatter({"level": "%(levelname)s", "logger": "%(name)s"}))
        log = logging.getLogger(f"interop.{module.__name__}.{nanosecond_precision}")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.addHandler(h)
        try:
            log.info({"request_id": "r9", "status": "success"})
            log.warning("disk almost full")
        finally:
            log.removeHandler(h)
            h.close()

    server, sink, _ = run(client)
    first, second = sink.records
    assert first["request_id"] == "r9" and first["level"] == "INFO" and first["status"] == "success"
    assert second["message"] == "disk almost full" and second["level"] == "WARNING"
    assert {m.tag for m in sink.messages} == {"llm.app"}


def test_unix_socket(tmp_path):
    path = str(tmp_path / "forward.sock")

    def client(_port):
        with sender.FluentSender("llm", host=f"unix://{path}") as s:
            assert s.emit("req", RECORD), s.last_error

    server, sink, _ = run(client, port=None, unix_socket=path)
    assert sink.records == [RECORD] and server.stats.connections_opened["unix"] == 1


def test_legacy_raw_strings():
    """``use_bin_type=False`` (msgpack's pre-2013 spec): every string and bytes value is a raw str."""

    def client(port):
        with sender.FluentSender("llm", host="127.0.0.1", port=port, msgpack_kwargs={"use_bin_type": False}) as s:
            assert s.emit("req", {"request_id": "r1", "blob": b"\x00\x01"}), s.last_error

    server, sink, _ = run(client)
    assert sink.messages[0].tag == "llm.req"
    assert sink.records[0]["request_id"] == "r1"
    # a raw str that was bytes on the client side still carries its exact bytes
    assert sink.records[0]["blob"].encode("utf-8", "surrogateescape") == b"\x00\x01"


def test_unserialisable_record_becomes_its_error_record():
    """fluent-logger replaces a record it cannot pack with a CRITICAL record; that record is received."""

    def client(port):
        with sender.FluentSender("llm", host="127.0.0.1", port=port) as s:
            assert s.emit("req", {"bad": {1, 2, 3}})  # a set is not msgpack
            return s.last_error

    server, sink, error = run(client)
    assert isinstance(error, TypeError)
    (record,) = sink.records
    assert record["level"] == "CRITICAL" and record["message"] == "Can't output to log"


def test_reconnects_after_idle_close():
    """The receiver closes an idle connection; fluent-logger notices, reconnects and resends what it buffered."""

    def client(port):
        with sender.FluentSender("llm", host="127.0.0.1", port=port) as s:
            assert s.emit("req", {"n": 1})
            time.sleep(0.6)  # longer than the idle timeout: the server closed the connection
            s.emit("req", {"n": 2})  # finds the socket closed; the bytes stay buffered
            s.emit("req", {"n": 3})  # reconnects and sends the buffer too

    server, sink, _ = run(client, connections=2, limits=Limits(idle_timeout=0.3))
    assert sorted(r["n"] for r in sink.records) == [1, 2, 3]
    assert server.stats.errors["idle_timeout"] >= 1
    assert server.stats.connections_opened["tcp"] == 2


def test_no_handshake_means_nothing_accepted():
    """fluent-logger cannot do the shared-key handshake: against a server that requires it, nothing is accepted."""

    def client(port):
        s = sender.FluentSender("llm", host="127.0.0.1", port=port)
        s.emit("req", RECORD)
        s.close()

    server, sink, _ = run(client, auth=AuthConfig("secret", "receiver"))
    assert sink.messages == []
    assert server.stats.auth_failures == {"invalid ping message": 1}


def test_wire_format_is_what_we_document():
    """The bytes fluent-logger writes: a 3-element Message, no option map (docs/forward.md)."""
    s = sender.FluentSender("llm", nanosecond_precision=True)
    packet = msgpack.unpackb(s._make_packet("req", sender.EventTime(1, 2), RECORD), raw=False)
    assert len(packet) == 3 and packet[0] == "llm.req"
    assert packet[1] == msgpack.ExtType(0, b"\x00\x00\x00\x01\x00\x00\x00\x02")
