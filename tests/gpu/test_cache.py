"""Scrape-time reads with a short cache: several scrapers share one NVML read; collect() is thread-safe."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from qwen_fluent.gpu import GpuCollector, GpuConfig
from tests.support.fake_nvml import FakeNvml


def _collector(fake: FakeNvml, tmp_path: Any, **kwargs: Any) -> GpuCollector:
    return GpuCollector(nvml=fake, proc_root=str(tmp_path), log_root=str(tmp_path), **kwargs)


def test_scrapes_within_the_window_share_one_read(tmp_path: Any) -> None:
    fake = FakeNvml(gpus=2)
    now = [100.0]
    collector = _collector(fake, tmp_path, cache_seconds=1.0, clock=lambda: now[0])
    collector.start()
    registry = CollectorRegistry()
    registry.register(collector)
    first = generate_latest(registry)
    calls = sum(fake.calls.values())
    now[0] = 100.9
    assert generate_latest(registry) == first
    assert sum(fake.calls.values()) == calls
    assert collector.reads == 1
    now[0] = 101.0  # the window is over: read again
    generate_latest(registry)
    assert collector.reads == 2
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 4
    collector.close()


def test_cache_zero_reads_every_time(tmp_path: Any) -> None:
    fake = FakeNvml()
    collector = _collector(fake, tmp_path, cache_seconds=0)
    for _ in range(3):
        list(collector.collect())
    assert collector.reads == 3
    collector.close()


def test_concurrent_scrapers_get_one_snapshot_and_one_read(tmp_path: Any) -> None:
    fake = FakeNvml(gpus=4)
    release = threading.Event()
    original = fake.nvmlDeviceGetCount

    def slow_count() -> int:
        release.wait(5)  # hold the first reader inside NVML while the others arrive
        return original()

    collector = _collector(fake, tmp_path, cache_seconds=60)
    collector.start()
    fake.nvmlDeviceGetCount = slow_count  # type: ignore[method-assign]
    registry = CollectorRegistry()
    registry.register(collector)
    results: list[bytes] = []
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            results.append(generate_latest(registry))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for t in threads:
        t.start()
    threading.Event().wait(0.1)  # one scraper is held inside NVML, the others queue on the lock
    release.set()
    for t in threads:
        t.join(10)
    assert errors == []
    assert len(results) == 8 and len(set(results)) == 1
    assert collector.reads == 1
    collector.close()


def test_collect_is_safe_against_a_concurrent_close(tmp_path: Any) -> None:
    fake = FakeNvml(gpus=2)
    collector = _collector(fake, tmp_path, cache_seconds=0)
    collector.start()
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer() -> None:
        while not stop.is_set():
            try:
                list(collector.collect())
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    collector.close()
    stop.set()
    for t in threads:
        t.join(10)
    assert errors == []
    assert fake.calls["nvmlShutdown"] == 1


def test_config_builds_the_collector_it_describes(tmp_path: Any) -> None:
    config = GpuConfig(cache_seconds=2.5, process_attribution=False, proc_root=str(tmp_path), log_root=str(tmp_path))
    collector = config.collector("acme", nvml=FakeNvml())
    assert collector.cache_seconds == 2.5
    assert collector.namespace == "acme"
    families = {fam.name for fam in collector.collect()}
    assert "acme_gpu_nvml_up" in families
    collector.close()


def test_config_rejects_a_negative_cache() -> None:
    import pytest

    with pytest.raises(ValueError):
        GpuConfig(cache_seconds=-1)


def test_config_can_be_switched_off_after_loading() -> None:
    """``qwen-fluent serve --no-gpu`` sets enabled after the file is loaded."""
    config = GpuConfig()
    config.enabled = False
    assert config.enabled is False
