"""One command that benchmarks qwen-fluent against its references, on the same records in the same run.

    python3 bench/run.py                 # full run: 500k records per case, 2000 label sets, 2 rounds
    python3 bench/run.py --smoke         # tiny run: checks counts, prints figures, judges nothing
    python3 bench/run.py --records 200000 --connections 4 --pods 300

What runs, each fed the same seeded records (bench/workload.py):

* ``qwen-fluent serve --no-gpu`` as its own process, fed over TCP by a
  client process (bench/forward_client.py) with acks on and a window of 4
  unacknowledged messages; the clock runs from the first byte to the last
  ack. Cases: kubernetes and flat records, each in PackedForward and
  CompressedPackedForward (1000 records per message), and the kubernetes
  PackedForward case again while a scraper GETs /metrics once a second.
  CPU seconds are the server's utime+stime from /proc/<pid>/stat over the
  run, peak RSS its VmHWM. Counts are then read back from its /metrics.
* The decode ceiling: plain msgpack decoding of the same messages in this
  process (outer message, gunzip where compressed, packed entries into Python
  objects; nothing else).
* The article's exporter (bench/article_exporter.py) as its own process, fed
  the same records as flat JSON lines on stdin; the clock runs from the first
  line written to its ``done`` line at EOF; CPU from /proc.
* The render of /metrics at 2000 request label sets (bench/scrape_cost.py,
  its own process): prometheus-client's generate_latest (text and
  OpenMetrics) against qwen-fluent's renderer on the same registry.

Every case runs ``--repeat`` times (default 2), in rounds, each run on fresh
processes; the fastest run of each is reported, and the counts of every run
are checked. Then each target of the issue is printed with its figure, the same-run
reference, the ratio and MET or MISSED. The exit code is 0 whether targets
are met or not (a benchmark reports, it does not gate), 1 when a count is
wrong (a record lost or counted twice makes every figure meaningless), and 2
when a process could not be started.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import multiprocessing
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from prometheus_client.parser import text_string_to_metric_families

import forward_client
import workload

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: What Prometheus 2.x sends as Accept: OpenMetrics first. The scraper asks
#: the way the real scraper does, gzip included.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
#: Seconds a process gets to become ready: imports plus binding two ports;
#: far more than needed, short enough to fail a broken setup quickly.
READY_TIMEOUT = 30.0
#: Seconds one intake run may take before the benchmark gives up on it: the
#: slowest case of a full run takes well under a minute on 2 cores.
RUN_TIMEOUT = 600.0
#: Seconds between scrapes: Prometheus' most frequent common scrape interval
#: is 15 s; once a second is the harsh case the issue asks for.
SCRAPE_INTERVAL = 1.0


class BenchError(Exception):
    """A process of the benchmark could not be started or did not answer."""


# -- the machine and the processes -------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{model}, {cores} cores available (os.cpu_count {os.cpu_count()}), "
            f"Python {platform.python_version()} ({platform.python_implementation()}), {platform.system()} "
            f"{platform.release()}")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (serve --workers N runs N worker processes under the parent)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    tree, todo = [pid], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        tree += kids
        todo += kids
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants (all their threads), from /proc/<pid>/stat."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command name: state is field 3, utime 14, stime 15 (1-based).
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def peak_rss(pid: int) -> int:
    """VmHWM of a process plus its descendants', in bytes (an upper bound of their peak together)."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    if not total:
        raise BenchError(f"no VmHWM for pid {pid}")
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            if response.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            return response.status, body
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scanner_state() -> str:
    """Whether qwen-fluent as this process imports it reads payloads with the C scanner (``serve`` then does
    too, unless ``QWEN_FLUENT_BENCH_SERVE`` or ``--baseline`` names another install)."""
    from qwen_fluent.forward.scan import DISABLE_ENV, PackedScanner

    if PackedScanner((), 0, 0).available:
        return "the C payload scanner (qwen_fluent.forward._scan) is built and in use"
    if os.environ.get(DISABLE_ENV):
        return f"the C payload scanner is turned off ({DISABLE_ENV}): the pure-Python path reads every payload"
    return "the C payload scanner is NOT built (no C compiler at install): the pure-Python path reads every payload"


