"""Every metric the collector exposes, checked against the profile the fake NVML serves."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from qwen_fluent.gpu import GpuCollector, family_names
from qwen_fluent.gpu.reader import CLOCK_EVENT_REASONS
from tests.support.fake_nvml import FakeNvml

ROOT = Path(__file__).resolve().parents[2]


def expected(device: dict[str, Any]) -> dict[str, float | None]:
    """What the collector must expose for one profile device, in base units; None where NVML did not answer."""
    mem = device.get("memory") or {}
    util = device.get("utilization") or {}
    clocks = device.get("clocks_mhz") or {}

    def scaled(value: Any, factor: float) -> float | None:
        return None if value is None else value * factor

    return {
        "qwen_gpu_memory_used_bytes": mem.get("used"),
        "qwen_gpu_memory_free_bytes": mem.get("free"),
        "qwen_gpu_memory_total_bytes": mem.get("total"),
        "qwen_gpu_utilization_ratio": scaled(util.get("gpu"), 0.01),
        "qwen_gpu_memory_utilization_ratio": scaled(util.get("memory"), 0.01),
        "qwen_gpu_temperature_celsius": device.get("temperature_gpu_c"),
        "qwen_gpu_power_watts": scaled(device.get("power_usage_mw"), 1e-3),
        "qwen_gpu_power_limit_watts": scaled(device.get("enforced_power_limit_mw"), 1e-3),
        "qwen_gpu_energy_joules_total": scaled(device.get("total_energy_mj"), 1e-3),
        "qwen_gpu_sm_clock_hertz": scaled(clocks.get("sm"), 1e6),
        "qwen_gpu_memory_clock_hertz": scaled(clocks.get("mem"), 1e6),
    }


def test_every_per_gpu_value_matches_the_profile(fake: FakeNvml, profile: dict[str, Any], scrape_of: Any) -> None:
    scrape = scrape_of(fake)
    assert scrape.value("qwen_gpu_nvml_up") == 1.0
    checked = 0
    for device in profile["devices"]:
        labels = {"gpu": str(device["index"]), "uuid": device["uuid"], "name": device["name"]}
        assert scrape.value("qwen_gpu_up", **labels) == 1.0
        for name, want in expected(device).items():
            got = scrape.value(name, **labels)
            if want is None:
                assert got is None, f"{name} is exposed though the card did not answer"
            else:
                assert got == pytest.approx(want), name
                checked += 1
    assert checked >= len(profile["devices"]) * 5  # a profile that answers nothing proves nothing


def test_info_carries_driver_version_and_pci_bus_id(fake: FakeNvml, profile: dict[str, Any], scrape_of: Any) -> None:
    scrape = scrape_of(fake)
    for device in profile["devices"]:
        value = scrape.value(
            "qwen_gpu_info",
            gpu=str(device["index"]),
            uuid=device["uuid"],
            name=device["name"],
            driver_version=profile["driver_version"],
            pci_bus_id=device["pci_bus_id"],
            parent_gpu="",
            mig="",
        )
        assert value == 1.0


def test_clock_event_reasons_are_one_series_per_reason(fake: FakeNvml, profile: dict[str, Any], scrape_of: Any) -> None:
    scrape = scrape_of(fake)
    for device in profile["devices"]:
        labels = {"gpu": str(device["index"]), "uuid": device["uuid"], "name": device["name"]}
        mask = device["clocks_event_reasons"]
        for bit, reason in CLOCK_EVENT_REASONS:
            got = scrape.value("qwen_gpu_clock_event_active", reason=reason, **labels)
            assert got == (None if mask is None else float(bool(mask & bit))), reason


def test_clock_event_reasons_follow_the_mask(scrape_of: Any) -> None:
    fake = FakeNvml()
    fake.devices[0]["clocks_event_reasons"] = 0x001 | 0x040  # idle + hw thermal slowdown
    scrape = scrape_of(fake)
    active = {
        s.labels["reason"] for s in scrape.samples("qwen_gpu_clock_event_active") if s.value == 1.0
    }
    assert active == {"gpu_idle", "hw_thermal_slowdown"}


def test_ecc_counters_by_type(scrape_of: Any) -> None:
    fake = FakeNvml()
    fake.devices[0]["ecc"] = {"corrected": 17, "uncorrected": 2}
    scrape = scrape_of(fake)
    dev = fake.devices[0]
    labels = {"gpu": "0", "uuid": dev["uuid"], "name": dev["name"]}
    assert scrape.value("qwen_gpu_ecc_errors_total", type="corrected", **labels) == 17
    assert scrape.value("qwen_gpu_ecc_errors_total", type="uncorrected", **labels) == 2


def test_process_memory_by_pid(fake: FakeNvml, profile: dict[str, Any], scrape_of: Any) -> None:
    scrape = scrape_of(fake)
    for device in profile["devices"]:
        pids: dict[int, float] = {}
        for proc in device["processes"]:
            pids[proc["pid"]] = pids.get(proc["pid"], 0) + (proc["used_memory"] or 0)
        labels = {"gpu": str(device["index"]), "uuid": device["uuid"]}
        assert scrape.value("qwen_gpu_compute_processes", name=device["name"], **labels) == len(pids)
        for pid, used in pids.items():
            got = scrape.value(
                "qwen_gpu_process_memory_used_bytes", pid=str(pid), namespace="", pod="", container="", **labels
            )
            assert got == used


def test_duplicate_pid_entries_are_summed_into_one_series(scrape_of: Any) -> None:
    fake = FakeNvml()
    fake.set_processes(0, [(10, 1000), (10, 500), (11, None)])
    scrape = scrape_of(fake)
    samples = scrape.samples("qwen_gpu_process_memory_used_bytes")
    assert {s.labels["pid"]: s.value for s in samples} == {"10": 1500.0, "11": 0.0}


def test_process_series_are_capped_largest_first(scrape_of: Any) -> None:
    from qwen_fluent.gpu.reader import MAX_PROCESSES_PER_DEVICE

    fake = FakeNvml()
    n = MAX_PROCESSES_PER_DEVICE + 10
    fake.set_processes(0, [(1000 + i, (i + 1) * 1024) for i in range(n)])
    scrape = scrape_of(fake)
    samples = scrape.samples("qwen_gpu_process_memory_used_bytes")
    assert len(samples) == MAX_PROCESSES_PER_DEVICE
    assert min(s.value for s in samples) == (n - MAX_PROCESSES_PER_DEVICE + 1) * 1024
    assert [s.value for s in scrape.samples("qwen_gpu_compute_processes")] == [n]


def test_memory_falls_back_to_v1_on_an_old_driver(scrape_of: Any) -> None:
    fake = FakeNvml(memory_v2=False)
    scrape = scrape_of(fake)
    mem = fake.devices[0]["memory"]
    # v1's used is total - free: the driver's reservation included
    assert scrape.value("qwen_gpu_memory_used_bytes", gpu="0", uuid=fake.devices[0]["uuid"], name=fake.devices[0]["name"]) == (
        mem["total"] - mem["free"]
    )
    assert scrape.samples("qwen_gpu_nvml_errors_total") == []  # an old driver is not a failure


def test_collection_duration_is_exposed(fake: FakeNvml, scrape_of: Any) -> None:
    scrape = scrape_of(fake)
    value = scrape.value("qwen_gpu_collection_duration_seconds")
    assert value is not None and value >= 0.0


def test_namespace_prefixes_every_family(scrape_of: Any) -> None:
    scrape = scrape_of(FakeNvml(), namespace="acme")
    names = {fam.name for fam in scrape.registry.collect()}
    assert names and all(name.startswith("acme_gpu_") for name in names)


def _full_exposition(tmp_path: Path) -> str:
    """An exposition in which every family has samples: an XID seen, a failure counted."""
    fake = FakeNvml(gpus=2)
    fake.fail(1, "nvmlDeviceGetTotalEccErrors", FakeNvml.NVML_ERROR_UNKNOWN)
    collector = GpuCollector(nvml=fake, proc_root=str(tmp_path), log_root=str(tmp_path))
    collector.start()
    try:
        fake.inject_xid(0, 79)
        registry = CollectorRegistry()
        registry.register(collector)
        for _ in range(200):  # the watcher thread records the event within one poll
            if collector._xid is not None and collector._xid.counts():
                break
            import time

            time.sleep(0.01)
        return generate_latest(registry).decode()
    finally:
        collector.close()


def test_every_documented_family_is_exposed_with_samples(tmp_path: Path) -> None:
    text = _full_exposition(tmp_path)
    parsed = {fam.name: fam for fam in text_string_to_metric_families(text)}
    exposed = set()
    for fam in parsed.values():
        for sample in fam.samples:
            exposed.add(sample.name)
    assert set(family_names()) <= exposed


def test_exposition_passes_promtool_lint(tmp_path: Path) -> None:
    """Prometheus's own linter (naming, units, _total on counters) accepts every family."""
    text = _full_exposition(tmp_path)
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def test_docs_describe_every_family() -> None:
    doc = (ROOT / "docs" / "gpu.md").read_text()
    missing = [name for name in family_names() if f"`{name}`" not in doc]
    assert missing == []


def test_describe_does_not_touch_nvml() -> None:
    fake = FakeNvml()
    collector = GpuCollector(nvml=fake)
    CollectorRegistry().register(collector)
    assert collector.describe() == []
    assert sum(fake.calls.values()) == 0
