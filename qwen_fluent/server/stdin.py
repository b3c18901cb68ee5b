"""The stdin input: ``qwen-fluent serve --stdin`` reads log lines from standard input.

This is the article's second way in ("use tee or the log driver to connect it
to the standard output stream"), and the quickest way to watch one server::

    kubectl logs -f deploy/vllm | qwen-fluent serve --stdin
    qwen-fluent serve --stdin --linger < requests.log      # then scrape :8000/metrics

Lines are JSON objects (the article's request log), docker json-file or CRI
container log lines, or plain text (vLLM's and TGI's own logs), framed and
parsed by :class:`qwen_fluent.records.lines.LineReader`; each record goes to
the same sink as a Forward message's, as one :class:`~qwen_fluent.forward.Message`
per chunk read, so the normaliser, the metrics and
:class:`~qwen_fluent.stats.ReceiverStats` count it exactly as they count a
record sent over Forward. A line the reader cannot use (``{`` but not JSON, a
line past 1 MiB) is counted ``invalid``.

Why a thread: standard input may be a pipe, a terminal or a regular file
(``< file``), and the event loop can wait on the first two only (epoll refuses
regular files). So a daemon thread does the blocking reads and hands each
chunk to the loop, through a queue of :data:`QUEUE_CHUNKS` chunks: when the
loop (the sink) is slower than the input, the thread waits, and the writer of
the pipe is held back by the kernel's pipe buffer: nothing is dropped, memory
stays bounded at ``QUEUE_CHUNKS x READ_SIZE``. Parsing and the sink run on the
loop, the thread that owns the metrics, as for Forward.

Delivery: none beyond the pipe. A record is counted once the line that ends
it has been read; what is still in the pipe when the process is stopped is
lost. That is the trade of this input (docs/inputs.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable

from ..forward import Entry, Message, Mode
from ..records.lines import LineReader
from ..stats import ReceiverStats

log = logging.getLogger("qwen_fluent.server.stdin")

Sink = Callable[[Message], None]

#: Bytes asked of the file per read. 64 KiB is Linux's default pipe buffer:
#: one read takes what a writer could put in the pipe at once.
READ_SIZE = 64 * 1024
#: Chunks waiting for the loop at most (1 MiB in all with READ_SIZE).
QUEUE_CHUNKS = 16

#: ``ReceiverStats`` keys: the transport of ``connections_opened`` and the mode of ``messages``.
TRANSPORT = "stdin"


class StdinInput:
    """Reads ``fd`` to its end on a thread; :meth:`run` feeds each chunk's records to ``sink`` on the loop.

    ``tag`` is the tag every record carries: a Fluent Bit tail tag such as
    ``kube.var.log.containers.<pod>_<namespace>_<container>-<id>.log`` makes
    the normaliser label the records with that pod, as it does over Forward.
    """

    def __init__(self, sink: Sink, stats: ReceiverStats | None = None, *, fd: int = 0, tag: str = "stdin",
                 reader: LineReader | None = None) -> None:
        self.sink = sink
        self.stats = stats if stats is not None else ReceiverStats()
        self.fd = fd
        self.tag = tag
        self.reader = reader if reader is not None else LineReader()
        #: Set once the input was read to its end and every record went to the sink.
        self.finished = asyncio.Event()
        self._stopped = False
        self._unparsed_seen = 0  # reader.unparsed_total already counted as invalid
        self._queue: asyncio.Queue[bytes | None] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start reading (on the running loop)."""
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(QUEUE_CHUNKS)
        self.stats.connections_opened[TRANSPORT] += 1
        self.stats.connections_active += 1
        thread = threading.Thread(target=self._read, args=(loop, self._queue), name="stdin", daemon=True)
        thread.start()
        self._task = loop.create_task(self._consume())
        log.info("reading log lines from standard input (tag %r)", self.tag)

    def _read(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes | None]) -> None:
        """The reading thread: blocking reads, each chunk put on the loop's bounded queue."""
        while not self._stopped:
            try:
                chunk = os.read(self.fd, READ_SIZE)
            except OSError as exc:
                log.error("reading standard input failed: %s", exc)
                chunk = b""
            try:
                asyncio.run_coroutine_threadsafe(queue.put(chunk or None), loop).result()
            except (RuntimeError, asyncio.CancelledError):  # the loop is gone: the process is stopping
                return
            if not chunk:
                return

    async def _consume(self) -> None:
        assert self._queue is not None
        reader = self.reader
        try:
            while True:
                chunk = await self._queue.get()
                if self._stopped:
                    return
                if chunk is None:
                    self._feed(reader.close(), 0)
                    break
                self.stats.bytes_received += len(chunk)
                self._feed(reader.data(chunk), len(chunk))
        finally:
            self.stats.connections_active -= 1
            self.finished.set()
        log.info("standard input ended: %d lines, %d records, %d unparsed", reader.lines, reader.records,
                 reader.unparsed_total)

    def _feed(self, records: list[dict], nbytes: int) -> None:
        invalid = self.reader.unparsed_total - self._unparsed_seen
        self._unparsed_seen += invalid
        if not records and not invalid:
            return
        now = time.time()
        message = Message(self.tag, [Entry(now, record) for record in records], Mode.FORWARD, None, {}, nbytes,
                          {"unparsed_line": invalid} if invalid else {})
        try:
            self.sink(message)
        except Exception:
            self.stats.errors["stdin_sink_failed"] += 1
            log.exception("sink failed on %d records from standard input; they are not counted", len(records))
            return
        self.stats.messages[TRANSPORT] += 1
        if invalid:
            self.stats.records["invalid"] += invalid

    async def stop(self) -> None:
        """Stop taking input (a signal): what is still in the pipe is not read."""
        self._stopped = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
