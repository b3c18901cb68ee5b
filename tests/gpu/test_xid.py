"""XID errors: NVML events read by a background thread, counted per GPU and code."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from tests.support.fake_nvml import FakeNvml


def _wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_xid_events_are_counted_per_gpu_and_code(scrape_of: Any, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNvml(gpus=3)
    with caplog.at_level(logging.WARNING, logger="qwen_fluent.gpu"):
        scrape = scrape_of(fake, cache_seconds=0)
        fake.inject_xid(1, 79)
        fake.inject_xid(1, 79)
        fake.inject_xid(2, 48)
        dev1, dev2 = fake.devices[1], fake.devices[2]
        assert _wait_for(
            lambda: scrape.value("qwen_gpu_xid_errors_total", gpu="1", uuid=dev1["uuid"], name=dev1["name"], xid="79") == 2
            and scrape.value("qwen_gpu_xid_errors_total", gpu="2", uuid=dev2["uuid"], name=dev2["name"], xid="48") == 1
        )
    assert len(scrape.samples("qwen_gpu_xid_errors_total")) == 2
    # one log line per (GPU, code), not one per event
    assert len([r for r in caplog.records if "XID" in r.getMessage()]) == 2


def test_an_xid_before_the_first_scrape_joins_the_same_series(scrape_of: Any) -> None:
    fake = FakeNvml()
    from qwen_fluent.gpu import GpuCollector

    collector = GpuCollector(nvml=fake, proc_root="/nonexistent", log_root="/nonexistent")
    collector.start()
    try:
        fake.inject_xid(0, 13)
        assert _wait_for(lambda: collector._xid is not None and bool(collector._xid.counts()))
        from tests.gpu.conftest import Scrape

        scrape = Scrape(collector)
        dev = fake.devices[0]
        assert scrape.value("qwen_gpu_xid_errors_total", gpu="0", uuid=dev["uuid"], name=dev["name"], xid="13") == 1
    finally:
        collector.close()


def test_gpus_without_xid_support_are_skipped(scrape_of: Any) -> None:
    fake = FakeNvml(gpus=2)
    fake.devices[0]["supported_event_types"] = 0x1  # single-bit ECC only
    scrape = scrape_of(fake)
    watcher = scrape.collector._xid
    assert watcher is not None and watcher.registered == [fake.devices[1]["uuid"]]
    fake.inject_xid(0, 79)  # not registered: never delivered
    fake.inject_xid(1, 31)
    assert _wait_for(lambda: len(scrape.samples("qwen_gpu_xid_errors_total")) == 1)
    assert scrape.samples("qwen_gpu_xid_errors_total")[0].labels["xid"] == "31"


def test_no_xid_support_anywhere_starts_no_thread(scrape_of: Any) -> None:
    fake = FakeNvml()
    fake.devices[0]["supported_event_types"] = 0
    scrape = scrape_of(fake)
    assert scrape.collector._xid is None
    assert scrape.value("qwen_gpu_nvml_up") == 1.0


def test_xid_codes_per_gpu_are_capped(scrape_of: Any) -> None:
    from qwen_fluent.gpu.xid import MAX_XIDS_PER_GPU

    fake = FakeNvml()
    scrape = scrape_of(fake, cache_seconds=0)
    for code in range(1, MAX_XIDS_PER_GPU + 6):
        fake.inject_xid(0, code)
    assert _wait_for(
        lambda: sum(s.value for s in scrape.samples("qwen_gpu_xid_errors_total")) == MAX_XIDS_PER_GPU + 5
    )
    codes = {s.labels["xid"]: s.value for s in scrape.samples("qwen_gpu_xid_errors_total")}
    assert len(codes) == MAX_XIDS_PER_GPU + 1
    assert codes["other"] == 5


def test_close_stops_the_thread_and_frees_the_event_set(scrape_of: Any) -> None:
    fake = FakeNvml()
    scrape = scrape_of(fake)
    watcher = scrape.collector._xid
    assert watcher is not None and watcher.running
    scrape.collector.close()
    assert not watcher.running
    assert fake.calls["nvmlEventSetFree"] == 1
    assert fake.calls["nvmlShutdown"] == 1


def test_a_failing_wait_is_counted_and_the_thread_survives(scrape_of: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from qwen_fluent.gpu import xid as xid_module

    monkeypatch.setattr(xid_module, "ERROR_BACKOFF_SECONDS", 0.01)
    fake = FakeNvml()
    original = fake.nvmlEventSetWait
    failures = [2]

    def flaky(event_set: Any, timeout_ms: int) -> Any:
        if failures[0] > 0:
            failures[0] -= 1
            raise fake.NVMLError(FakeNvml.NVML_ERROR_UNKNOWN)
        return original(event_set, timeout_ms)

    fake.nvmlEventSetWait = flaky  # type: ignore[method-assign]
    scrape = scrape_of(fake, cache_seconds=0)
    fake.inject_xid(0, 94)
    assert _wait_for(lambda: len(scrape.samples("qwen_gpu_xid_errors_total")) == 1)
    assert scrape.value("qwen_gpu_nvml_errors_total", call="nvmlEventSetWait", reason="unknown") == 2
