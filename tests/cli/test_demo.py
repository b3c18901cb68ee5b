"""``qwen-fluent demo`` as a user runs it: a real process, under a pseudo-terminal and through a pipe.

Under a pty (``rich`` draws its live view) the screen must show request counts rising within seconds,
and SIGINT must end it with exit code 0 within two seconds, leaving no process and no open port behind.
Through a pipe it prints plain lines, and ``--duration`` ends it; its closing line's count of acked
records must equal what /metrics counted. The view's arithmetic (``histogram_quantile`` over buckets,
rates over a window) is checked against values worked out by hand from Prometheus' definition.
"""

from __future__ import annotations

import math
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from qwen_fluent.cli.demo import Scrape, Traffic, Window, quantile

#: Seconds the demo may take to show its first counts: a cold start of Python and the receiver on a
#: loaded 2-core CI machine takes a few; the first scrape comes one interval after that.
FIRST_COUNTS_S = 20.0

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def _read_available(fd: int, wait: float) -> bytes:
    ready, _, _ = select.select([fd], [], [], wait)
    if not ready:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the child closed the pty
        return b""


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_demo_under_a_terminal_shows_rising_counts_and_stops_on_sigint_within_two_seconds() -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the demo, as a user starts it in a terminal
        os.environ.update(COLUMNS="180", LINES="40", TERM="xterm-256color")
        os.execv(sys.executable, [sys.executable, "-m", "qwen_fluent", "demo", "--seed", "7"])
    screen = b""
    try:
        deadline = time.monotonic() + FIRST_COUNTS_S + 10
        counts: list[int] = []
        while time.monotonic() < deadline:
            screen += _read_available(fd, 0.2)
            text = ANSI.sub(b"", screen).decode("utf-8", "replace")
            counts = [int(n) for n in re.findall(r"requests (\d+) ", text)]
            if len(set(counts)) >= 3:
                break
        text = ANSI.sub(b"", screen).decode("utf-8", "replace")
        assert len(set(counts)) >= 3, f"no rising counts on screen:\n{text[-3000:]}"
        assert counts == sorted(counts) and counts[-1] > counts[0]
        url = re.search(r"metrics: (http://127\.0\.0\.1:(\d+)/metrics)", text)
        assert url, text[-2000:]
        metrics_port = int(url.group(2))
        assert _port_open(metrics_port)
        for column in ("req/s", "err %", "p50", "p95", "p99", "ttft p50", "tok/s in", "tok/s out"):
            assert column in text
        assert "qwen2.5-7b-instruct" in text and "all models" in text

        os.kill(pid, signal.SIGINT)
        t0 = time.monotonic()
        status = None
        while time.monotonic() - t0 < 5:
            screen += _read_available(fd, 0.05)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
        stopped_after = time.monotonic() - t0
        assert status is not None and done, "the demo did not exit after SIGINT"
        assert os.waitstatus_to_exitcode(status) == 0
        assert stopped_after < 2.0, f"took {stopped_after:.2f} s to stop"
        # pty.fork made the demo a session and group leader: nothing of it may be left in its group.
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
        assert not _port_open(metrics_port)
        assert "stopped: records acked" in ANSI.sub(b"", screen).decode("utf-8", "replace")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_demo_without_a_terminal_prints_lines_and_every_acked_record_is_counted() -> None:
    proc = subprocess.run([sys.executable, "-m", "qwen_fluent", "demo", "--duration", "4", "--interval", "0.5",
                           "--seed", "3"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.match(r"qwen-fluent demo: Forward on 127\.0\.0\.1:\d+, metrics on http://127\.0\.0\.1:\d+/metrics$",
                    lines[0])
    counts = [int(m.group(1)) for line in lines if (m := re.match(r"demo +[\d.]+s: requests (\d+) ", line))]
    assert len(counts) >= 4 and counts == sorted(counts) and counts[-1] > counts[0]
    assert "\x1b[" not in proc.stdout  # no terminal, no escape codes
    final = re.match(r"stopped: records acked (\d+) in (\d+) chunks, resent (\d+); /metrics counted (\d+) requests",
                     lines[-1])
    assert final, lines[-1]
    acked, chunks, resent, counted = map(int, final.groups())
    assert acked > 0 and chunks > 0
    # Each chunk was acked once; a resent chunk (none expected on loopback) would be counted twice.
    assert counted == acked if resent == 0 else counted >= acked


def test_demo_refuses_a_bad_flag_value_with_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "qwen_fluent", "demo", "--rate", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "qwen-fluent: error: --rate, --interval and --duration must be > 0\n"


# -- the view's arithmetic --------------------------------------------------------------------------


def test_quantile_interpolates_inside_the_bucket_as_prometheus_does() -> None:
    buckets = {0.1: 10.0, 0.5: 30.0, 1.0: 40.0, math.inf: 40.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (20 - 10) / 20)  # rank 20 in (0.1, 0.5]
    assert quantile(0.99, buckets) == pytest.approx(0.5 + 0.5 * (39.6 - 30) / 10)
    assert quantile(0.05, buckets) == pytest.approx(0.1 * 2 / 10)  # the first bucket starts at 0
    assert quantile(0.99, {0.1: 1.0, 0.5: 1.0, math.inf: 10.0}) == 0.5  # in +Inf: the highest finite bound
    assert quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    assert quantile(0.5, {}) is None


def test_the_window_gives_rates_and_quantiles_of_its_own_span_only() -> None:
    key = ("m", "p")
    w = Window(seconds=10, interval=1)
    old = Scrape(100.0, {(*key, "success"): 50, (*key, "error"): 0}, {key: 1000}, {key: 100},
                 {key: {1.0: 50, math.inf: 50}}, {})
    new = Scrape(105.0, {(*key, "success"): 70, (*key, "error"): 5}, {key: 2000}, {key: 350},
                 {key: {1.0: 50, math.inf: 75}}, {})
    w.add(old)
    w.add(new)
    total, row = w.rows()
    assert (row.model, row.pod, total.pod) == ("m", "p", "")
    assert row.requests == 75 and row.rate == pytest.approx(25 / 5)
    assert row.by_status == {"success": pytest.approx(4.0), "error": pytest.approx(1.0)}
    assert row.error_ratio == pytest.approx(0.2)
    assert (row.tokens_in, row.tokens_out) == (pytest.approx(200), pytest.approx(50))
    # the 25 requests of the window all took more than 1 s: every quantile is the highest finite bound
    assert row.p50 == row.p99 == 1.0
    # a scrape older than the window falls out of it
    w.add(Scrape(120.0, new.requests, new.tokens_in, new.tokens_out, new.duration, {}))
    assert [s.at for s in w.scrapes] == [105.0, 120.0]


def test_traffic_is_the_same_for_the_same_seed_and_shaped_like_the_kubernetes_filter_output() -> None:
    def draw(seed: int) -> list[dict]:
        traffic = Traffic(seed, rate=200)
        out = []
        for pod, events in sorted(traffic.tick(1_733_500_000.0, 1.0).items(), key=lambda kv: kv[0].name):
            out += [{k: v for k, v in r.items() if k not in ("time", "timestamp")} for _, r in events]
        return out

    a, b = draw(5), draw(5)
    assert a == b and len(a) > 100
    assert draw(6) != a
    r = a[0]
    assert set(r["kubernetes"]) >= {"pod_name", "namespace_name", "labels", "host", "container_name", "docker_id"}
    assert r["kubernetes"]["labels"]["model"] == r["model"] and r["_p"] == "F" and r["stream"] == "stdout"
    assert len({x["kubernetes"]["pod_name"] for x in a}) >= 5 and len({x["model"] for x in a}) == 3
