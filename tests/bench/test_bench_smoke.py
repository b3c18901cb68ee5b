"""``bench/run.py --smoke`` runs end to end and its counts come out exact; the bench workload is what it says.

These tests never look at a figure: speed goals live in bench/run.py, which
prints them beside same-run references. What is checked here is that the
one-command benchmark still works on a fresh checkout (every process starts,
every record sent is acked and counted exactly once) and that the records it
sends are the ones it claims to send.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import msgpack

BENCH = Path(__file__).resolve().parents[2] / "bench"

#: Generous: the smoke run takes seconds; a shared 2-core machine can be slow.
SMOKE_TIMEOUT = 120


def _load(name: str):
    sys.path.insert(0, str(BENCH))  # bench/ modules import each other as top-level modules
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_smoke_run_counts_every_record_exactly():
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--smoke"], capture_output=True, text=True,
                          timeout=SMOKE_TIMEOUT, cwd=BENCH.parent)
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"

    lines = [line.strip() for line in out.splitlines() if re.match(r"\s*counts (ok|WRONG): ", line)]
    names = [re.match(r"counts \w+: (.*?): sent", line).group(1) for line in lines]
    assert names == [
        "qwen-fluent kubernetes/PackedForward",
        "qwen-fluent kubernetes/PackedForward + scrapes",
        "qwen-fluent kubernetes/CompressedPackedForward",
        "qwen-fluent flat/PackedForward",
        "qwen-fluent flat/CompressedPackedForward",
        "article exporter (JSON lines, prometheus-client)",
    ], out
    for line in lines:
        assert line.startswith("counts ok: "), line
        sent = re.search(r"sent ([\d,]+) records", line).group(1)
        # Every record-valued count on the line equals what was sent.
        if line.startswith("counts ok: qwen-fluent"):
            assert f'qwen_fluent_records_total{{outcome="accepted"}} {sent},' in line, line
            assert f"sum(qwen_requests_total) {sent}" in line, line
        else:
            assert f"lines read {sent}," in line and f"sum(llm_requests_total) {sent}" in line, line
    assert "counts: all exact" in out
    # The render case either compared ours with prometheus-client's output or said why it could not.
    render = [line for line in out.splitlines() if line.strip().startswith(("text ", "OpenMetrics "))]
    assert len(render) == 2 and all(("same samples" in r) or ("n/a" in r) for r in render), out
    assert "MET" not in out and "MISSED" not in out  # --smoke judges nothing


def test_workloads_carry_the_same_request_fields_in_every_framing():
    workload = _load("workload")
    work = workload.build(records=2500, per_message=1000, pod_count=3, seed=11)
    expected = [json.loads(line) for line in work.json_lines.splitlines()]
    assert len(expected) == 2500

    for (kind, mode), stream in work.streams.items():
        assert len(stream.messages) == len(stream.chunks) == 3
        decoded = []
        for k, (data, chunk) in enumerate(zip(stream.messages, stream.chunks)):
            tag, payload, options = msgpack.unpackb(data, raw=False)
            assert isinstance(payload, bytes)  # bin: PackedForward, not Forward mode
            assert options["chunk"] == chunk == workload.chunk_id(payload)
            if mode == workload.COMPRESSED:
                assert options["compressed"] == "gzip"
                payload = gzip.decompress(payload)
            else:
                assert "compressed" not in options
            unpacker = msgpack.Unpacker(raw=False)
            unpacker.feed(payload)
            entries = list(unpacker)
            assert options["size"] == len(entries)
            for time, record in entries:
                assert isinstance(time, msgpack.ExtType) and time.code == 0 and len(time.data) == 8
                if kind == workload.KUBERNETES:
                    pod = record.pop("kubernetes")
                    # One container log file per message, tagged as tail's ``Tag kube.*`` tags it.
                    assert tag.startswith(f"kube.var.log.containers.{pod['pod_name']}_ml-serving_vllm-")
                    assert tag.endswith(".log")
                    assert pod["pod_name"].endswith(f"{k % 3:05d}")
                    assert {record.pop(key) for key in ("stream", "_p")} == {"stdout", "F"}
                    assert record.pop("time").endswith("Z")
                else:
                    assert tag == workload.FLAT_TAG
                decoded.append(record)
        assert decoded == expected, f"{kind}/{mode}"


def test_workload_is_seeded():
    workload = _load("workload")
    a = workload.build(records=300, per_message=100, pod_count=2, seed=5)
    b = workload.build(records=300, per_message=100, pod_count=2, seed=5)
    c = workload.build(records=300, per_message=100, pod_count=2, seed=6)
    assert a.json_lines == b.json_lines and a.streams[(workload.FLAT, workload.PACKED)].messages == \
        b.streams[(workload.FLAT, workload.PACKED)].messages
    assert a.json_lines != c.json_lines


def test_baseline_runs_in_the_same_rounds_and_its_counts_are_checked():
    """``--baseline CMD``: a second receiver (here this checkout again) on the kubernetes cases, in the
    same rounds, printed before/after; its counts are checked like every other run's (exit 1 if wrong)."""
    baseline = f"{sys.executable} -m qwen_fluent"
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--smoke", "--workers", "1", "--baseline", baseline],
                          capture_output=True, text=True, timeout=2 * SMOKE_TIMEOUT, cwd=BENCH.parent)
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"
    section = out.split("before/after in this run", 1)[1].split("\n\n", 1)[0]
    rows = [line.split()[1] for line in section.splitlines() if line.strip().startswith("qwen-fluent ")]
    assert rows == ["kubernetes/PackedForward", "kubernetes/CompressedPackedForward"], out
    assert "WRONG" not in section, section


