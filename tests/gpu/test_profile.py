"""The profiles the fake NVML serves: their header, and the recorder that writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_nvml import DEFAULT_PROFILE, PROFILES_DIR, FakeNvml, load_profile, record_profile


def test_every_profile_says_where_its_values_come_from(profile: dict[str, Any]) -> None:
    assert profile["source"] in ("hand-written", "recorded")
    assert profile["_comment"]
    if profile["source"] == "hand-written":
        assert "HAND-WRITTEN" in profile["_comment"] and "--record-profile" in profile["_comment"]
    else:
        assert profile["recorded_at"]


def test_the_default_profile_is_an_h100() -> None:
    profile = load_profile(DEFAULT_PROFILE)
    assert DEFAULT_PROFILE.parent == PROFILES_DIR
    assert profile["devices"][0]["name"] == "NVIDIA H100 80GB HBM3"
    mem = profile["devices"][0]["memory"]
    assert mem["used"] + mem["free"] + mem["reserved"] == mem["total"]


def test_recording_the_fake_reproduces_its_profile(profile: dict[str, Any]) -> None:
    """record_profile (what the device check runs on a real GPU) reads back what the fake serves."""
    fake = FakeNvml(profile)
    fake.nvmlInit()
    recorded = record_profile(fake, comment="round trip")
    fake.nvmlShutdown()
    assert recorded["driver_version"] == profile["driver_version"]
    for want, got in zip(profile["devices"], recorded["devices"], strict=True):
        for key in (
            "name",
            "uuid",
            "pci_bus_id",
            "memory",
            "utilization",
            "temperature_gpu_c",
            "power_usage_mw",
            "enforced_power_limit_mw",
            "total_energy_mj",
            "clocks_mhz",
            "clocks_event_reasons",
            "ecc",
            "mig_mode",
            "processes",
        ):
            assert got[key] == want[key], key


def test_a_recorded_failure_replays_as_the_same_failure(tmp_path: Path) -> None:
    fake = FakeNvml(gpus=2)
    fake.fail(1, "nvmlDeviceGetTotalEccErrors", FakeNvml.NVML_ERROR_NOT_SUPPORTED)
    fake.enable_mig(0, [{}])
    fake.nvmlInit()
    recorded = record_profile(fake)
    fake.nvmlShutdown()
    assert recorded["devices"][1]["errors"] == {
        "nvmlDeviceGetTotalEccErrors:corrected": "not_supported",
        "nvmlDeviceGetTotalEccErrors:uncorrected": "not_supported",
    }
    assert len(recorded["devices"][0]["mig_devices"]) == 1
    path = tmp_path / "recorded.json"
    path.write_text(json.dumps(recorded))
    replay = FakeNvml.from_file(path)
    replay.nvmlInit()
    with pytest.raises(replay.NVMLError) as info:
        replay.nvmlDeviceGetTotalEccErrors(replay.nvmlDeviceGetHandleByIndex(1), 0, 0)
    assert info.value.value == FakeNvml.NVML_ERROR_NOT_SUPPORTED
    mig = replay.nvmlDeviceGetMigDeviceHandleByIndex(replay.nvmlDeviceGetHandleByIndex(0), 0)
    assert replay.nvmlDeviceGetUUID(mig) == recorded["devices"][0]["mig_devices"][0]["uuid"]


def test_a_profile_of_another_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"schema": 0, "devices": []}))
    with pytest.raises(ValueError, match="schema"):
        load_profile(path)


def test_the_fake_refuses_calls_before_init() -> None:
    fake = FakeNvml()
    with pytest.raises(fake.NVMLError) as info:
        fake.nvmlDeviceGetCount()
    assert info.value.value == FakeNvml.NVML_ERROR_UNINITIALIZED


def test_the_fake_matches_pynvml_signatures() -> None:
    """Every pynvml function the fake stands in for exists in pynvml with parameters the fake accepts."""
    import inspect

    import pynvml

    names = [n for n in dir(FakeNvml) if n.startswith("nvml") and callable(getattr(FakeNvml, n))]
    assert len(names) > 30
    for name in names:
        real = getattr(pynvml, name)
        fake_params = list(inspect.signature(getattr(FakeNvml(), name)).parameters)
        real_params = list(inspect.signature(real).parameters)
        assert len(fake_params) == len(real_params), name
    for const in ("NVML_CLOCK_SM", "NVML_CLOCK_MEM", "NVML_TEMPERATURE_GPU", "NVML_VOLATILE_ECC", "nvmlMemory_v2",
                  "nvmlEventTypeXidCriticalError", "NVML_DEVICE_MIG_ENABLE", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED"):
        assert getattr(FakeNvml, const) == getattr(pynvml, const), const


def test_error_reasons_follow_pynvml_error_names() -> None:
    """Each NVML_ERROR_<NAME> that pynvml raises becomes reason "<name>" (lower case)."""
    import pynvml

    from qwen_fluent.gpu.errors import REASONS, reason_of

    codes = {n: getattr(pynvml, n) for n in dir(pynvml) if n.startswith("NVML_ERROR_")}
    assert len(codes) > 25
    for name, code in codes.items():
        reason = reason_of(pynvml.NVMLError(code))
        assert reason == name.removeprefix("NVML_ERROR_").lower(), name
        assert reason in REASONS
        if hasattr(FakeNvml, name):
            assert getattr(FakeNvml, name) == code, name
    assert reason_of(ValueError("x")) == "exception"
    assert reason_of(pynvml.NVMLError(4321)) == "other"
