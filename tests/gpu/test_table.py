"""``qwen-fluent gpu``: a one-screen table of what NVML reads now."""

from __future__ import annotations

import io
import sys
from typing import Any

import pytest

from qwen_fluent.gpu import print_table
from tests.support.fake_nvml import FakeNvml


def _table(fake: Any, **kwargs: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = print_table(fake, out, **kwargs)
    return code, out.getvalue()


def test_table_lists_every_gpu_and_process(profile: dict[str, Any], tmp_path: Any) -> None:
    fake = FakeNvml(profile)
    code, text = _table(fake, proc_root=str(tmp_path), log_root=str(tmp_path))
    assert code == 0
    for device in profile["devices"]:
        row = next(line for line in text.splitlines() if line.startswith(f"{device['index']} "))
        assert device["name"][:20] in row
        gib = device["memory"]["used"] / 1024**3
        assert f"{gib:.1f}/" in row
        for proc in device["processes"]:
            assert str(proc["pid"]) in text
    assert profile["driver_version"] in text
    assert fake.calls["nvmlShutdown"] == 1


def test_table_fits_one_screen_for_eight_gpus(tmp_path: Any) -> None:
    code, text = _table(FakeNvml(gpus=8), proc_root=str(tmp_path), log_root=str(tmp_path))
    assert code == 0
    lines = text.splitlines()
    assert len(lines) <= 40
    assert max(len(line) for line in lines) <= 120


def test_table_shows_pods_lost_gpus_and_failures(tree: Any) -> None:
    uid = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
    cid = "e" * 64
    tree.pod("inference", "vllm-0", uid, {"vllm": cid})
    tree.process(4242, f"0::/kubepods/besteffort/pod{uid}/{cid}\n")
    fake = FakeNvml(gpus=3)
    fake.lose(1)
    fake.fail(2, "nvmlDeviceGetPowerUsage", FakeNvml.NVML_ERROR_NO_PERMISSION)
    code, text = _table(fake, proc_root=str(tree.proc), log_root=str(tree.log))
    assert code == 0
    assert "inference/vllm-0/vllm" in text
    assert any(line.startswith("1 ") and "LOST" in line for line in text.splitlines())
    assert "nvmlDeviceGetPowerUsage no_permission x1" in text
    assert "gpu_is_lost" in text


def test_table_without_nvml_says_why_and_exits_1() -> None:
    code, text = _table(FakeNvml(available=False, init_error=FakeNvml.NVML_ERROR_DRIVER_NOT_LOADED))
    assert code == 1
    assert text.startswith("NVML unavailable (driver_not_loaded")
    assert len(text.splitlines()) == 1


def test_table_with_pynvml_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    code, text = _table(None)
    assert code == 1 and "import_error" in text


def test_table_with_the_real_pynvml_here() -> None:
    """On this machine (no driver in CI) the real module says so; on a GPU node it prints the table."""
    import pynvml

    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        expected = 0
    except pynvml.NVMLError:
        expected = 1
    code, text = _table(None)
    assert code == expected
    assert text.strip()
