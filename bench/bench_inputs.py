"""Each input's intake beside Forward's, on the same records in the same run: Forward, HTTP, stdin.

    python3 bench/bench_inputs.py                  # 200k records per case, 2 rounds
    python3 bench/bench_inputs.py --smoke          # 5k records, 1 round: checks counts, prints figures

What runs, each case on a fresh ``qwen-fluent serve --no-gpu`` process, fed
the flat records of bench/workload.py (the article's request lines, 1000 per
message or request):

* **Forward** (the reference): PackedForward messages over TCP, acks on, a
  window of 4, by bench/forward_client.py, as bench/run.py does; the clock
  runs from the first byte to the last ack.
* **HTTP**, as Fluent Bit's ``http`` output sends (one request at a time on a
  keep-alive connection; the clock runs from the first byte to the last
  ``200``): ``format msgpack`` (the same packed payloads as Forward's),
  ``format json_lines`` (``application/x-ndjson``, a ``date`` key first in
  each object), the same gzip'd (``compress gzip``), and ``format json``
  (an array).
* **stdin** (``serve --stdin --linger``): the same records as JSON lines
  written to its standard input; the clock runs from the first byte written
  to the receiver's ``standard input ended`` log line (every record counted).

CPU seconds are the receiver's utime+stime over the run, peak RSS its VmHWM
(bench/run.py's helpers). Every case's counts are read back from ``/metrics``
and must equal the records sent; a wrong count exits 1. Each figure is
printed with its ratio to Forward's in the same round of the same run.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench
import workload


def fluent_bit_bodies(work: workload.Workloads, per_request: int) -> dict[str, tuple[str, str, list[bytes]]]:
    """Each HTTP case: (Content-Type, Content-Encoding, bodies), as Fluent Bit's http output builds them."""
    packed = [msgpack.unpackb(m, raw=False)[1] for m in work.streams[(workload.FLAT, workload.PACKED)].messages]
    lines = work.json_lines.splitlines()
    objects: list[list[bytes]] = []
    for start in range(0, len(lines), per_request):
        group = []
        for i, line in enumerate(lines[start:start + per_request]):
            t = workload.EPOCH + (start + i) / 1000.0
            group.append(b'{"date":%.6f,' % t + line[1:])  # json_date_key date, first, as flb_pack does
        objects.append(group)
    ndjson = [b"\n".join(g) + b"\n" for g in objects]
    return {
        "msgpack": ("application/msgpack", "", packed),
        "json_lines": ("application/x-ndjson", "", ndjson),
        "json_lines gzip": ("application/x-ndjson", "gzip", [gzip.compress(b, workload.GZIP_LEVEL) for b in ndjson]),
        "json": ("application/json", "", [b"[" + b",".join(g) + b"]" for g in objects]),
    }


