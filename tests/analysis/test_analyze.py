"""``qwen-fluent analyze`` as a process, on seeded logs of every input kind, against ground truth.

The ground truth is computed here, from the values the generator wrote, without the package: the
status of each request is decided by the generator, durations are the generator's numbers in
seconds, and percentiles are numpy's (default linear method) over those numbers held as float32
(the documented column type) and, to a relative 1e-6, over the float64 numbers themselves.
"""

from __future__ import annotations

import gzip
import json
import os
import pty
import random
import select
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

STATUSES = ("success", "error", "client_error", "timeout", "cancelled", "unknown")
PERCENTILES = (50, 90, 95, 99)
BASE = 1743848625  # 2025-04-05T10:23:45Z
POD = "llm-inference-7d9f8b6c5-x2k4p"
KUBELET_NAME = f"{POD}_ml-serving_vllm-{'ab' * 32}.log"


@dataclass
class Truth:
    """What the generator wrote, request by request."""

    status: list[str] = field(default_factory=list)
    model: list[str] = field(default_factory=list)
    pod: list[str] = field(default_factory=list)
    timestamp: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)  # seconds, NaN where absent
    queue: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    input_tokens: list[int] = field(default_factory=list)  # -1 where absent
    output_tokens: list[int] = field(default_factory=list)
    engine_stats: int = 0
    log_lines: int = 0
    unparsed: int = 0

    def add(self, status: str, model: str, pod: str, stamp: float, total: float, queue: float, ttft: float,
            tokens_in: int, tokens_out: int) -> None:
        self.status.append(status)
        self.model.append(model)
        self.pod.append(pod)
        self.timestamp.append(stamp)
        self.total.append(total)
        self.queue.append(queue)
        self.ttft.append(ttft)
        self.input_tokens.append(tokens_in)
        self.output_tokens.append(tokens_out)


# The generator's own status vocabulary: (field, value) written -> the status it means (docs/records.md)
STATUS_CHOICES = [
    ({"status": "success"}, "success"),
    ({"status": "success"}, "success"),
    ({"status": "success"}, "success"),
    ({"status": "completed"}, "success"),
    ({"status": "error"}, "error"),
    ({"http_status": 429}, "client_error"),
    ({"status": "timeout"}, "timeout"),
    ({"status": 499}, "cancelled"),
    ({}, "unknown"),
]


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def request(rng: random.Random, truth: Truth, n: int, pod: str = "") -> dict:
    """One structured request log, recorded in ``truth``."""
    written, status = rng.choice(STATUS_CHOICES)
    model = rng.choice(["qwen2.5-7b", "llama-3-8b"])
    stamp = BASE + n * 0.25 + rng.random() * 0.2
    total_ms = round(rng.lognormvariate(6.5, 0.8), 3)
    record = {"timestamp": _iso(stamp), "request_id": f"req_{n}", "path": "/v1/chat/completions", "model": model,
              "total_time_ms": total_ms, **written}
    queue = ttft = float("nan")
    if rng.random() < 0.8:
        record["queue_time_ms"] = queue_ms = rng.randint(0, 400)
        queue = queue_ms / 1000.0
    if rng.random() < 0.5:
        record["time_to_first_token_ms"] = ttft_ms = round(rng.uniform(20, 600), 2)
        ttft = ttft_ms / 1000.0
    tokens_in = rng.randint(1, 8000)
    tokens_out = rng.randint(1, 1200) if rng.random() < 0.9 else -1
    record["input_tokens"] = tokens_in
    if tokens_out >= 0:
        record["output_tokens"] = tokens_out
    # the stamp as the normaliser reads it back from the ISO string (microseconds)
    truth.add(status, model, pod, datetime.fromisoformat(record["timestamp"][:-1]).replace(
        tzinfo=timezone.utc).timestamp(), total_ms / 1000.0, queue, ttft, tokens_in, tokens_out)
    return record


def tgi_line(rng: random.Random, truth: Truth, n: int, pod: str = "") -> str:
    """A plain TGI Success line: a request with total/queue/inference time and derived output tokens."""
    tokens = rng.randint(2, 300)
    total = round(rng.uniform(0.5, 9.0), 3)
    stamp = BASE + n * 0.25
    line = (f'{_iso(stamp)}  INFO generate{{total_time="{total}s" validation_time="1ms" queue_time="0.002s" '
            f'inference_time="{tokens * 0.02:.2f}s" time_per_token="0.02s"}}: text_generation_router::server: '
            f'router/src/server.rs:545: Success')
    truth.add("success", "", pod, datetime.fromisoformat(_iso(stamp)[:-1]).replace(tzinfo=timezone.utc).timestamp(),
              total, 0.002, float("nan"), -1, tokens)
    return line


