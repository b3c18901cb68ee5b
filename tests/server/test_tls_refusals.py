"""TLS handshakes the receiver refuses, and the one log line that says why and what to fix.

The receiver verifies client certificates strictly on every Python version
(``ServerConfig.ssl_context``), so a CA without ``keyUsage`` (what
``openssl req -x509`` makes on its defaults) is refused on 3.10 as on 3.13, with
the same warning. Each test connects a real ``ssl`` client over loopback and
waits, with a bound, for the server to have finished with the connection
before it looks at the log.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from pathlib import Path

import msgpack
import pytest

from qwen_fluent.server import ServerConfig
from qwen_fluent.server.forward import TLS_DOCS

from .certs import make_ca, make_leaf
from .conftest import read_for, start_server

REPO = Path(__file__).resolve().parents[2]
LOGGER = "qwen_fluent.server"

#: Loopback handshakes take milliseconds; this only bounds a broken test on a loaded machine.
WAIT = 10.0


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> dict[str, Path]:
    """A CA without keyUsage, and a client certificate it signed (otherwise well formed)."""
    d = tmp_path_factory.mktemp("legacy-tls")
    ca = make_ca(d, "legacy_ca", key_usage=False)
    crt, key = make_leaf(d, "legacy_client", "fluent-bit", "clientAuth", ca)
    return {"ca_crt": ca[0], "client_crt": crt, "client_key": key}


def forward_message(chunk: str) -> bytes:
    return msgpack.packb(["llm.tls", [[1_700_000_000, {"i": 1}]], {"chunk": chunk}])


async def exchange(port: int, client: ssl.SSLContext) -> bytes | None:
    """Handshake, send one message, read once: the server's ack, ``b""`` if it closed, ``None`` if TLS failed."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="localhost"), WAIT
        )
    except (ssl.SSLError, ConnectionError):
        return None
    try:
        writer.write(forward_message("c1"))
        reply = await asyncio.wait_for(reader.read(100), WAIT)
    except (ssl.SSLError, ConnectionError):
        # TLS 1.3: the client finishes its side first and hears of the refusal on its next read.
        return None
    finally:
        writer.close()
    return reply


