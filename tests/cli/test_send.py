"""``qwen-fluent send`` as a process, against the real receiver, checked through /metrics.

The log files are written here from seeded requests in every input kind (JSON lines, docker
json-file and CRI with split lines, a gzip file, standard input), and the expected counts are
computed here from those requests, not by the code under test.
"""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_fluent.cli.send import event_time, tag_for
from tests.client.conftest import receiver_from_toml, scrape, total, wait_total
from tests.server.certs import make_ca, make_leaf
from tests.support.receiver import ReceiverThread

STATUSES = ("success", "success", "success", "error", "client_error", "timeout")


def requests(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"request_id": f"r{seed}-{i}", "method": "POST", "path": "/v1/chat/completions",
             "input_tokens": rng.randrange(1, 4000), "output_tokens": rng.randrange(0, 800),
             "total_time_ms": rng.randrange(50, 20000), "status": rng.choice(STATUSES), "model": "qwen2.5-7b"}
            for i in range(n)]


def docker_lines(records: list[dict]) -> list[str]:
    """docker json-file: one object per line; every third record split in two parts, as dockerd splits long lines."""
    out = []
    for i, r in enumerate(records):
        text = json.dumps(r)
        parts = [text[:20], text[20:] + "\n"] if i % 3 == 0 else [text + "\n"]
        out += [json.dumps({"log": p, "stream": "stdout", "time": f"2025-04-05T10:23:{i % 60:02d}.123456789Z"})
                for p in parts]
    return out


def cri_lines(records: list[dict]) -> list[str]:
    """CRI: ``<time> <stream> <P|F> <text>``; every other record split into a P and an F part."""
    out = []
    for i, r in enumerate(records):
        text = json.dumps(r)
        stamp = f"2025-04-05T10:24:{i % 60:02d}.987654321Z"
        if i % 2:
            out += [f"{stamp} stdout P {text[:15]}", f"{stamp} stdout F {text[15:]}"]
        else:
            out.append(f"{stamp} stdout F {text}")
    return out


def run_send(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qwen_fluent", "send", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def by_status(records: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


@pytest.fixture
def receiver():
    with ReceiverThread() as r:
        yield r


def test_every_input_kind_is_counted_exactly_with_gzip_and_acks(tmp_path: Path, receiver) -> None:
    a, b, c, d = (requests(seed, 15) for seed in range(4))
    (tmp_path / "app.jsonl").write_text("\n".join(json.dumps(r) for r in a[:7]) + "\n{not json\n"
                                        + "INFO 04-05 10:23:47 engine started\n"
                                        + "\n".join(json.dumps(r) for r in a[7:]) + "\n")
    (tmp_path / "docker.log").write_text("\n".join(docker_lines(b)) + "\n")
    (tmp_path / "cri.log").write_text("\n".join(cri_lines(c)) + "\n")
    (tmp_path / "rotated.jsonl.gz").write_bytes(gzip.compress(("\n".join(json.dumps(r) for r in d)).encode()))
    files = [str(tmp_path / n) for n in ("app.jsonl", "docker.log", "cri.log", "rotated.jsonl.gz")]
    proc = run_send(*files, "--port", str(receiver.forward_port), "--gzip", "--ack", "--batch", "4")
    assert proc.returncode == 0, proc.stderr
    everything = a + b + c + d
    read = len(everything) + 1  # the INFO line is a record too (a log line), the broken JSON line is not
    messages = sum(-(-n // 4) for n in (16, 15, 15, 15))
    assert proc.stdout.splitlines()[0] == (
        f"sent {read} of {read} records read in {messages} messages to 127.0.0.1:{receiver.forward_port}, "
        f"acked {messages} messages, resent 0")
    assert "unparsed lines: 1 (invalid_json 1); the first:" in proc.stdout
    assert f"{files[0]}:8: invalid_json: {{not json" in proc.stdout
    samples = scrape(receiver.metrics_port)
    for status, n in by_status(everything).items():
        assert total(samples, "qwen_requests_total", status=status) == n, status
    assert total(samples, "qwen_requests_total") == len(everything)
    assert total(samples, "qwen_input_tokens_total") == sum(r["input_tokens"] for r in everything)
    assert total(samples, "qwen_output_tokens_total") == sum(r["output_tokens"] for r in everything)
    assert total(samples, "qwen_log_messages_total", level="info") == 1
    assert total(samples, "qwen_fluent_messages_total", mode="compressed_packed_forward") == messages
    assert wait_total(receiver.metrics_port, "qwen_fluent_acks_total", messages) == messages


def test_standard_input_is_sent_while_the_pipe_is_still_open(receiver) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "qwen_fluent", "send", "-", "--port", str(receiver.forward_port),
                             "--ack"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = requests(9, 3)
        assert proc.stdin is not None
        proc.stdin.write("".join(json.dumps(r) + "\n" for r in first))
        proc.stdin.flush()
        # a batch of 3 < --batch waits at most STDIN_FLUSH (1 s) for more lines, then goes out
        assert wait_total(receiver.metrics_port, "qwen_requests_total", 3) == 3
        assert proc.poll() is None  # still reading
        proc.stdin.write(json.dumps(requests(10, 1)[0]))  # no newline at the end: still a line at EOF
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.startswith("sent 4 of 4 records read in 2 messages")
    assert total(scrape(receiver.metrics_port), "qwen_requests_total") == 4


def test_a_container_log_file_name_gives_the_pod_through_the_tag(tmp_path: Path, receiver) -> None:
    name = f"llm-7d9f8b6c5-x2k4p_ml-serving_vllm-{'ab' * 32}.log"
    path = tmp_path / "containers" / name
    path.parent.mkdir()
    path.write_text("\n".join(cri_lines(requests(5, 4))) + "\n")
    assert tag_for("kube.*", str(path)).endswith(f".containers.{name}")
    proc = run_send(str(path), "--port", str(receiver.forward_port), "--ack", "--mode", "packed")
    assert proc.returncode == 0, proc.stderr
    samples = scrape(receiver.metrics_port)
    assert total(samples, "qwen_requests_total", pod="llm-7d9f8b6c5-x2k4p", namespace="ml-serving",
                 container="vllm") == 4


@pytest.mark.parametrize("mode, wire", [("message", "message"), ("forward", "forward"), ("packed", "packed_forward")])
def test_modes_and_batches(tmp_path: Path, receiver, mode: str, wire: str) -> None:
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests(1, 5)))
    proc = run_send(str(tmp_path / "x.jsonl"), "--port", str(receiver.forward_port), "--mode", mode,
                    "--batch", "2", "--ack", "--tag", "llm.inference")
    assert proc.returncode == 0, proc.stderr
    messages = 5 if mode == "message" else 3
    assert f"in {messages} messages" in proc.stdout
    assert total(scrape(receiver.metrics_port), "qwen_fluent_messages_total", mode=wire) == messages


def test_shared_key_and_a_wrong_one(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests(2, 3)))
    with ReceiverThread({"shared_key": "k3y", "self_hostname": "receiver-1"}) as r:
        ok = run_send(str(tmp_path / "x.jsonl"), "--port", str(r.forward_port), "--shared-key", "k3y", "--ack")
        assert ok.returncode == 0, ok.stderr
        bad = run_send(str(tmp_path / "x.jsonl"), "--port", str(r.forward_port), "--shared-key", "nope", "--ack")
        assert bad.returncode == 1
        assert bad.stderr == "qwen-fluent: error: the receiver refused the handshake: shared_key mismatch\n"
        assert bad.stdout.startswith("sent 0 of 3 records read in 0 messages")
        assert total(scrape(r.metrics_port), "qwen_requests_total") == 3


