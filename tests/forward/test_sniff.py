"""The core names a peer that speaks another protocol, and refuses oversize declarations at their header.

Byte-level tests of :mod:`qwen_fluent.forward.sniff` through
:class:`~qwen_fluent.forward.ForwardConnection`: the first bytes of an HTTP
request or a TLS ClientHello raise their own error, whichever way the bytes
are split; a Forward stream that merely starts like one is not mistaken; and
before the PING verifies, a connection may send only a PING-sized message.
"""

from __future__ import annotations

import hashlib
import ssl

import msgpack
import pytest

from qwen_fluent.forward import NEED_DATA, AuthConfig, AuthSucceeded, ForwardConnection, Heartbeat, Limits, Message
from qwen_fluent.forward import errors
from qwen_fluent.forward.sniff import check_frame, sniff_protocol


def client_hello() -> bytes:
    """A real ClientHello, made by Python's own TLS client into a memory BIO."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="receiver")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def feed_in_pieces(data: bytes, step: int, conn: ForwardConnection | None = None) -> list:
    conn = conn or ForwardConnection()
    events = []
    for i in range(0, len(data), step):
        conn.receive_data(data[i:i + step])
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
    return events


@pytest.mark.parametrize("step", [1, 3, 1000])
@pytest.mark.parametrize("request_line", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                                          b"POST /llm.a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
                                          b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"])
def test_an_http_request_is_named(request_line: bytes, step: int) -> None:
    with pytest.raises(errors.HttpOnForwardPort, match="HTTP request"):
        feed_in_pieces(request_line, step)


@pytest.mark.parametrize("step", [1, 2, 5000])
def test_a_tls_client_hello_is_named(step: int) -> None:
    hello = client_hello()
    assert hello[:2] == b"\x16\x03"
    with pytest.raises(errors.TlsOnPlainPort, match="tls off"):
        feed_in_pieces(hello, step)


def test_the_reasons_are_counted_reasons() -> None:
    for cls in (errors.HttpOnForwardPort, errors.TlsOnPlainPort, errors.PlainOnTlsPort):
        assert issubclass(cls, errors.WrongProtocol) and cls.reason in errors.REASONS


def test_a_forward_stream_is_not_mistaken() -> None:
    """A heartbeat, then messages: byte by byte, nothing is taken for HTTP or TLS."""
    data = b"\xc0" + msgpack.packb(["GET ", 1, {"a": 1}]) + msgpack.packb(["t", [[1, {"b": 2}]]])
    events = feed_in_pieces(data, 1)
    assert [type(e) for e in events] == [Heartbeat, Message, Message]


def test_a_lone_letter_waits_then_is_malformed_at_end_of_stream() -> None:
    conn = ForwardConnection()
    conn.receive_data(b"G")
    assert conn.next_event() is NEED_DATA  # could still be "GET "
    conn.receive_data(b"")
    with pytest.raises(errors.MalformedMessage):
        conn.next_event()


def test_sniff_protocol_decides_on_few_bytes() -> None:
    assert sniff_protocol(b"\x93", False) is True
    assert sniff_protocol(b"GE", False) is False and sniff_protocol(b"GE", True) is True
    assert sniff_protocol(b"GEX", False) is True
    assert sniff_protocol(b"\x16", False) is False


def test_check_frame_stops_at_the_end_of_the_first_message() -> None:
    """A large payload in the *next* message is that message's business, not this one's."""
    limits = Limits(max_message_bytes=100, max_str_bytes=100)
    head = b"\xc0" + b"\x92\xa1t\xc4\x60"  # a heartbeat, then a message with a 96-byte bin
    check_frame(head, limits, 100)  # the heartbeat is the whole first message
    with pytest.raises(errors.MessageTooLarge):
        check_frame(head[1:] + b"\x00", Limits(max_message_bytes=50, max_str_bytes=100), 50)


# -- before the PING ----------------------------------------------------------

KEY = "s3cret"


def ping(conn_helo: bytes, key: str = KEY, hostname: str = "client") -> bytes:
    helo = msgpack.unpackb(conn_helo, raw=False, unicode_errors="surrogateescape")
    nonce = helo[1]["nonce"]
    nonce = nonce.encode("utf-8", "surrogateescape") if isinstance(nonce, str) else nonce
    salt = b"0123456789abcdef"
    digest = hashlib.sha512(salt + hostname.encode() + nonce + key.encode()).hexdigest()
    return msgpack.packb(["PING", hostname, salt, digest, "", ""], use_bin_type=True)


def test_before_the_ping_only_a_ping_sized_message_is_taken() -> None:
    conn = ForwardConnection(auth=AuthConfig(shared_key=KEY, self_hostname="receiver"))
    conn.data_to_send()
    conn.receive_data(b"\x92\xa1t\xdb\x00\x00\x80\x00")  # a str of 32 KiB announced before authenticating
    with pytest.raises(errors.UnauthenticatedTooLarge):
        conn.next_event()


def test_before_the_ping_bytes_past_the_limit_are_refused_without_a_header() -> None:
    conn = ForwardConnection(auth=AuthConfig(shared_key=KEY, self_hostname="receiver"),
                             limits=Limits(max_unauthenticated_bytes=1024))
    conn.data_to_send()
    with pytest.raises(errors.UnauthenticatedTooLarge):
        # an array of 64k small ints never ends within 1 KiB
        conn.receive_data(b"\xdc\xff\xff" + b"\x01" * 2000)
        while conn.next_event() is not NEED_DATA:
            pass


def test_after_the_ping_the_message_limit_applies() -> None:
    conn = ForwardConnection(auth=AuthConfig(shared_key=KEY, self_hostname="receiver"))
    helo = conn.data_to_send()
    big = msgpack.packb(["t", [[1, {"log": "x" * 20_000}]]])
    events = feed_in_pieces(ping(helo) + big, 4096, conn)
    assert isinstance(events[0], AuthSucceeded) and isinstance(events[1], Message)
