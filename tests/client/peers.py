"""Real socket peers that misbehave on purpose, for the client's recovery paths.

:class:`DroppingProxy` relays bytes between the client and the real receiver
and, on its first connection, cuts both sides when the receiver's first reply
(the ack) arrives, before relaying it: the receiver has taken the message, the
client never hears so. :class:`SilentPeer` accepts connections, reads what is
written and never answers. Both record what each connection carried, so a test
can check that a resend wrote the same bytes.
"""

from __future__ import annotations

import socket
import threading


class SilentPeer:
    """A listener that reads everything and never replies; ``received[i]`` is connection i's bytes."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received: list[bytearray] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            buf = bytearray()
            self.received.append(buf)
            t = threading.Thread(target=self._read, args=(conn, buf), daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _read(conn: socket.socket, buf: bytearray) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data

    def close(self) -> None:
        self._closed = True
        self.listener.close()


class DroppingProxy:
    """A relay to ``127.0.0.1:upstream_port`` that loses the first ack by closing its first connection."""

    def __init__(self, upstream_port: int, drop_connections: int = 1) -> None:
        self.upstream_port = upstream_port
        self.drop_connections = drop_connections
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        #: Bytes each client connection sent (relayed to the receiver), in order of connection.
        self.sent: list[bytearray] = []
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            index = len(self.sent)
            self.sent.append(bytearray())
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            drop = index < self.drop_connections
            threading.Thread(target=self._up, args=(client, upstream, self.sent[index]), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, drop), daemon=True).start()

    @staticmethod
    def _up(client: socket.socket, upstream: socket.socket, record: bytearray) -> None:
        try:
            while data := client.recv(65536):
                record += data
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            try:
                upstream.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _down(self, upstream: socket.socket, client: socket.socket, drop: bool) -> None:
        try:
            while data := upstream.recv(65536):
                if drop:
                    # The receiver acked: it has the records. Lose the ack and the connection.
                    self.dropped += 1
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            # shutdown() first: close() alone would not wake _up's recv() on this socket, and the
            # kernel would send nothing to the client until it returned.
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self.listener.close()
