"""MIG: devices listed with their parent; what NVML does not answer on MIG is left out, not zero."""

from __future__ import annotations

from typing import Any

from tests.support.fake_nvml import FakeNvml

GIB = 1024**3

PARENT_ONLY = (
    "qwen_gpu_utilization_ratio",
    "qwen_gpu_memory_utilization_ratio",
    "qwen_gpu_temperature_celsius",
    "qwen_gpu_power_watts",
    "qwen_gpu_power_limit_watts",
    "qwen_gpu_energy_joules_total",
    "qwen_gpu_sm_clock_hertz",
    "qwen_gpu_memory_clock_hertz",
)


def _mig_fake() -> FakeNvml:
    fake = FakeNvml(gpus=2)
    fake.enable_mig(
        0,
        [
            {
                "slot": 0,
                "name": "NVIDIA H100 80GB HBM3 MIG 3g.40gb",
                "uuid": "MIG-11111111-2222-4333-8444-555555555555",
                "gpu_instance_id": 2,
                "compute_instance_id": 0,
                "memory": {"total": 40 * GIB, "reserved": 0, "free": 30 * GIB, "used": 10 * GIB},
                "processes": [{"pid": 700, "used_memory": 9 * GIB}],
            },
            {
                "slot": 3,  # slots need not be contiguous: 1 and 2 are empty
                "name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
                "uuid": "MIG-aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
                "gpu_instance_id": 9,
                "compute_instance_id": 0,
                "memory": {"total": 10 * GIB, "reserved": 0, "free": 9 * GIB, "used": 1 * GIB},
                "processes": [],
            },
        ],
    )
    return fake


def test_mig_devices_are_listed_with_their_parent(scrape_of: Any) -> None:
    fake = _mig_fake()
    scrape = scrape_of(fake)
    parent = fake.devices[0]
    info = {s.labels["uuid"]: s.labels for s in scrape.samples("qwen_gpu_info")}
    assert info["MIG-11111111-2222-4333-8444-555555555555"] == {
        "gpu": "0/0",
        "uuid": "MIG-11111111-2222-4333-8444-555555555555",
        "name": "NVIDIA H100 80GB HBM3 MIG 3g.40gb",
        "driver_version": fake.profile["driver_version"],
        "pci_bus_id": parent["pci_bus_id"],
        "parent_gpu": "0",
        "mig": "2/0",
    }
    assert info["MIG-aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"]["gpu"] == "0/3"
    assert info["MIG-aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"]["mig"] == "9/0"
    assert info[parent["uuid"]]["parent_gpu"] == ""
    assert len(info) == 4  # two GPUs, two MIG devices
    # empty slots (NOT_FOUND) are not failures
    assert scrape.samples("qwen_gpu_nvml_errors_total") == []
    assert fake.calls["nvmlDeviceGetMigDeviceHandleByIndex"] == fake.devices[0]["max_mig_device_count"]


def test_mig_memory_and_processes_are_per_instance(scrape_of: Any) -> None:
    fake = _mig_fake()
    scrape = scrape_of(fake)
    labels = {"gpu": "0/0", "uuid": "MIG-11111111-2222-4333-8444-555555555555", "name": "NVIDIA H100 80GB HBM3 MIG 3g.40gb"}
    assert scrape.value("qwen_gpu_memory_used_bytes", **labels) == 10 * GIB
    assert scrape.value("qwen_gpu_memory_total_bytes", **labels) == 40 * GIB
    assert scrape.value("qwen_gpu_up", **labels) == 1.0
    assert scrape.value("qwen_gpu_compute_processes", **labels) == 1
    pids = {(s.labels["gpu"], s.labels["pid"]): s.value for s in scrape.samples("qwen_gpu_process_memory_used_bytes")}
    assert pids[("0/0", "700")] == 9 * GIB
    # the MIG parent's own process list (root-only aggregate) is not asked: no double count
    assert not any(gpu == "0" for gpu, _ in pids)
    assert ("1", str(fake.devices[1]["processes"][0]["pid"])) in pids


def test_metrics_nvml_lacks_on_mig_are_absent_not_zero(scrape_of: Any) -> None:
    fake = _mig_fake()
    scrape = scrape_of(fake)
    mig_uuids = {"MIG-11111111-2222-4333-8444-555555555555", "MIG-aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"}
    for name in (*PARENT_ONLY, "qwen_gpu_clock_event_active", "qwen_gpu_ecc_errors_total"):
        samples = scrape.samples(name)
        assert samples, name  # the parent and the other GPU still have it
        assert not any(s.labels["uuid"] in mig_uuids for s in samples), name
    # and not counted as failures either: they are never asked of a MIG device
    assert scrape.samples("qwen_gpu_nvml_errors_total") == []


def test_parent_gpu_keeps_its_own_board_metrics(scrape_of: Any) -> None:
    fake = _mig_fake()
    scrape = scrape_of(fake)
    parent = fake.devices[0]
    labels = {"gpu": "0", "uuid": parent["uuid"], "name": parent["name"]}
    assert scrape.value("qwen_gpu_power_watts", **labels) == parent["power_usage_mw"] / 1000
    assert scrape.value("qwen_gpu_temperature_celsius", **labels) == parent["temperature_gpu_c"]


def test_switching_mig_off_brings_back_what_mig_did_not_support(scrape_of: Any) -> None:
    fake = FakeNvml()
    fake.enable_mig(0, [{}])
    fake.fail(0, "nvmlDeviceGetUtilizationRates", FakeNvml.NVML_ERROR_NOT_SUPPORTED)  # as on a MIG parent
    scrape = scrape_of(fake, cache_seconds=0)
    labels = {"gpu": "0", "uuid": fake.devices[0]["uuid"], "name": fake.devices[0]["name"]}
    assert scrape.value("qwen_gpu_utilization_ratio", **labels) is None
    fake.heal(0, "nvmlDeviceGetUtilizationRates")
    fake.devices[0]["mig_mode"] = [0, 0]
    fake.devices[0]["mig_devices"] = []
    assert scrape.value("qwen_gpu_utilization_ratio", **labels) == 0.97
    assert not any("/" in s.labels["gpu"] for s in scrape.samples("qwen_gpu_info"))
