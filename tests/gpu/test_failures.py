"""What goes wrong: unsupported calls, one failing GPU among several, a lost GPU, no NVML at all."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest

from qwen_fluent.gpu import GpuCollector
from tests.support.fake_nvml import FakeNvml

E = FakeNvml


def _labels(fake: FakeNvml, index: int) -> dict[str, str]:
    dev = fake.devices[index]
    return {"gpu": str(index), "uuid": dev["uuid"], "name": dev["name"]}


def test_an_unsupported_call_is_left_out_counted_once_and_not_asked_again(scrape_of: Any) -> None:
    fake = FakeNvml(gpus=2)
    fake.fail(0, "nvmlDeviceGetTotalEccErrors", E.NVML_ERROR_NOT_SUPPORTED)
    fake.fail(0, "nvmlDeviceGetPowerUsage", E.NVML_ERROR_NOT_SUPPORTED)
    scrape = scrape_of(fake, cache_seconds=0)
    for _ in range(3):
        scrape.registry.collect()  # three NVML reads
        list(scrape.collector.collect())
    assert scrape.value("qwen_gpu_power_watts", **_labels(fake, 0)) is None
    assert scrape.value("qwen_gpu_ecc_errors_total", type="corrected", **_labels(fake, 0)) is None
    # the other values of the same GPU, and the other GPU, are still there
    assert scrape.value("qwen_gpu_power_limit_watts", **_labels(fake, 0)) == 700.0
    assert scrape.value("qwen_gpu_power_watts", **_labels(fake, 1)) is not None
    assert scrape.value("qwen_gpu_ecc_errors_total", type="corrected", **_labels(fake, 1)) == 0.0
    assert scrape.value("qwen_gpu_nvml_errors_total", call="nvmlDeviceGetPowerUsage", reason="not_supported") == 1
    # corrected and uncorrected are two calls, each asked once
    assert scrape.value("qwen_gpu_nvml_errors_total", call="nvmlDeviceGetTotalEccErrors", reason="not_supported") == 2
    reads = scrape.collector.reads
    assert reads >= 4
    # GPU 1 answered power once per read; GPU 0 was asked only the first time
    assert fake.calls["nvmlDeviceGetPowerUsage"] == reads + 1


def test_one_failing_gpu_among_several_hides_nothing_else(scrape_of: Any) -> None:
    fake = FakeNvml(gpus=4)
    fake.fail(2, "nvmlDeviceGetUtilizationRates", E.NVML_ERROR_UNKNOWN)
    fake.fail(2, "nvmlDeviceGetTemperature", E.NVML_ERROR_NO_PERMISSION)
    scrape = scrape_of(fake, cache_seconds=0)
    for index in (0, 1, 3):
        assert scrape.value("qwen_gpu_utilization_ratio", **_labels(fake, index)) == 0.97
        assert scrape.value("qwen_gpu_temperature_celsius", **_labels(fake, index)) == 52.0
    assert scrape.value("qwen_gpu_utilization_ratio", **_labels(fake, 2)) is None
    assert scrape.value("qwen_gpu_temperature_celsius", **_labels(fake, 2)) is None
    assert scrape.value("qwen_gpu_memory_used_bytes", **_labels(fake, 2)) is not None
    assert scrape.value("qwen_gpu_up", **_labels(fake, 2)) == 1.0
    errors = scrape.value("qwen_gpu_nvml_errors_total", call="nvmlDeviceGetUtilizationRates", reason="unknown")
    assert errors == scrape.collector.reads  # a transient failure is tried (and counted) at every read
    assert scrape.value("qwen_gpu_nvml_errors_total", call="nvmlDeviceGetTemperature", reason="no_permission") >= 1
    # it comes back when the GPU answers again
    fake.heal(2, "nvmlDeviceGetUtilizationRates")
    assert scrape.value("qwen_gpu_utilization_ratio", **_labels(fake, 2)) == 0.97


def test_a_gpu_that_falls_off_the_bus_is_reported_not_fatal(scrape_of: Any) -> None:
    fake = FakeNvml(gpus=3)
    scrape = scrape_of(fake, cache_seconds=0)
    assert scrape.value("qwen_gpu_up", **_labels(fake, 1)) == 1.0
    fake.lose(1)
    # still named by its last known identity, with no stale values
    assert scrape.value("qwen_gpu_up", **_labels(fake, 1)) == 0.0
    assert scrape.value("qwen_gpu_memory_used_bytes", **_labels(fake, 1)) is None
    assert scrape.value("qwen_gpu_up", **_labels(fake, 0)) == 1.0
    assert scrape.value("qwen_gpu_up", **_labels(fake, 2)) == 1.0
    assert scrape.value("qwen_gpu_memory_used_bytes", **_labels(fake, 2)) is not None
    assert scrape.value("qwen_gpu_nvml_errors_total", call="nvmlDeviceGetHandleByIndex", reason="gpu_is_lost") >= 1
    assert scrape.value("qwen_gpu_nvml_up") == 1.0


def test_a_gpu_lost_before_it_was_ever_read_is_still_reported(scrape_of: Any) -> None:
    fake = FakeNvml(gpus=2)
    fake.lose(0)
    scrape = scrape_of(fake)
    assert scrape.value("qwen_gpu_up", gpu="0", uuid="", name="") == 0.0
    assert scrape.value("qwen_gpu_up", **_labels(fake, 1)) == 1.0


def test_a_gpu_lost_in_the_middle_of_its_read_is_reported_lost(scrape_of: Any) -> None:
    fake = FakeNvml(gpus=2)
    fake.fail(0, "nvmlDeviceGetClockInfo", E.NVML_ERROR_GPU_IS_LOST)
    scrape = scrape_of(fake)
    assert scrape.value("qwen_gpu_up", **_labels(fake, 0)) == 0.0
    assert scrape.value("qwen_gpu_utilization_ratio", **_labels(fake, 0)) is None  # read before, not exposed
    assert scrape.value("qwen_gpu_up", **_labels(fake, 1)) == 1.0


def test_clock_reasons_fall_back_to_the_pre_r535_name(scrape_of: Any) -> None:
    fake = FakeNvml()
    fake.fail(0, "nvmlDeviceGetCurrentClocksEventReasons", E.NVML_ERROR_FUNCTION_NOT_FOUND)
    scrape = scrape_of(fake, cache_seconds=0)
    list(scrape.collector.collect())
    value = scrape.value("qwen_gpu_clock_event_active", reason="sw_power_cap", **_labels(fake, 0))
    assert value == 1.0
    assert fake.calls["nvmlDeviceGetCurrentClocksEventReasons"] == 1  # not asked again
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == scrape.collector.reads


def test_no_nvml_gives_nvml_up_0_one_log_line_and_no_exception(caplog: pytest.LogCaptureFixture, tmp_path: Any) -> None:
    fake = FakeNvml(available=False, init_error=E.NVML_ERROR_DRIVER_NOT_LOADED)
    now = [0.0]
    collector = GpuCollector(nvml=fake, clock=lambda: now[0], proc_root=str(tmp_path), log_root=str(tmp_path))
    with caplog.at_level(logging.DEBUG, logger="qwen_fluent.gpu"):
        assert collector.start() is False
        from tests.gpu.conftest import Scrape

        scrape = Scrape(collector)
        for step in range(5):
            now[0] = step * 30.0  # two retries within these 120 s
            assert scrape.value("qwen_gpu_nvml_up") == 0.0
    lines = [r for r in caplog.records if r.name == "qwen_fluent.gpu"]
    assert len(lines) == 1
    assert "driver_not_loaded" in lines[0].getMessage() and "qwen_gpu_nvml_up 0" in lines[0].getMessage()
    assert scrape.value("qwen_gpu_nvml_errors_total", call="nvmlInit", reason="driver_not_loaded") == 3
    assert {fam.name for fam in scrape.registry.collect()} == {
        "qwen_gpu_nvml_up",
        "qwen_gpu_nvml_errors",
        "qwen_gpu_collection_duration_seconds",
    }
    assert collector.unavailable is not None and collector.unavailable.reason == "driver_not_loaded"
    collector.close()


def test_nvml_that_appears_later_is_picked_up(caplog: pytest.LogCaptureFixture, tmp_path: Any) -> None:
    fake = FakeNvml(available=False)
    now = [0.0]
    collector = GpuCollector(nvml=fake, clock=lambda: now[0], proc_root=str(tmp_path), log_root=str(tmp_path))
    from tests.gpu.conftest import Scrape

    scrape = Scrape(collector)
    with caplog.at_level(logging.INFO, logger="qwen_fluent.gpu"):
        assert collector.start() is False
        assert scrape.value("qwen_gpu_nvml_up") == 0.0
        fake.available = True  # the driver is installed
        now[0] = 61.0
        assert scrape.value("qwen_gpu_nvml_up") == 1.0
    assert scrape.value("qwen_gpu_up", **_labels(fake, 0)) == 1.0
    assert any("available now" in r.getMessage() for r in caplog.records)
    collector.close()
    assert scrape.value("qwen_gpu_nvml_up") == 0.0  # closed: not restarted behind our back


def test_real_pynvml_on_this_machine_agrees_with_a_direct_init(caplog: pytest.LogCaptureFixture, tmp_path: Any) -> None:
    """The real pynvml module (nvml=None): up exactly when nvmlInit works here; on a machine without a driver, 0."""
    import pynvml

    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        direct = 1.0
    except pynvml.NVMLError:
        direct = 0.0
    collector = GpuCollector(proc_root=str(tmp_path), log_root=str(tmp_path))
    from tests.gpu.conftest import Scrape

    with caplog.at_level(logging.INFO, logger="qwen_fluent.gpu"):
        collector.start()
        scrape = Scrape(collector)
        assert scrape.value("qwen_gpu_nvml_up") == direct
        assert scrape.value("qwen_gpu_nvml_up") == direct
    if direct == 0.0:
        assert len([r for r in caplog.records if r.name == "qwen_fluent.gpu"]) == 1
    collector.close()


def test_pynvml_not_installed_is_nvml_up_0(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    collector = GpuCollector(proc_root=str(tmp_path), log_root=str(tmp_path))
    from tests.gpu.conftest import Scrape

    assert collector.start() is False
    scrape = Scrape(collector)
    assert scrape.value("qwen_gpu_nvml_up") == 0.0
    assert scrape.value("qwen_gpu_nvml_errors_total", call="nvmlInit", reason="import_error") == 1
    collector.close()


def test_device_count_failure_leaves_nvml_up_and_counts_it(scrape_of: Any) -> None:
    fake = FakeNvml()
    scrape = scrape_of(fake)
    original = fake.nvmlDeviceGetCount

    def broken() -> int:
        original()
        raise fake.NVMLError(E.NVML_ERROR_UNKNOWN)

    fake.nvmlDeviceGetCount = broken  # type: ignore[method-assign]
    scrape.collector.cache_seconds = 0
    assert scrape.value("qwen_gpu_nvml_up") == 1.0
    assert scrape.samples("qwen_gpu_up") == []
    assert scrape.value("qwen_gpu_nvml_errors_total", call="nvmlDeviceGetCount", reason="unknown") >= 1


def test_error_labels_stay_in_the_fixed_vocabulary(scrape_of: Any) -> None:
    from qwen_fluent.gpu.errors import CALLS, REASONS

    fake = FakeNvml(gpus=2)
    fake.fail(0, "nvmlDeviceGetPowerUsage", 12345)  # a code newer than our table
    fake.fail(1, "nvmlDeviceGetEnforcedPowerLimit", E.NVML_ERROR_NO_PERMISSION)
    scrape = scrape_of(fake)
    samples = scrape.samples("qwen_gpu_nvml_errors_total")
    assert samples
    for sample in samples:
        assert sample.labels["call"] in CALLS
        assert sample.labels["reason"] in REASONS
    assert scrape.value("qwen_gpu_nvml_errors_total", call="nvmlDeviceGetPowerUsage", reason="other") == 1