VLLM_STATS = ("INFO 04-05 10:23:47 metrics.py:351] Avg prompt throughput: 1240.0 tokens/s, Avg generation "
              "throughput: 55.3 tokens/s, Running: 3 reqs, Swapped: 0 reqs, Pending: 0 reqs, GPU KV cache usage: "
              "12.5%, CPU KV cache usage: 0.0%.")


def split(text: str, rng: random.Random) -> list[str]:
    """``text`` in 1-3 pieces, as a runtime splits a long line."""
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, 2)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def write_inputs(directory: Path, seed: int = 11) -> tuple[Truth, list[Path]]:
    """Every input kind, seeded; returns the truth and the files."""
    rng = random.Random(seed)
    truth = Truth()
    n = 0
    files = []

    jsonl = directory / "requests.jsonl"
    with jsonl.open("w") as out:
        for _ in range(700):
            out.write(json.dumps(request(rng, truth, n)) + "\n")
            n += 1
        out.write(VLLM_STATS + "\n")
        truth.engine_stats += 1
    files.append(jsonl)

    docker = directory / "docker-json.log"
    with docker.open("w") as out:
        for _ in range(400):
            text = json.dumps(request(rng, truth, n)) + "\n"
            n += 1
            for piece in split(text, rng):
                out.write(json.dumps({"log": piece, "stream": "stdout", "time": _iso(BASE)}) + "\n")
                if rng.random() < 0.2:  # stderr interleaved between the parts of a stdout line
                    out.write(json.dumps({"log": "WARNING:root:slow tokenizer\n", "stream": "stderr",
                                          "time": _iso(BASE)}) + "\n")
                    truth.log_lines += 1
    files.append(docker)

    cri = directory / KUBELET_NAME
    with cri.open("w") as out:
        for _ in range(400):
            if rng.random() < 0.15:
                out.write(f"{_iso(BASE)} stdout F {tgi_line(rng, truth, n, POD)}\n")
            else:
                pieces = split(json.dumps(request(rng, truth, n, POD)), rng)
                for piece in pieces[:-1]:
                    out.write(f"{_iso(BASE)} stdout P {piece}\n")
                    if rng.random() < 0.2:
                        out.write(f"{_iso(BASE)} stderr F {VLLM_STATS}\n")
                        truth.engine_stats += 1
                out.write(f"{_iso(BASE)} stdout F {pieces[-1]}\n")
            n += 1
    files.append(cri)

    gz = directory / "rotated.log.1"  # gzip without a .gz name: detected by its magic bytes
    with gzip.open(gz, "wt") as out:
        for _ in range(500):
            out.write(json.dumps(request(rng, truth, n)) + "\n")
            n += 1
        out.write("{not json at all\n")
        truth.unparsed += 1
        out.write("INFO:     10.0.0.1:5000 - \"POST /v1/chat/completions HTTP/1.1\" 200 OK\n")
        truth.log_lines += 1
    files.append(gz)
    return truth, files


def analyze(*args: str, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "qwen_fluent", "analyze", *args], input=stdin,
                            capture_output=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result


def analyze_json(*args: str, stdin: bytes | None = None, code: int = 0) -> dict:
    result = analyze(*args, "--format", "json", stdin=stdin, check=False)
    assert result.returncode == code, result.stderr.decode()
    assert result.stderr == b""  # no progress bar: stderr is not a terminal
    return json.loads(result.stdout)


def expected_distribution(values: list[float], tokens: bool = False) -> dict:
    array = np.array(values, dtype=np.float64)
    present = array[array >= 0] if tokens else array[~np.isnan(array)]
    if not present.size:
        return {"count": 0, "max": None, "sum": 0, **{f"p{q}": None for q in PERCENTILES}}
    stored = present.astype(np.int32 if tokens else np.float32).astype(np.float64)
    out = {"count": int(present.size), "max": float(stored.max())}
    out.update({f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(stored, PERCENTILES))})
    out["float64"] = dict(zip(PERCENTILES, np.percentile(present, PERCENTILES)))
    if tokens:
        out["sum"] = int(present.sum())
    return out