def test_tls_with_the_receivers_ca(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    crt, key = make_leaf(tmp_path, "server", "localhost", "serverAuth", ca)
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests(3, 2)))
    with ReceiverThread({"tls_cert": str(crt), "tls_key": str(key)}) as r:
        proc = run_send(str(tmp_path / "x.jsonl"), "--port", str(r.forward_port), "--tls", "--tls-ca-file",
                        str(ca[0]), "--ack")
        assert proc.returncode == 0, proc.stderr
        plain = run_send(str(tmp_path / "x.jsonl"), "--port", str(r.forward_port), "--tls", "--ack",
                         "--retries", "0")  # the system CAs do not know the test CA
        assert plain.returncode == 1 and "certificate is not trusted" in plain.stderr
        assert total(scrape(r.metrics_port), "qwen_requests_total") == 2


def test_delivery_failure_and_argument_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text(json.dumps(requests(4, 1)[0]) + "\n")
    with receiver_from_toml(tmp_path, "") as r:
        port = r.forward_port
    # the receiver is gone: nobody listens on its port any more
    proc = run_send(str(tmp_path / "x.jsonl"), "--port", str(port), "--ack", "--retries", "1")
    assert proc.returncode == 1
    assert proc.stderr == (f"qwen-fluent: error: not delivered after 2 tries to 127.0.0.1:{port}: "
                           "Connection refused\n")
    missing = run_send(str(tmp_path / "nope.log"))
    assert (missing.returncode, missing.stderr) == (2, f"qwen-fluent: error: cannot read {tmp_path}/nope.log: "
                                                       "No such file or directory\n")
    assert run_send(str(tmp_path / "x.jsonl"), "--batch", "0").stderr == \
        "qwen-fluent: error: --batch must be 1..100000, got 0\n"
    assert run_send(str(tmp_path / "x.jsonl"), "--username", "u").stderr == \
        "qwen-fluent: error: --username and --password need --shared-key: the handshake carries them\n"
    assert run_send(str(tmp_path / "x.jsonl"), "--port", "70000").stderr == \
        "qwen-fluent: error: --port must be 1..65535, got 70000\n"


def test_record_times_come_from_the_container_log_with_nanoseconds() -> None:
    assert event_time({"time": "2025-04-05T10:23:45.123456789Z"}, 1.0) == pytest.approx(1743848625.123456789, abs=1e-6)
    assert event_time({"time": "2025-04-05T10:23:45+02:00"}, 1.0) == 1743841425.0
    assert event_time({"time": "2025-04-05T10:23:45"}, 7.0) == 7.0  # no zone: not a container log time
    assert event_time({"time": 12}, 7.0) == 7.0 and event_time({}, 7.0) == 7.0
    assert event_time({"time": "2025-04-05T10:23:45.Z garbage"}, 7.0) == 7.0