def serve_command() -> list[str]:
    """The installed ``qwen-fluent``; ``QWEN_FLUENT_BENCH_SERVE`` overrides it (a command line, e.g. an
    older checkout's ``env PYTHONPATH=/tmp/old python3 -P -m qwen_fluent``, for a before/after in one run:
    ``-P`` keeps the working directory, this checkout, off the import path)."""
    override = os.environ.get("QWEN_FLUENT_BENCH_SERVE")
    if override:
        return shlex.split(override)
    exe = shutil.which("qwen-fluent")
    return [exe] if exe else [sys.executable, "-m", "qwen_fluent"]


def wait_ready(port: int, path: str, proc: subprocess.Popen, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"process exited with {proc.returncode} before it was ready:\n{log()}")
        try:
            if http_get(port, path, timeout=2.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise BenchError(f"not ready on {path} after {READY_TIMEOUT:.0f} s:\n{log()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- measurements -------------------------------------------------------------------------------


@dataclasses.dataclass
class Measured:
    """``records`` records taken in ``seconds`` of wall-clock time and ``cpu_s`` of CPU."""

    name: str
    records: int
    seconds: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.records * 1e6


@dataclasses.dataclass
class Intake(Measured):
    """One measured intake run: a receiver (ours or the exporter) taking ``records`` records."""

    peak_rss: int
    counted: dict[str, tuple[int, int]]  # check name -> (what the receiver says, what it must say)
    scrapes: list[float] = dataclasses.field(default_factory=list)
    scrape_errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def counts_ok(self) -> bool:
        return all(got == expected for got, expected in self.counted.values())


class Scraper(threading.Thread):
    """GETs /metrics every SCRAPE_INTERVAL seconds, as Prometheus asks, and keeps each latency."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._finish = threading.Event()

    def run(self) -> None:
        headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
        next_at = time.monotonic()
        while not self._finish.is_set():
            t0 = time.perf_counter()
            try:
                status, _ = http_get(self.port, "/metrics", headers)
            except OSError as exc:
                self.errors.append(str(exc))
            else:
                if status == 200:
                    self.latencies.append(time.perf_counter() - t0)
                else:
                    self.errors.append(f"HTTP {status}")
            next_at += SCRAPE_INTERVAL
            self._finish.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._finish.set()
        self.join()


def server_counts(port: int) -> tuple[int, int]:
    """accepted records and the sum of qwen_requests_total, as the server's /metrics says."""
    status, body = http_get(port, "/metrics")
    if status != 200:
        raise BenchError(f"/metrics answered {status}")
    accepted = requests = 0
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == "qwen_fluent_records_total" and s.labels.get("outcome") == "accepted":
                accepted += int(s.value)
            elif s.name == "qwen_requests_total":
                requests += int(s.value)
    return accepted, requests


@dataclasses.dataclass
class ServedRun:
    """What :func:`served_run` measured: the client's answer (after its ``"ok"``), the receiver's CPU
    seconds while the client ran, its peak RSS, and its counts read back from /metrics."""

    answer: tuple[Any, ...]
    cpu: float
    rss: float
    accepted: int
    requests: int


def served_run(name: str, extra: list[str], client: Callable[[Any, int, int], tuple[Callable[..., None], tuple]],
               command: list[str] | None = None, during: Callable[[int], Any] | None = None) -> ServedRun:
    """Start ``serve`` (``command``, default :func:`serve_command`) on free ports with ``extra`` flags,
    run ``client(writer, forward_port, extra_port)``'s target in a forked process once /readyz answers,
    and measure the receiver while it runs. ``extra`` may hold ``{extra_port}`` for one more port (the
    HTTP input's). ``during(metrics_port)`` starts something beside the client (a scraper) and returns
    an object with ``stop()``. The client sends ``("ok", ...)`` or ``("error", text)`` on its pipe."""
    forward_port, metrics_port, extra_port = free_port(), free_port(), free_port()
    command = (command or serve_command()) + [
        "serve", "--host", "127.0.0.1", "--port", str(forward_port), "--metrics-host", "127.0.0.1",
        "--metrics-port", str(metrics_port), "--no-gpu"] + [a.format(extra_port=extra_port) for a in extra]
    with tempfile.TemporaryFile() as log_file:
        def log() -> str:
            log_file.seek(0)
            return log_file.read()[-4000:].decode(errors="replace")

        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            wait_ready(metrics_port, "/readyz", proc, log)
            # fork: the child shares the parent's messages instead of pickling hundreds of MiB.
            ctx = multiprocessing.get_context("fork")
            reader, writer = ctx.Pipe(duplex=False)
            target, args = client(writer, forward_port, extra_port)
            child = ctx.Process(target=target, args=args)
            cpu0 = cpu_seconds(proc.pid)
            child.start()
            writer.close()
            beside = during(metrics_port) if during else None
            if not reader.poll(RUN_TIMEOUT):
                child.kill()
                raise BenchError(f"{name}: no answer from the client after {RUN_TIMEOUT:.0f} s:\n{log()}")
            answer = reader.recv()
            cpu1 = cpu_seconds(proc.pid)
            if beside:
                beside.stop()
            child.join()
            if answer[0] != "ok":
                raise BenchError(f"{name}: client failed: {answer[1]}\n{log()}")
            accepted, requests = server_counts(metrics_port)
            return ServedRun(tuple(answer[1:]), cpu1 - cpu0, peak_rss(proc.pid), accepted, requests)
        finally:
            stop(proc)


def serve_intake(stream: workload.Stream, window: int, connections: int, scrape: bool, workers: int = 1,
                 baseline: list[str] | None = None) -> Intake:
    """One run of ``serve`` (or of the ``baseline`` command line's, ``--baseline``) taking ``stream``."""
    scrapers: list[Scraper] = []

    def scraper(metrics_port: int) -> Scraper:
        scrapers.append(Scraper(metrics_port))
        scrapers[0].start()
        return scrapers[0]

    run = served_run(stream.name, ["--workers", str(workers)] if workers > 1 else [],
                     lambda writer, port, _: (forward_client.child, (
                         writer, port, stream.messages, stream.chunks, window, connections)),
                     command=baseline, during=scraper if scrape else None)
    seconds, acked = run.answer
    counted = {"messages acked": (acked, len(stream.messages)),
               'qwen_fluent_records_total{outcome="accepted"}': (run.accepted, stream.records),
               "sum(qwen_requests_total)": (run.requests, stream.requests)}
    name = f"qwen-fluent {stream.name}" + (" + scrapes" if scrape else "")
    if workers > 1:
        name += f" --workers {workers}, {connections} connections"
    if baseline:
        name = "baseline " + name
    return Intake(name, stream.records, seconds, run.cpu, run.rss, counted,
                  scrapers[0].latencies if scrapers else [], scrapers[0].errors if scrapers else [])


def exporter_intake(lines: bytes, records: int) -> Intake:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "article_exporter.py"), "--port", str(port)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        if proc.stderr.readline().strip() != b"ready":
            raise BenchError(f"article exporter did not start: {proc.stderr.read().decode(errors='replace')}")
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        view = memoryview(lines)
        step = 1 << 20
        try:
            for offset in range(0, len(view), step):
                proc.stdin.write(view[offset:offset + step])
            proc.stdin.close()
        except BrokenPipeError:
            raise BenchError(f"article exporter stopped reading: {proc.stderr.read().decode(errors='replace')}")
        done = proc.stderr.readline().split()
        seconds = time.perf_counter() - t0
        cpu1 = cpu_seconds(proc.pid)
        if len(done) != 2 or done[0] != b"done":
            raise BenchError(f"article exporter failed: {b' '.join(done).decode()}"
                             f"{proc.stderr.read().decode(errors='replace')}")
        status, body = http_get(port, "/metrics")
        total = sum(int(s.value) for f in text_string_to_metric_families(body.decode()) for s in f.samples
                    if s.name == "llm_requests_total")
        return Intake("article exporter (JSON lines, prometheus-client)", records, seconds, cpu1 - cpu0,
                      peak_rss(proc.pid), {"lines read": (int(done[1]), records),
                                           "sum(llm_requests_total)": (total, records)})
    finally:
        stop(proc)


@dataclasses.dataclass
class Ceiling(Measured):
    """The decode ceiling of one stream."""


def decode_ceiling(stream: workload.Stream, runs: int) -> Ceiling:
    """Plain msgpack decoding of a stream's messages and their packed entries, best of ``runs``."""
    best = (math.inf, math.inf)
    for _ in range(runs):
        entries = 0
        outer = msgpack.Unpacker(raw=False, max_buffer_size=2**31 - 1)
        c0, t0 = time.process_time(), time.perf_counter()
        for data in stream.messages:
            outer.feed(data)
            for _tag, payload, options in outer:
                if options.get("compressed") == "gzip":
                    payload = gzip.decompress(payload)
                inner = msgpack.Unpacker(raw=False, max_buffer_size=2**31 - 1)
                inner.feed(payload)
                for _entry in inner:
                    entries += 1
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        if entries != stream.records:
            raise BenchError(f"decode ceiling of {stream.name} decoded {entries} entries, not {stream.records}")
        best = min(best, (elapsed, cpu))
    return Ceiling(f"msgpack decode {stream.name}", stream.records, best[0], best[1])


def scrape_cost(label_sets: int, runs: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(HERE / "scrape_cost.py"), "--label-sets", str(label_sets),
                           "--runs", str(runs)], capture_output=True, text=True, timeout=RUN_TIMEOUT)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise BenchError(f"bench/scrape_cost.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}") from None
    result["returncode"] = proc.returncode
    return result