def check_part(part: dict, truth: Truth, rows: list[int]) -> None:
    """One summary (all, or a group) against the truth rows it covers."""
    assert part["requests"] == len(rows)
    statuses = [truth.status[i] for i in rows]
    assert part["by_status"] == {name: statuses.count(name) for name in STATUSES}
    errors = sum(statuses.count(name) for name in ("error", "client_error", "timeout", "cancelled"))
    assert part["error_rate"] == pytest.approx(errors / len(rows))
    stamps = [truth.timestamp[i] for i in rows]
    span = max(stamps) - min(stamps)
    assert part["time_span"]["seconds"] == pytest.approx(span, abs=1e-5)
    assert part["qps"] == pytest.approx(len(rows) / span, rel=1e-6)
    for key, values, tokens in (
        ("total_time_seconds", truth.total, False),
        ("queue_time_seconds", truth.queue, False),
        ("time_to_first_token_seconds", truth.ttft, False),
        ("input_tokens", truth.input_tokens, True),
        ("output_tokens", truth.output_tokens, True),
    ):
        expected = expected_distribution([values[i] for i in rows], tokens)
        got = part[key]
        assert got["count"] == expected["count"], key
        for q in PERCENTILES:
            assert got[f"p{q}"] == expected[f"p{q}"], (key, q)  # exactly numpy's, over the stored values
            if expected["count"]:
                assert got[f"p{q}"] == pytest.approx(expected["float64"][q], rel=1e-6), (key, q)
        assert got["max"] == expected["max"], key
        if tokens:
            assert got["sum"] == expected["sum"], key
    out_sum = sum(v for i in rows if (v := truth.output_tokens[i]) >= 0)
    assert part["tokens_per_second"]["output"] == pytest.approx(out_sum / span, rel=1e-6)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Truth, list[Path]]:
    return write_inputs(tmp_path_factory.mktemp("logs"))


def test_every_input_kind_against_ground_truth(seeded: tuple[Truth, list[Path]]) -> None:
    truth, files = seeded
    summary = analyze_json(*map(str, files))
    assert summary["schema"] == "qwen-fluent/analyze/v1"
    assert summary["percentiles_exact"] is True
    check_part(summary, truth, list(range(len(truth.status))))
    assert summary["engine_stats_lines"] == truth.engine_stats
    assert sum(summary["log_lines"].values()) == truth.log_lines
    assert summary["unparsed_lines"] == truth.unparsed == 1
    assert summary["unparsed_samples"] == [
        {"path": str(files[3]), "line": 501, "reason": "invalid_json", "text": "{not json at all"}]
    assert summary["read_errors"] == []
    assert [entry["requests"] for entry in summary["inputs"]] == [700, 400, 400, 500]
    assert summary["joined_partial_lines"] > 100  # docker and CRI parts were joined, not dropped


@pytest.mark.parametrize("by", ["model", "pod", "status"])
def test_by_groups_against_ground_truth(seeded: tuple[Truth, list[Path]], by: str) -> None:
    truth, files = seeded
    summary = analyze_json(*map(str, files), "--by", by)
    keys = getattr(truth, by)
    expected = {key: [i for i, k in enumerate(keys) if k == key] for key in set(keys)}
    assert {group["key"]: group["requests"] for group in summary["groups"]} == {
        key: len(rows) for key, rows in expected.items()}
    assert [g["requests"] for g in summary["groups"]] == sorted((g["requests"] for g in summary["groups"]),
                                                                 reverse=True)
    for group in summary["groups"]:
        if group["requests"] > 1:
            check_part(group, truth, expected[group["key"]])
    if by == "pod":  # the pod named by the kubelet file name
        assert {g["key"] for g in summary["groups"]} == {POD, ""}


def test_glob_and_stdin_give_the_same_numbers(seeded: tuple[Truth, list[Path]]) -> None:
    truth, files = seeded
    directory = files[0].parent
    from_glob = analyze_json(str(directory / "*.jsonl"))
    from_stdin = analyze_json("-", stdin=files[0].read_bytes())
    for key in ("requests", "by_status", "total_time_seconds", "input_tokens", "output_tokens"):
        assert from_glob[key] == from_stdin[key]
    assert from_glob["requests"] == 700
    gz = analyze_json("-", stdin=files[3].read_bytes())  # gzip on stdin, detected by content
    assert gz["requests"] == 500