def post_all(out: Connection, port: int, content_type: str, encoding: str, bodies: list[bytes]) -> None:
    """Process entry point: POST every body in order on one keep-alive connection; send (ok, seconds, n200)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": content_type, "User-Agent": "Fluent-Bit"}
        if encoding:
            headers["Content-Encoding"] = encoding
        ok = 0
        t0 = time.perf_counter()
        for body in bodies:
            conn.request("POST", "/llm.inference", body=body, headers=headers)
            reply = conn.getresponse()
            reply.read()
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}")
            ok += 1
        seconds = time.perf_counter() - t0
        conn.close()
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        out.send(("error", f"{type(exc).__name__}: {exc}"))
    else:
        out.send(("ok", seconds, ok))
    finally:
        out.close()


def http_intake(name: str, content_type: str, encoding: str, bodies: list[bytes], records: int) -> bench.Intake:
    run = bench.served_run(name, ["--http-input-port", "{extra_port}"],
                           lambda writer, _, http_port: (post_all, (writer, http_port, content_type, encoding, bodies)))
    seconds, ok = run.answer
    counted = {"requests answered 200": (ok, len(bodies)),
               'qwen_fluent_records_total{outcome="accepted"}': (run.accepted, records),
               "sum(qwen_requests_total)": (run.requests, records)}
    return bench.Intake(f"HTTP {name}", records, seconds, run.cpu, run.rss, counted)


def stdin_intake(lines: bytes, records: int) -> bench.Intake:
    metrics_port = bench.free_port()
    command = bench.serve_command() + ["serve", "--stdin", "--linger", "--metrics-host", "127.0.0.1",
                                       "--metrics-port", str(metrics_port), "--no-gpu"]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    log: list[bytes] = []
    ended = threading.Event()
    ended_at: list[float] = []

    def watch() -> None:  # the receiver's log: the clock stops at "standard input ended"
        for line in proc.stderr:
            log.append(line)
            if b"standard input ended" in line and not ended_at:
                ended_at.append(time.perf_counter())
                ended.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        bench.wait_ready(metrics_port, "/readyz", proc, lambda: b"".join(log[-40:]).decode(errors="replace"))
        cpu0 = bench.cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        view = memoryview(lines)
        for offset in range(0, len(view), 1 << 20):
            proc.stdin.write(view[offset:offset + (1 << 20)])
        proc.stdin.close()
        if not ended.wait(bench.RUN_TIMEOUT):
            raise bench.BenchError("stdin: the receiver never logged the end of its input:\n"
                                   + b"".join(log[-40:]).decode(errors="replace"))
        seconds = ended_at[0] - t0
        cpu1 = bench.cpu_seconds(proc.pid)
        accepted, requests = bench.server_counts(metrics_port)
        counted = {'qwen_fluent_records_total{outcome="accepted"}': (accepted, records),
                   "sum(qwen_requests_total)": (requests, records)}
        return bench.Intake("stdin (serve --stdin, JSON lines)", records, seconds, cpu1 - cpu0,
                            bench.peak_rss(proc.pid), counted)
    finally:
        bench.stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000, help="records per case (default 200000)")
    parser.add_argument("--per-message", type=int, default=1000, help="records per Forward message or HTTP request")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the fastest run of each case is shown")
    parser.add_argument("--smoke", action="store_true", help="5k records, 1 round: checks counts, prints figures")
    args = parser.parse_args()
    if args.smoke:
        args.records, args.repeat = 5000, 1
    print("qwen-fluent inputs benchmark (bench/bench_inputs.py)" + (" -- SMOKE" if args.smoke else ""))
    print(f"machine: {bench.machine()}")
    work = workload.build(args.records, args.per_message, 1, args.seed)
    forward_stream = work.streams[(workload.FLAT, workload.PACKED)]
    bodies = fluent_bit_bodies(work, args.per_message)
    print(f"records: {args.records:,} flat request records per case (seed {args.seed}), {args.per_message} per "
          f"message or request")
    print(f"  {'Forward PackedForward':<28} {bench.mib(forward_stream.size):>10}")
    for name, (_, _, b) in bodies.items():
        print(f"  {'HTTP ' + name:<28} {bench.mib(sum(len(x) for x in b)):>10}")
    print(f"  {'stdin JSON lines':<28} {bench.mib(len(work.json_lines)):>10}")
    sys.stdout.flush()
    cases: dict[str, Any] = {
        "forward": lambda: bench.serve_intake(forward_stream, 4, 1, scrape=False),
        **{name: (lambda name=name, spec=spec: http_intake(name, spec[0], spec[1], spec[2], args.records))
           for name, spec in bodies.items()},
        "stdin": lambda: stdin_intake(work.json_lines, args.records),
    }
    measured: dict[str, list[bench.Intake]] = {key: [] for key in cases}
    try:
        for _ in range(args.repeat):
            for key, case in cases.items():
                measured[key].append(case())
    except (bench.BenchError, OSError) as exc:
        print(f"\nbench/bench_inputs.py: {exc}", file=sys.stderr)
        return 2
    best = {key: bench.fastest(runs) for key, runs in measured.items()}
    best["forward"].name = "Forward (PackedForward, acks on)"
    reference = best["forward"]
    print(f"\nintake, fastest of {args.repeat} (records/s first byte to last answer; CPU = the receiver's "
          "utime+stime in that run); ratio = this input / Forward, same run")
    print(f"  {'input':<40} {'records/s':>10} {'ratio':>6} {'CPU us/rec':>10} {'ratio':>6} {'peak RSS':>10}")
    for run in best.values():
        # The kernel counts CPU in 10 ms ticks: a smoke run's Forward reference can read 0.
        cpu_ratio = f"{run.cpu_us / reference.cpu_us:5.2f}x" if reference.cpu_us > 0 else "  n/a "
        print(f"  {run.name:<40} {run.rate:10,.0f} {run.rate / reference.rate:5.2f}x {run.cpu_us:10.2f}"
              f" {cpu_ratio} {bench.mib(run.peak_rss):>10}")
    counts_ok = True
    print("\ncounts (every run checked)")
    for key, runs in measured.items():
        for run in runs:
            counts_ok &= run.counts_ok
        run = best[key]
        got = ", ".join(f"{k} {g:,}" + ("" if g == e else f" (expected {e:,})") for k, (g, e) in run.counted.items())
        print(f"  counts {'ok' if all(r.counts_ok for r in runs) else 'WRONG'}: {run.name}: {got}")
    return 0 if counts_ok else 1


if __name__ == "__main__":
    sys.exit(main())
