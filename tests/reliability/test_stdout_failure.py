"""Only the metrics path decides an ack: a failing ``--stdout`` writer is logged and counted, never a reason
to withhold the ack (issue 9: it made the client resend, and the records were counted again)."""

from __future__ import annotations

import io
import logging
import random
import subprocess

import pytest

from qwen_fluent.forward import Message, Mode
from qwen_fluent.forward.events import Entry
from qwen_fluent.stats import ReceiverStats
from qwen_fluent.stdout import LOG_EVERY, STDOUT_FAILED, StdoutSink
from tests.reliability.harness import Serve, total, value
from tests.reliability.test_restart import TAG, batch
from tests.support.forward import ForwardClient


def test_serve_with_a_closed_stdout_pipe_acks_and_counts_every_message_once() -> None:
    rng = random.Random(3)
    with Serve("--stdout", stdout=subprocess.PIPE) as serve:
        assert serve.proc is not None and serve.proc.stdout is not None
        serve.proc.stdout.close()  # the reader of the pipe is gone: every write fails with EPIPE
        with ForwardClient("127.0.0.1", serve.forward_port) as client:
            for k in range(10):  # each send waits for its ack on the same connection: no resend
                client.send(TAG, batch(rng, 20, k * 20), chunk=f"c{k}", packed=k % 2 == 1)
        got = serve.settled()
        log = serve.stderr()
    assert total(got, "qwen_requests_total") == 200
    assert value(got, "qwen_fluent_errors_total", reason=STDOUT_FAILED) == 10
    assert value(got, "qwen_fluent_errors_total", reason="sink_failed") == 0
    assert value(got, "qwen_fluent_acks_total") == 10
    assert log.count("cannot write records to stdout") == 1  # rate-limited: one line for the burst


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def message() -> Message:
    return Message(tag="t", entries=[Entry(1.0, {"a": 1}, None)], mode=Mode.FORWARD, chunk="c",
                   options={"chunk": "c"}, nbytes=20, invalid={})


def test_a_closed_stream_is_counted_and_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    stats = ReceiverStats()
    clock = Clock()
    sink = StdoutSink(stream, stats, clock=clock)
    sink(message())
    assert '"record": {"a": 1}' in stream.getvalue()
    stream.close()
    with caplog.at_level(logging.WARNING, logger="qwen_fluent.stdout"):
        for _ in range(5):
            sink(message())  # ValueError: I/O operation on closed file, returns normally
        clock.now += LOG_EVERY
        sink(message())
    assert sink.failures == 6 and stats.errors[STDOUT_FAILED] == 6
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "1 message(s) not printed" in lines[0] and "5 message(s) not printed" in lines[1]