def test_csv_and_table(seeded: tuple[Truth, list[Path]]) -> None:
    truth, files = seeded
    summary = analyze_json(*map(str, files), "--by", "model")
    lines = analyze(*map(str, files), "--by", "model", "--format", "csv").stdout.decode().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert [row["key"] for row in rows] == ["(all)", *(g["key"] for g in summary["groups"])]
    assert int(rows[0]["requests"]) == len(truth.status)
    assert float(rows[0]["total_time_seconds_p99"]) == summary["total_time_seconds"]["p99"]
    assert int(rows[1]["status_success"]) == summary["groups"][0]["by_status"]["success"]
    table = analyze(*map(str, files), "--by", "model").stdout.decode()
    assert f"{len(truth.status):,} requests" in table
    assert f"{summary['total_time_seconds']['p99']:,.3f}" in table
    assert "by model" in table and "qwen2.5-7b" in table
    assert "invalid_json" in table and "{not json at all" in table


def test_malformed_file(tmp_path: Path) -> None:
    path = tmp_path / "malformed.log"
    path.write_bytes(b'{"request_id": \n{\xff\xfe\x00}\n\x00\x01\x02 binary\n[1, 2]\n{"total_time_ms": -5}\n'
                     b'{"total_time_ms": "soon"}\n{}\n' + b"{" * 5000 + b"\n")
    summary = analyze_json(str(path))
    assert summary["requests"] == 0 and summary["lines"] == 8
    # three broken JSON lines, two request logs with no usable value, one empty object, 5000 braces
    assert summary["unparsed_by_reason"] == {"invalid_json": 3, "invalid_request": 2, "empty_record": 1}
    assert summary["unparsed_lines"] == 6
    assert sum(summary["log_lines"].values()) == 2  # the binary line and the JSON array are plain text
    assert [s["line"] for s in summary["unparsed_samples"]] == [1, 2, 5, 6, 7]  # in line order
    assert summary["unparsed_samples"][2] == {"path": str(path), "line": 5, "reason": "invalid_request",
                                              "text": '{"total_time_ms": -5}'}
    assert summary["total_time_seconds"]["p50"] is None
    table = analyze(str(path)).stdout.decode()
    assert "unparsed    6" in table


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.log"
    path.write_bytes(b"")
    summary = analyze_json(str(path))
    assert summary["requests"] == 0 and summary["lines"] == 0 and summary["unparsed_lines"] == 0
    assert summary["qps"] is None and summary["time_span"] == {"start": None, "end": None, "seconds": None}
    assert summary["total_time_seconds"] == {"count": 0, "mean": None, "p50": None, "p90": None, "p95": None,
                                             "p99": None, "max": None}
    assert summary["input_tokens"]["sum"] == 0
    assert "0 requests" in analyze(str(path)).stdout.decode()


def test_ten_megabyte_line(tmp_path: Path) -> None:
    path = tmp_path / "long.log"
    big = json.dumps({"request_id": "big", "total_time_ms": 3000, "pad": "x" * (10 * 1024 * 1024)})
    with path.open("w") as out:
        out.write(json.dumps({"request_id": "a", "total_time_ms": 1000}) + "\n")
        out.write(big + "\n")
        out.write(json.dumps({"request_id": "b", "total_time_ms": 2000}) + "\n")
    summary = analyze_json(str(path))
    assert summary["requests"] == 2 and summary["lines"] == 3
    assert summary["unparsed_by_reason"] == {"line_too_long": 1}
    assert summary["unparsed_samples"][0]["line"] == 2 and len(summary["unparsed_samples"][0]["text"]) <= 200
    assert summary["total_time_seconds"]["max"] == 2.0
    # with a bound above it the same line is read, and counts
    summary = analyze_json(str(path), "--max-line-length", str(16 * 1024 * 1024))
    assert summary["requests"] == 3 and summary["total_time_seconds"]["max"] == 3.0


