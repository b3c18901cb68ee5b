"""Counters survive restarts of a real ``qwen-fluent serve --state-dir``; a resend after one is counted once.

With a state directory acks wait for the checkpoint (docs/reliability.md), so
everything acked survives a SIGKILL; these tests also compare whole scrapes
across a restart, so they stop the process when nothing is in flight: after
SIGTERM, and after a SIGKILL once a periodic checkpoint newer than the last ack
is on disk. tests/reliability/test_faults.py kills it in the middle of a stream.
"""

from __future__ import annotations

import random
import time
from typing import Any

from tests.reliability.harness import Samples, Serve, total, value
from tests.support.forward import ForwardClient

TAG = "kube.var.log.containers.vllm-0_ml_vllm-" + "a" * 64 + ".log"
STATUSES = ["success", "success", "success", "error", "timeout", "client_error"]


def batch(rng: random.Random, n: int, start: int) -> list[tuple[float, dict[str, Any]]]:
    """``n`` seeded request logs: several statuses, paths and models, every histogram's field."""
    out = []
    for i in range(start, start + n):
        out.append((1_750_000_000 + i * 0.001, {
            "request_id": f"req-{i}", "method": "POST", "path": rng.choice(["/v1/chat/completions", "/v1/completions"]),
            "model": rng.choice(["qwen2.5-7b", "qwen2.5-14b"]), "status": rng.choice(STATUSES),
            "input_tokens": rng.randint(1, 4000), "output_tokens": rng.randint(1, 800),
            "total_time_ms": rng.uniform(5, 20000), "queue_time_ms": rng.uniform(0, 500),
            "inference_time_ms": rng.uniform(5, 19000), "time_to_first_token_ms": rng.uniform(5, 900),
            "gpu_memory_mb": rng.randint(1000, 70000)}))
    return out


def send(serve: Serve, batches: list[tuple[str, list[Any], bool]]) -> None:
    """Each (chunk, entries, packed) on a connection of its own, as a client whose previous one failed."""
    for chunk, entries, packed in batches:
        with ForwardClient("127.0.0.1", serve.forward_port) as client:
            client.send(TAG, entries, chunk=chunk, packed=packed)


def counted(s: Samples) -> float:
    return total(s, "qwen_requests_total")


def wait_for_checkpoint_after(serve: Serve, moment: float, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        text = serve.raw()
        for line in text.splitlines():
            if line.startswith("qwen_fluent_checkpoint_last_timestamp_seconds ") and float(line.split()[1]) > moment:
                return
        assert time.monotonic() < deadline, "no checkpoint after the last ack"
        time.sleep(0.05)


def test_sigterm_then_restart_exposes_every_sample_exactly_and_a_resend_is_counted_once(tmp_path: Any) -> None:
    rng = random.Random(9)
    batches = [(f"chunk-{k}", batch(rng, 50, k * 50), k % 2 == 0) for k in range(8)]
    state = str(tmp_path / "state")
    with Serve("--state-dir", state, "--checkpoint-interval", "3600") as first:
        send(first, batches)
        before = first.settled()
        started = value(first.scrape_all(), "process_start_time_seconds")
        assert first.stop() == 0
    assert counted(before) == 400
    assert total(before, "qwen_request_duration_seconds_count") == 400
    with Serve("--state-dir", state, forward_port=first.forward_port) as second:
        after = second.scrape()
        assert after == before  # every counter, bucket, sum and gauge, to the last bit
        everything = second.scrape_all()
        assert value(everything, "process_start_time_seconds") > started  # a new process ...
        assert value(everything, "qwen_fluent_counters_start_time_seconds") <= started  # ... the same counters
        # The last message again, its ack lost with the old process: counted once.
        send(second, [batches[-1], batches[0]])
        again = second.scrape()
        assert counted(again) == 400
        assert value(again, "qwen_fluent_duplicate_messages_total", source="window") == 2
        assert value(again, "qwen_fluent_duplicate_records_total", source="window") == 100
        send(second, [("chunk-new", batch(rng, 10, 400), True)])
        assert counted(second.scrape()) == 410


def test_sigkill_after_a_checkpoint_five_times_loses_and_doubles_nothing(tmp_path: Any) -> None:
    """Five rounds: send, wait for a periodic checkpoint, SIGKILL, restart, resend the round's last chunk
    (as a client that never saw its ack would). The counts equal the records sent, every time."""
    rng = random.Random(5)
    state = str(tmp_path / "state")
    sent = 0
    port = None
    previous: Samples | None = None
    last: tuple[str, list[Any], bool] | None = None
    for round_ in range(5):
        with Serve("--state-dir", state, "--checkpoint-interval", "0.2", forward_port=port) as serve:
            port = serve.forward_port
            restored = serve.scrape()
            if previous is not None and last is not None:
                assert restored == previous
                send(serve, [last])  # the previous round's last chunk, resent after the crash
                assert counted(serve.scrape()) == sent
            chunks = [(f"r{round_}-{k}", batch(rng, 20, sent + k * 20), k % 2 == 1) for k in range(5)]
            send(serve, chunks)
            sent += 100
            acked = time.time()
            last = chunks[-1]
            wait_for_checkpoint_after(serve, acked)
            previous = serve.settled()
            assert counted(previous) == sent
            serve.kill()
    with Serve("--state-dir", state, forward_port=port) as serve:
        final = serve.scrape()
        assert final == previous and counted(final) == 500
        assert total(final, "qwen_request_duration_seconds_count") == 500


def test_without_a_state_dir_the_reset_is_visible(tmp_path: Any) -> None:
    with Serve() as first:
        send(first, [("c1", batch(random.Random(1), 5, 0), False)])
        one = first.scrape_all()
        first.stop()
    with Serve(forward_port=first.forward_port) as second:
        two = second.scrape_all()
    assert counted(two) == 0
    for s in (one, two):
        assert value(s, "qwen_fluent_counters_start_time_seconds") == value(s, "process_start_time_seconds")
    assert value(two, "process_start_time_seconds") > value(one, "process_start_time_seconds")


def test_a_damaged_checkpoint_stops_the_start_with_one_line(tmp_path: Any) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.qfs").write_bytes(b"not a checkpoint at all, but long enough for a header ....")
    serve = Serve("--state-dir", str(state))
    try:
        serve.start()
        raise AssertionError("serve started on a damaged checkpoint")
    except RuntimeError as exc:
        assert "exited with 2" in str(exc)
    assert f"qwen-fluent: error: the checkpoint '{state / 'state.qfs'}' cannot be restored" in serve.stderr()
