"""How fast ``qwen-fluent analyze`` reads a log, and in how much memory, beside ``json.loads`` alone.

Run: ``python3 bench/bench_analyze.py [--size-mb 64] [--kind jsonl|cri|docker] [--keep FILE]``.

It writes a seeded log of about ``--size-mb`` MB (the structured request log
of the article, one JSON object a line; or the same lines in CRI or docker
json-file envelopes, a tenth of them split into partial lines), then runs,
each as its own process so that each has its own peak RSS:

* ``qwen-fluent analyze FILE --format json`` (the whole path: framing, line
  reader, normaliser, columns, percentiles, the JSON summary);
* the reference: ``for line in file: json.loads(line)`` over the same file,
  the least any JSON-lines reader in Python does.

It prints lines/s, MB/s and peak RSS (``ru_maxrss`` of that process, from
``wait4``) for both, the ratio, and checks that the analysis counted every
request written (exit 1 if not: a figure over a wrong count means nothing).
The default size takes well under a minute; ``--size-mb 1024`` is the 1 GB
figure of docs/analyze.md. The file is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

BASE = 1743848625.0  # 2025-04-05T10:23:45Z
MODELS = ("qwen2.5-7b-instruct", "llama-3-8b-instruct", "mistral-7b-instruct")
PATHS = ("/v1/chat/completions", "/v1/completions")
STATUSES = ("success",) * 18 + ("error", "timeout")

# The reference reads the same file and parses the JSON in each line with json.loads, the least
# any Python reader of that format does: the line itself (jsonl), the text after the CRI prefix
# (partial parts skipped: they are not JSON alone), the docker envelope and then its "log".
REFERENCE = """
import json, sys
kind, count = sys.argv[2], 0
with open(sys.argv[1], "rb") as f:
    for line in f:
        if kind == "jsonl":
            json.loads(line)
        elif kind == "cri":
            parts = line.split(b" ", 3)
            if parts[2] == b"F":
                try:
                    json.loads(parts[3])
                except ValueError:
                    pass  # the tail of a joined line
        else:
            log = json.loads(line)["log"]
            if log.endswith("\\n"):
                try:
                    json.loads(log)
                except ValueError:
                    pass  # the tail of a joined line
        count += 1
print(count)
"""


def write_log(path: str, size: int, kind: str, seed: int = 7) -> int:
    """A seeded log of about ``size`` bytes; returns the number of requests written."""
    rng = random.Random(seed)
    written = requests = 0
    stamp_cache: dict[int, str] = {}
    with open(path, "w", buffering=1024 * 1024) as out:
        while written < size:
            lines = []
            for _ in range(1000):
                second = int(requests / 200)  # 200 requests a second
                iso = stamp_cache.get(second)
                if iso is None:
                    stamp_cache.clear()
                    iso = stamp_cache[second] = datetime.fromtimestamp(BASE + second, timezone.utc).strftime(
                        "%Y-%m-%dT%H:%M:%SZ")
                queue = rng.randint(0, 300)
                inference = rng.randint(80, 9000)
                text = (f'{{"timestamp": "{iso}", "request_id": "req_{requests:012d}", "method": "POST", '
                        f'"path": "{rng.choice(PATHS)}", "model": "{rng.choice(MODELS)}", '
                        f'"input_tokens": {rng.randint(10, 8000)}, "output_tokens": {rng.randint(1, 1500)}, '
                        f'"total_time_ms": {queue + inference}, "queue_time_ms": {queue}, '
                        f'"inference_time_ms": {inference}, "time_to_first_token_ms": {rng.randint(20, 900)}, '
                        f'"gpu_memory_mb": {rng.randint(12000, 70000)}, "status": "{rng.choice(STATUSES)}"}}')
                requests += 1
                if kind == "jsonl":
                    lines.append(text)
                elif kind == "cri":
                    if rng.random() < 0.1:
                        cut = len(text) // 2
                        lines.append(f"{iso} stdout P {text[:cut]}")
                        text = text[cut:]
                    lines.append(f"{iso} stdout F {text}")
                else:
                    parts = [text + "\n"]
                    if rng.random() < 0.1:
                        cut = len(text) // 2
                        parts = [text[:cut], text[cut:] + "\n"]
                    lines.extend(json.dumps({"log": part, "stream": "stdout", "time": iso}) for part in parts)
            block = "\n".join(lines) + "\n"
            out.write(block)
            written += len(block)
    return requests


def run_measured(command: list[str]) -> tuple[float, float, int, bytes]:
    """Wall seconds, CPU seconds (user + system), peak RSS (bytes) and stdout of a child process."""
    with tempfile.TemporaryFile() as captured:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=captured, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        captured.seek(0)
        output = captured.read()
    if process.returncode not in (0, 1):
        raise SystemExit(f"{command[:4]} exited {process.returncode}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, output  # ru_maxrss is KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=64.0, help="size of the generated log (default 64)")
    parser.add_argument("--kind", choices=("jsonl", "cri", "docker"), default="jsonl")
    parser.add_argument("--keep", metavar="FILE", help="write the log here and keep it")
    args = parser.parse_args()

    if args.keep:
        path = args.keep
    else:
        with tempfile.NamedTemporaryFile(prefix="bench_analyze_", suffix=".log", delete=False) as handle:
            path = handle.name
    try:
        start = time.perf_counter()
        requests = write_log(path, int(args.size_mb * 1024 * 1024), args.kind)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))
        print(f"log: {size / 1e6:,.1f} MB, {lines:,} lines, {requests:,} requests ({args.kind}), "
              f"written in {time.perf_counter() - start:.1f} s")

        wall, cpu, rss, out = run_measured([sys.executable, "-m", "qwen_fluent", "analyze", path, "--format", "json"])
        summary = json.loads(out)
        ref_wall, ref_cpu, ref_rss, ref_out = run_measured([sys.executable, "-c", REFERENCE, path, args.kind])
    finally:
        if not args.keep and os.path.exists(path):
            os.unlink(path)

    rows = [
        ("qwen-fluent analyze", wall, cpu, rss),
        ("reference: json.loads per line", ref_wall, ref_cpu, ref_rss),
    ]
    # CPU seconds beside wall seconds: on a shared machine the wall clock also counts other
    # processes; lines per CPU second is the figure that travels. Both include start-up.
    print(f"{'':32} {'wall s':>7} {'CPU s':>7} {'lines/s':>10} {'lines/CPU s':>12} {'MB/s':>6} {'peak RSS MB':>12}")
    for name, seconds, cpu_seconds, peak in rows:
        print(f"{name:32} {seconds:7.2f} {cpu_seconds:7.2f} {lines / seconds:10,.0f} {lines / cpu_seconds:12,.0f} "
              f"{size / 1e6 / seconds:6.1f} {peak / 1e6:12.1f}")
    print(f"ratio analyze / reference: {ref_cpu / cpu:.2f}x the reference's lines per CPU second "
          f"({ref_wall / wall:.2f}x by wall clock), {rss / ref_rss:.2f}x its peak RSS")
    print(f"columns: {summary['stored_requests']:,} requests stored, p99 end-to-end "
          f"{summary['total_time_seconds']['p99']:.3f} s (exact: {summary['percentiles_exact']})")
    if summary["requests"] != requests or int(ref_out) != lines:
        print(f"COUNT MISMATCH: analyze counted {summary['requests']:,} of {requests:,} requests", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