async def until_logged(caplog: pytest.LogCaptureFixture, needle: str) -> None:
    """Wait (at most WAIT seconds) until the server logged a warning containing ``needle``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not warnings(caplog, needle):
        assert loop.time() < deadline, f"no warning containing {needle!r}: {caplog.text}"
        await asyncio.sleep(0.01)


def warnings(caplog: pytest.LogCaptureFixture, needle: str = "") -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.WARNING and needle in r.getMessage()]


def client_context(tls_files: dict[str, Path], cert: Path | None = None, key: Path | None = None,
                   ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca or tls_files["ca_crt"]))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def refused(tls_files, caplog, client: ssl.SSLContext, needle: str, client_ca: Path | None = None):
    """Run one connection against a mutual-TLS server; return (reply, sink, the matching warnings)."""

    async def main():
        server, sink = await start_server(tls_cert=str(tls_files["server_crt"]), tls_key=str(tls_files["server_key"]),
                                          tls_client_ca=str(client_ca or tls_files["ca_crt"]))
        try:
            reply = await exchange(server.port, client)
            await until_logged(caplog, needle)
        finally:
            await server.stop()
        return reply, sink

    caplog.set_level(logging.DEBUG, logger=LOGGER)
    reply, sink = asyncio.run(main())
    return reply, sink, warnings(caplog, "TLS handshake")


def test_a_ca_without_key_usage_is_refused_with_the_fix_named(tls_files, legacy, caplog):
    client = client_context(tls_files, legacy["client_crt"], legacy["client_key"])
    reply, sink, logged = refused(tls_files, caplog, client, "lacks keyUsage", client_ca=legacy["ca_crt"])
    assert not reply and sink.messages == []  # no ack, nothing taken
    assert logged == [
        "TLS handshake refused: client certificate chain rejected (OpenSSL: CA cert does not include key usage "
        "extension): the CA certificate lacks keyUsage; regenerate the CA with keyUsage=critical,keyCertSign,cRLSign "
        f"(see {TLS_DOCS})"
    ]


def test_the_same_client_is_accepted_once_its_ca_has_key_usage(tls_files, caplog):
    """The control for the test above: the same kind of client certificate, from a CA made by certs.make_ca."""

    async def main():
        server, sink = await start_server(tls_cert=str(tls_files["server_crt"]), tls_key=str(tls_files["server_key"]),
                                          tls_client_ca=str(tls_files["ca_crt"]))
        try:
            reply = await exchange(server.port, client_context(tls_files, tls_files["client_crt"],
                                                               tls_files["client_key"]))
        finally:
            await server.stop()
        return reply, sink

    caplog.set_level(logging.DEBUG, logger=LOGGER)
    reply, sink = asyncio.run(main())
    assert msgpack.unpackb(reply) == {"ack": "c1"}
    assert sink.records == [{"i": 1}]
    assert warnings(caplog) == []


def test_the_verify_flags_are_the_same_on_every_interpreter(tls_files, legacy):
    """Python 3.13's defaults, set explicitly: the same value whatever this Python's create_default_context does."""
    config = ServerConfig(tls_cert=str(tls_files["server_crt"]), tls_key=str(tls_files["server_key"]),
                          tls_client_ca=str(legacy["ca_crt"]))
    context = config.ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.verify_flags == ssl.VERIFY_X509_TRUSTED_FIRST | ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN


def test_a_client_certificate_not_for_client_auth_is_refused(tls_files, tmp_path, caplog):
    crt, key = make_leaf(tmp_path, "server_as_client", "fluent-bit", "serverAuth",
                         (tls_files["ca_crt"], tls_files["ca_key"]))
    reply, sink, logged = refused(tls_files, caplog, client_context(tls_files, crt, key), "clientAuth")
    assert not reply and sink.messages == []
    assert len(logged) == 1 and "unsuitable certificate purpose" in logged[0]
    assert "reissue it with extendedKeyUsage=clientAuth" in logged[0]


def test_a_client_certificate_from_another_ca_is_refused(tls_files, tmp_path, caplog):
    other = make_ca(tmp_path, "other_ca")
    crt, key = make_leaf(tmp_path, "stranger", "fluent-bit", "clientAuth", other)
    reply, sink, logged = refused(tls_files, caplog, client_context(tls_files, crt, key), "not signed by a CA")
    assert not reply and sink.messages == []
    assert len(logged) == 1 and "unable to get local issuer certificate" in logged[0]


def test_no_client_certificate_is_refused_with_what_to_configure(tls_files, caplog):
    reply, sink, logged = refused(tls_files, caplog, client_context(tls_files), "sent no certificate")
    assert not reply and sink.messages == []
    assert len(logged) == 1 and "tls.crt_file" in logged[0]


def test_a_client_that_refuses_the_server_certificate_is_told_apart(tls_files, tmp_path, caplog):
    """The client, not the receiver, refused: the line says which side to fix.

    The client is a blocking ``ssl`` socket: like Fluent Bit and Node, it sends
    its alert before closing (an asyncio client drops it with the connection).
    """
    other = make_ca(tmp_path, "unrelated_ca")
    client = client_context(tls_files, tls_files["client_crt"], tls_files["client_key"], ca=other[0])

    def connect(port: int) -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            try:
                client.wrap_socket(raw, server_hostname="localhost").close()
            except ssl.SSLCertVerificationError as exc:
                return exc.verify_message
        return "connected"

    async def main():
        server, sink = await start_server(tls_cert=str(tls_files["server_crt"]), tls_key=str(tls_files["server_key"]))
        try:
            outcome = await asyncio.to_thread(connect, server.port)
            await until_logged(caplog, "rejected this server's certificate")
        finally:
            await server.stop()
        return outcome, sink

    caplog.set_level(logging.DEBUG, logger=LOGGER)
    outcome, sink = asyncio.run(main())
    logged = warnings(caplog, "TLS handshake")
    assert outcome == "unable to get local issuer certificate" and sink.messages == []
    assert len(logged) == 1 and "TLSV1_ALERT_UNKNOWN_CA" in logged[0] and "tls.ca_file" in logged[0]


@pytest.mark.parametrize("payload,reason", [
    (forward_message("p1"), "plain_on_tls_port"),
    (b"POST /llm.tls HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", "http_on_forward_port"),
], ids=["plain-forward", "http"])
def test_a_peer_without_tls_on_the_tls_port_is_named_and_counted(tls_files, caplog, payload, reason):
    """Plain Forward (the client has ``tls off``) or HTTP on the TLS port: one warning naming it, one counted reason."""

    async def main():
        server, sink = await start_server(tls_cert=str(tls_files["server_crt"]), tls_key=str(tls_files["server_key"]),
                                          tls_client_ca=str(tls_files["ca_crt"]))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(payload)
            reply = await read_for(reader, WAIT)  # returns when the server has closed the connection
            writer.close()
        finally:
            await server.stop()
        return reply, sink, server.stats

    caplog.set_level(logging.DEBUG, logger=LOGGER)
    reply, sink, stats = asyncio.run(main())
    assert b"ack" not in reply and sink.messages == []
    assert stats.errors == {reason: 1}
    (line,) = warnings(caplog)
    assert reason in line and ("tls on" in line if reason == "plain_on_tls_port" else "HTTP" in line)


def test_a_probe_that_leaves_is_not_a_warning(tls_files, caplog):
    """A port scanner that connects and leaves without a byte is debug noise, not a named peer."""

    async def main():
        server, _ = await start_server(tls_cert=str(tls_files["server_crt"]), tls_key=str(tls_files["server_key"]))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.close()
            await writer.wait_closed()
            await asyncio.sleep(0.2)
        finally:
            await server.stop()
        return server.stats

    caplog.set_level(logging.DEBUG, logger=LOGGER)
    stats = asyncio.run(main())
    assert warnings(caplog) == [] and stats.errors == {}


def test_the_log_lines_point_at_a_section_that_exists():
    path, anchor = TLS_DOCS.split("#")
    headings = re.findall(r"^#+ (.+)$", (REPO / path).read_text(), flags=re.MULTILINE)
    assert anchor in {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