# -- printing -------------------------------------------------------------------------------------


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def fastest(runs: list[Intake]) -> Intake:
    """The run with the shortest wall-clock time; a run with wrong counts instead, so that it is seen."""
    wrong = [r for r in runs if not r.counts_ok]
    return wrong[0] if wrong else min(runs, key=lambda r: r.seconds)


def per_cpu_second(cpu_us: float) -> str:
    """Records per CPU second; a tiny run can finish inside one clock tick (10 ms) and read 0 CPU."""
    return f"{1e6 / cpu_us:,.0f}" if cpu_us > 0 else "n/a"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: a value that was measured, never an interpolation."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def verdict(met: bool, judge: bool) -> str:
    if not judge:
        return ""
    return "MET" if met else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500_000, help="records per case (default 500000)")
    parser.add_argument("--per-message", type=int, default=1000, help="records per Forward message")
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--window", type=int, default=4, help="unacknowledged messages per connection")
    parser.add_argument("--connections", type=int, default=1, help="client connections (messages round-robin)")
    parser.add_argument("--label-sets", type=int, default=2000, help="request label sets for the render case")
    parser.add_argument("--workers", default="1,2",
                        help="worker counts for the scaling section, comma-separated (each run with at least "
                             "2 connections per worker; default 1,2 for this 2-core machine: 1,2,4,8 on 16 cores)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of every case (fresh processes each time, cases interleaved); the fastest "
                             "is reported, every run's counts are checked (default 2)")
    parser.add_argument("--log-every", type=int, default=0, metavar="N",
                        help="in the kubernetes cases, a server's warning line after every N request logs of a "
                             "message, as servers write warnings between their request lines (default 0: none); "
                             "the records/s count them, the exporter gets the requests only")
    parser.add_argument("--stamps", choices=workload.STAMPS, default="shared",
                        help="the records' own timestamp: the article's one string for every record (default), "
                             "or each record its own, a millisecond apart, as real request logs stamp them")
    parser.add_argument("--baseline", metavar="COMMAND",
                        help="a second receiver's command line (e.g. another checkout's 'env PYTHONPATH=/tmp/old "
                             "python3 -P -m qwen_fluent'), run on the kubernetes cases in the same rounds: a "
                             "before/after measured in one run, each beside the same references")
    parser.add_argument("--smoke", action="store_true",
                        help="5k records, 20 label sets, 1 run: checks counts, prints figures, judges nothing")
    args = parser.parse_args()
    if args.smoke:
        args.records, args.label_sets, args.repeat = 5000, 20, 1
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    judge = not args.smoke
    runs = args.repeat

    print("qwen-fluent benchmark (bench/run.py)" + (" -- SMOKE: figures are not judged" if args.smoke else ""))
    print(f"machine: {machine()}")
    print(f"scanner: {scanner_state()}")
    print(f"serve:   {' '.join(serve_command())} serve --host 127.0.0.1 --port P --metrics-host 127.0.0.1 "
          f"--metrics-port Q --no-gpu")
    t0 = time.perf_counter()
    work = workload.build(args.records, args.per_message, args.pods, args.seed, args.stamps, args.log_every)
    print(f"records: {args.records:,} per case (seed {args.seed}), {args.per_message} per message, "
          f"{args.pods} pods, {args.stamps} timestamps"
          + (f", a log line after every {args.log_every} requests (kubernetes)" if args.log_every else "")
          + f"; ack on, window {args.window}, "
          f"{args.connections} connection(s); "
          f"built in {time.perf_counter() - t0:.1f} s")
    for s in work.streams.values():
        print(f"  {s.name:<36} {len(s.messages):5} messages, {mib(s.size):>10}, {s.size / s.records:5.0f} B/record")
    print(f"  {'flat JSON lines (article exporter)':<36} {args.records:5} lines,    {mib(len(work.json_lines)):>10}")
    sys.stdout.flush()

    main_key = (workload.KUBERNETES, workload.PACKED)
    gzip_key = (workload.KUBERNETES, workload.COMPRESSED)
    cases: dict[Any, Callable[[], Intake]] = {
        "main": lambda: serve_intake(work.streams[main_key], args.window, args.connections, scrape=False),
        "scraped": lambda: serve_intake(work.streams[main_key], args.window, args.connections, scrape=True),
        **{key: (lambda key=key: serve_intake(work.streams[key], args.window, args.connections, scrape=False))
           for key in (gzip_key, (workload.FLAT, workload.PACKED), (workload.FLAT, workload.COMPRESSED))},
        "exporter": lambda: exporter_intake(work.json_lines, args.records),
    }
    baseline = shlex.split(args.baseline) if args.baseline else None
    if baseline:
        print(f"baseline: {args.baseline} serve ... (the kubernetes cases again, in the same rounds)")
        for key in (main_key, gzip_key):
            cases[("baseline", key)] = (lambda key=key: serve_intake(work.streams[key], args.window,
                                                                     args.connections, scrape=False,
                                                                     baseline=baseline))
    scaling = [int(n) for n in args.workers.split(",") if n.strip()]
    for n in scaling:
        cases[("workers", n)] = (lambda n=n: serve_intake(work.streams[main_key], args.window,
                                                          max(args.connections, 2 * n), scrape=False, workers=n))
    try:
        ceilings = {key: decode_ceiling(s, runs) for key, s in work.streams.items()}
        # Round after round, every case once per round: a noisy minute on the shared machine then
        # slows one run of several cases rather than every run of one case.
        measured: dict[Any, list[Intake]] = {key: [] for key in cases}
        for _ in range(runs):
            for key, case in cases.items():
                measured[key].append(case())
        intakes = {key: fastest(results) for key, results in measured.items()}
        exporter = intakes.pop("exporter")
        scaled = {n: intakes.pop(("workers", n)) for n in scaling}
        before = {key: intakes.pop(("baseline", key)) for key in (main_key, gzip_key) if baseline}
        # Every scrape of every scraped run: more samples for the percentiles.
        intakes["scraped"].scrapes = [x for r in measured["scraped"] for x in r.scrapes]
        intakes["scraped"].scrape_errors = [x for r in measured["scraped"] for x in r.scrape_errors]
        render = scrape_cost(args.label_sets, runs)
    except (BenchError, OSError) as exc:
        print(f"\nbench/run.py: {exc}", file=sys.stderr)
        return 2

    keyed = {"main": main_key, "scraped": main_key}
    print(f"\nintake, each run on its own fresh process, fastest of {runs} (records/s over TCP from first byte to "
          "last ack; CPU = the receiver's utime+stime in that run)")
    print(f"  {'case':<58} {'records/s':>10} {'CPU s':>7} {'CPU us/rec':>10} {'rec/CPU-s':>10} {'peak RSS':>10}"
          f" {'decode ceiling':>15} {'ratio':>6}")
    for key, run in intakes.items():
        ceiling = ceilings[keyed.get(key, key)]
        print(f"  {run.name:<58} {run.rate:10,.0f} {run.cpu_s:7.2f} {run.cpu_us:10.2f} {per_cpu_second(run.cpu_us):>10}"
              f" {mib(run.peak_rss):>10}"
              f" {ceiling.rate:15,.0f} {run.rate / ceiling.rate:5.2f}x")
    print(f"  {exporter.name:<58} {exporter.rate:10,.0f} {exporter.cpu_s:7.2f} {exporter.cpu_us:10.2f}"
          f" {per_cpu_second(exporter.cpu_us):>10} {mib(exporter.peak_rss):>10}")
    print("decode ceiling (in this process, best of %d; gunzip included where compressed):" % runs)
    for c in ceilings.values():
        print(f"  {c.name:<58} {c.rate:10,.0f} {c.cpu_s:7.2f} {c.cpu_us:10.2f} {per_cpu_second(c.cpu_us):>10}")

    print(f"\ncounts (must equal the records sent; checked on each of the {runs} run(s) of a case, the fastest shown "
          "unless one was wrong)")
    counts_ok = True
    for run in [*intakes.values(), exporter]:
        ok = run.counts_ok
        counts_ok &= ok
        got = ", ".join(f"{k} {g:,}" + ("" if g == e else f" (expected {e:,})") for k, (g, e) in run.counted.items())
        print(f"  counts {'ok' if ok else 'WRONG'}: {run.name}: sent {run.records:,} records; {got}")

    if scaled:
        print(f"\nworkers (serve --workers N, kubernetes/PackedForward, fastest of {runs}; CPU and RSS of the "
              f"parent and its workers together; {os.cpu_count()} cores here)")
        base = scaled[min(scaled)]
        for n, run in scaled.items():
            counts_ok &= run.counts_ok
            print(f"  --workers {n:<3} {run.rate:10,.0f} rec/s  x{run.rate / base.rate:4.2f}   CPU {run.cpu_us:5.2f} us/rec"
                  f"   peak RSS {mib(run.peak_rss):>10}   counts {'ok' if run.counts_ok else 'WRONG'}")

    if before:
        print(f"\nbefore/after in this run (--baseline against this checkout's serve, fastest of {runs} each, "
              "the same references)")
        print(f"  {'case':<44} {'before rec/s':>12} {'after rec/s':>12} {'x':>6} {'before CPU us':>13}"
              f" {'after CPU us':>12} {'x exporter CPU, before -> after':>32}")
        for key, old in before.items():
            counts_ok &= old.counts_ok
            new = intakes["main" if key == main_key else key]
            print(f"  {'qwen-fluent ' + '/'.join(key):<44} {old.rate:12,.0f} {new.rate:12,.0f} "
                  f"{new.rate / old.rate:5.2f}x {old.cpu_us:13.2f} {new.cpu_us:12.2f} "
                  + (f"{old.cpu_us / exporter.cpu_us:>24.2f} -> {new.cpu_us / exporter.cpu_us:.2f}"
                     if exporter.cpu_us > 0 else f"{'n/a':>24}")
                  + ("" if old.counts_ok else "   baseline counts WRONG"))

    main_run, scraped = intakes["main"], intakes["scraped"]
    lat = scraped.scrapes
    print(f"\nscrapes of /metrics once a second during the scraped runs (Prometheus' Accept, gzip): n={len(lat)}"
          + (f", {len(scraped.scrape_errors)} failed ({scraped.scrape_errors[0]})" if scraped.scrape_errors else ""))
    if lat:
        print("  latency " + "  ".join(f"p{p} {percentile(lat, p) * 1e3:.1f} ms" for p in (50, 95, 99))
              + f"  max {max(lat) * 1e3:.1f} ms")

    sets = render.get("label_sets", -1)
    print(f"\n/metrics render at {sets} request label sets ({render.get('series_text', 0):,} series, "
          f"{mib(render.get('client_text_bytes', 0))} text), best of {runs}, peak RSS of that process "
          f"{mib(render.get('peak_rss_bytes', 0))}")
    print(f"  registry: {render.get('registry')}; qwen-fluent's renderer reads the aggregator through "
          f"{render.get('ours_path')}")
    counts_ok &= render.get("returncode") == 0 and sets == args.label_sets
    if sets != args.label_sets:
        print(f"  counts WRONG: asked for {args.label_sets} label sets, the registry holds {sets}")
    ours_error = render.get("ours_error")
    for fmt, key in (("text", "text"), ("OpenMetrics", "openmetrics")):
        client_s = render[f"client_{key}_s"]
        if ours_error:
            print(f"  {fmt:<12} prometheus-client {client_s * 1e3:8.0f} ms   qwen-fluent n/a ({ours_error})")
        else:
            same = "same samples" if render[f"same_samples_{key}"] else "DIFFERENT samples"
            print(f"  {fmt:<12} prometheus-client {client_s * 1e3:8.0f} ms   qwen-fluent "
                  f"{render[f'ours_{key}_s'] * 1e3:8.0f} ms   {client_s / render[f'ours_{key}_s']:5.1f}x faster"
                  f"   ({same})")

    print("\ntargets" + (" (not judged in --smoke)" if not judge else ""))
    exporter_rate = exporter.rate
    rows: list[tuple[str, str, str, str, bool | None]] = []
    rows.append(("end to end, kubernetes, PackedForward, ack on, 1 worker >= 4x article exporter",
                 f"{main_run.rate:,.0f} rec/s", f"{exporter_rate:,.0f} rec/s",
                 f"{main_run.rate / exporter_rate:.2f}x", main_run.rate >= 4 * exporter_rate))
    main_ceiling = ceilings[main_key]
    rows.append(("end to end, kubernetes, PackedForward >= 1.5x the decode ceiling",
                 f"{main_run.rate:,.0f} rec/s", f"{main_ceiling.rate:,.0f} rec/s",
                 f"{main_run.rate / main_ceiling.rate:.2f}x", main_run.rate >= 1.5 * main_ceiling.rate))
    gz = intakes[gzip_key]
    rows.append(("CompressedPackedForward (gzip) >= 3x article exporter", f"{gz.rate:,.0f} rec/s",
                 f"{exporter_rate:,.0f} rec/s", f"{gz.rate / exporter_rate:.2f}x", gz.rate >= 3 * exporter_rate))
    for fmt, key in (("text", "text"), ("OpenMetrics", "openmetrics")):
        client_s = render[f"client_{key}_s"]
        name = f"render at {sets} label sets, {fmt}: >= 10x faster than generate_latest"
        if ours_error:
            rows.append((name, "n/a", f"{client_s * 1e3:,.0f} ms", "n/a", None))
        else:
            ours_s = render[f"ours_{key}_s"]
            rows.append((name, f"{ours_s * 1e3:,.0f} ms", f"{client_s * 1e3:,.0f} ms", f"{client_s / ours_s:.1f}x",
                         client_s >= 10 * ours_s))
    rows.append(("intake while scraped once a second >= 80 % of intake without", f"{scraped.rate:,.0f} rec/s",
                 f"{main_run.rate:,.0f} rec/s", f"{scraped.rate / main_run.rate:.0%}",
                 scraped.rate >= 0.8 * main_run.rate))
    worst = max(intakes.values(), key=lambda r: r.peak_rss)
    rows.append((f"peak RSS < 150 MB (largest of the serve runs: {worst.name.removeprefix('qwen-fluent ')})",
                 f"{worst.peak_rss / 1e6:.0f} MB", "150 MB", f"{worst.peak_rss / 150e6:.2f}",
                 worst.peak_rss < 150e6))
    rows.append(("CPU per record <= 1/4 of the article exporter's (kubernetes, PackedForward)",
                 f"{main_run.cpu_us:.2f} us", f"{exporter.cpu_us:.2f} us",
                 f"{main_run.cpu_us / exporter.cpu_us:.2f}" if exporter.cpu_us else "n/a",
                 main_run.cpu_us <= exporter.cpu_us / 4))
    print(f"  {'target':<84} {'figure':>14} {'reference':>14} {'ratio':>7}")
    for name, figure, reference, ratio, met in rows:
        mark = "n/a" if met is None and judge else verdict(bool(met), judge)
        print(f"  {name:<84} {figure:>14} {reference:>14} {ratio:>7}  {mark}")

    print(f"\ncounts: {'all exact' if counts_ok else 'WRONG (see above)'}")
    return 0 if counts_ok else 1


if __name__ == "__main__":
    sys.exit(main())