def test_truncated_gzip_is_a_counted_error(tmp_path: Path, seeded: tuple[Truth, list[Path]]) -> None:
    lines = [json.dumps({"request_id": f"r{n}", "total_time_ms": n + 1}) + "\n" for n in range(20000)]
    whole = gzip.compress("".join(lines).encode())
    cut = whole[: len(whole) // 2]
    path = tmp_path / "cut.log.gz"
    path.write_bytes(cut)
    # ground truth: the complete lines in what zlib can decompress of the cut stream
    readable = zlib.decompressobj(wbits=31).decompress(cut)
    complete = readable.count(b"\n")
    assert 0 < complete < 20000
    truth, files = seeded
    summary = analyze_json(str(path), str(files[0]), code=1)
    assert summary["read_errors"] == [
        {"path": str(path), "error": "truncated gzip file: the compressed stream ends before its end marker"}]
    by_input = {entry["path"]: entry["requests"] for entry in summary["inputs"]}
    assert by_input[str(files[0])] == 700  # the next file is still read
    # every complete line read before the cut counts, and at most the cut line besides
    assert complete <= by_input[str(path)] <= complete + 1
    table = analyze(str(path), check=False)
    assert table.returncode == 1 and "read error  " in table.stdout.decode()


def test_plot_writes_a_png_that_opens(tmp_path: Path, seeded: tuple[Truth, list[Path]]) -> None:
    from PIL import Image

    truth, files = seeded
    png = tmp_path / "latency.png"
    result = analyze(*map(str, files), "--plot", str(png), "--format", "json")
    assert json.loads(result.stdout)["requests"] == len(truth.status)
    with Image.open(png) as image:
        image.load()
        assert image.format == "PNG" and image.size == (1200, 1000)
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # something was drawn on the white page


def test_plot_without_timestamps(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "nostamp.log"
    path.write_text("".join(json.dumps({"request_id": str(n), "total_time_ms": 10 + n}) + "\n" for n in range(50)))
    png = tmp_path / "p.png"
    analyze(str(path), "--plot", str(png))
    with Image.open(png) as image:
        assert image.format == "PNG"


def test_usage_errors(tmp_path: Path) -> None:
    missing = analyze(str(tmp_path / "nope.log"), check=False)
    assert missing.returncode == 2
    assert missing.stderr.decode() == f"qwen-fluent analyze: error: {tmp_path / 'nope.log'}: no such file\n"
    nothing = analyze(str(tmp_path / "*.nothing"), check=False)
    assert nothing.returncode == 2 and b"no file matches" in nothing.stderr
    directory = analyze(str(tmp_path), check=False)
    assert directory.returncode == 2 and b"is a directory" in directory.stderr


def test_progress_bar_only_on_a_terminal(seeded: tuple[Truth, list[Path]]) -> None:
    """stderr a terminal: the bar is drawn there; stdout stays the clean report."""
    truth, files = seeded
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen([sys.executable, "-m", "qwen_fluent", "analyze", *map(str, files), "--format",
                                    "json"], stdout=subprocess.PIPE, stderr=follower, stdin=subprocess.DEVNULL)
        os.close(follower)
        seen = b""
        while True:
            ready, _, _ = select.select([leader], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        stdout, _ = process.communicate(timeout=60)
    finally:
        os.close(leader)
    assert process.returncode == 0
    assert b"reading" in seen or b"lines" in seen
    assert json.loads(stdout)["requests"] == len(truth.status)
    assert analyze(*map(str, files[:1]), "--no-progress", "--format", "json").stderr == b""


def test_table_shows_log_text_literally() -> None:
    """Keys and paths come from the log: rich markup in them is shown, not obeyed."""
    from qwen_fluent.analysis import Analyzer, summarise
    from qwen_fluent.analysis.render import to_string

    analyzer = Analyzer()
    analyzer.record({"request_id": "a", "path": "/v1/[bold]x[/bold]", "total_time_ms": 5})
    analyzer.record({"request_id": "b", "path": "/v1/[red]", "total_time_ms": 7})
    table = to_string(summarise(analyzer, "path"), "table")
    assert "/v1/[bold]x[/bold]" in table and "/v1/[red]" in table


def test_runtime_time_when_the_app_stamps_none(tmp_path: Path) -> None:
    """No `timestamp` in the request: the CRI or docker time of the line dates it."""
    path = tmp_path / "cri.log"
    path.write_text("2025-04-05T10:00:00.5Z stdout F {\"request_id\": \"a\", \"total_time_ms\": 5}\n"
                    "2025-04-05T10:00:10.5Z stdout F {\"request_id\": \"b\", \"total_time_ms\": 6}\n"
                    + json.dumps({"log": '{"request_id": "c", "total_time_ms": 7}\n', "stream": "stdout",
                                  "time": "2025-04-05T10:00:20.5Z"}) + "\n")
    summary = analyze_json(str(path))
    assert summary["requests"] == 3
    assert summary["time_span"] == {"start": "2025-04-05T10:00:00.500000Z", "end": "2025-04-05T10:00:20.500000Z",
                                    "seconds": 20.0}
    assert summary["qps"] == pytest.approx(3 / 20)


def test_bench_runs_and_counts(tmp_path: Path) -> None:
    """bench/bench_analyze.py end to end on a small file: its count check passes, the figures print."""
    bench = Path(__file__).resolve().parents[2] / "bench" / "bench_analyze.py"
    result = subprocess.run([sys.executable, str(bench), "--size-mb", "0.5", "--kind", "cri"], capture_output=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert "qwen-fluent analyze" in out and "reference: json.loads per line" in out and "ratio" in out