def test_per_record_stamps_give_each_record_its_own_time_and_change_nothing_else():
    workload = _load("workload")
    shared = workload.build(records=1500, per_message=1000, pod_count=2, seed=3)
    own = workload.build(records=1500, per_message=1000, pod_count=2, seed=3, stamps="per-record")
    shared_lines = [json.loads(line) for line in shared.json_lines.splitlines()]
    own_lines = [json.loads(line) for line in own.json_lines.splitlines()]
    assert {r["timestamp"] for r in shared_lines} == {"2025-04-05T10:23:45Z"}
    assert [r["timestamp"] for r in own_lines[:2]] == ["2025-04-05T10:23:45.000Z", "2025-04-05T10:23:45.001Z"]
    assert own_lines[1499]["timestamp"] == "2025-04-05T10:23:46.499Z"
    assert len({r["timestamp"] for r in own_lines}) == 1500
    for a, b in zip(shared_lines, own_lines):
        assert {k: v for k, v in a.items() if k != "timestamp"} == {k: v for k, v in b.items() if k != "timestamp"}


def test_log_lines_go_between_the_kubernetes_request_logs_and_are_counted_apart():
    """``--log-every N``: a warning line after every N request logs of a kubernetes message (a server's
    stderr between its request lines); the streams count them as records, not as requests."""
    workload = _load("workload")
    work = workload.build(records=300, per_message=100, pod_count=2, seed=5, log_every=40)
    kube = work.streams[(workload.KUBERNETES, workload.PACKED)]
    assert (kube.records, kube.requests) == (300 + 3 * 2, 300)  # 2 lines in each 100-record message
    flat = work.streams[(workload.FLAT, workload.PACKED)]
    assert (flat.records, flat.requests) == (300, 300)
    tag, payload, options = msgpack.unpackb(kube.messages[0])
    records = [record for _, record in msgpack.Unpacker(io.BytesIO(payload), raw=False)]
    assert options["size"] == len(records) == 102
    lines = [i for i, record in enumerate(records) if "log" in record]
    assert lines == [40, 81] and records[40]["log"] == workload.LOG_LINE and records[40]["stream"] == "stderr"
