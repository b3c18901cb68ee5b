"""scripts/gpu_check.py, the device check: its parsing and verdicts here, its GPU run on the device machine.

The parts that need a GPU (the load, nvidia-smi) cannot run here; everything
around them does: the receiver it starts (in-process, over real HTTP), the
comparisons it makes (fed with what nvidia-smi prints for the profile's
GPU), the profile it records, the timing it reports, and its refusal, with
a clear line, on a machine without NVML.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_nvml import FakeNvml, load_profile

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
MIB = 1024 * 1024


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gpu_check = _load_script()

SMI_ROW = (
    "0, GPU-4a6b1f0e-1c2d-4e3f-8a9b-0c1d2e3f4a5b, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 550.54.15, "
    "81559, 8705, 72275, 97, 41, 52, 598.23, 700.00, 1980, 2619"
)


def test_parse_smi_csv() -> None:
    [row] = gpu_check.parse_smi_csv(SMI_ROW + "\n", gpu_check.SMI_GPU_FIELDS)
    assert row["uuid"] == "GPU-4a6b1f0e-1c2d-4e3f-8a9b-0c1d2e3f4a5b"
    assert row["driver_version"] == "550.54.15"
    assert row["memory.used"] == 8705.0 and row["power.draw"] == 598.23
    [row] = gpu_check.parse_smi_csv("0, [N/A], [Not Supported]\n", ["index", "ecc.errors.corrected.volatile.total", "x"])
    assert row == {"index": 0.0, "ecc.errors.corrected.volatile.total": None, "x": None}
    [row] = gpu_check.parse_smi_csv("0, 550.54\n", ["index", "driver_version"])
    assert row["driver_version"] == "550.54"  # text, not the number 550.54
    with pytest.raises(ValueError):
        gpu_check.parse_smi_csv("1, 2\n", ["a"])


def test_helpers() -> None:
    assert gpu_check.profile_slug("NVIDIA H100 80GB HBM3") == "h100_80gb_hbm3"
    assert gpu_check.profile_slug("NVIDIA H200") == "h200"
    assert gpu_check.within(100 * MIB, 100.5 * MIB)
    assert not gpu_check.within(100 * MIB, 110 * MIB)
    assert gpu_check.within(8705 * MIB + 1000, 8705 * MIB)  # nvidia-smi rounds to MiB
    assert gpu_check.mib(None) == "none" and gpu_check.mib(3 * MIB) == "3"


def _smi_for(profile: dict[str, Any], index: int = 0, **override: Any) -> dict[str, Any]:
    """What nvidia-smi --query-gpu prints for a profile's device."""
    dev = profile["devices"][index]
    row = {
        "index": float(index),
        "uuid": dev["uuid"],
        "name": dev["name"],
        "pci.bus_id": dev["pci_bus_id"],
        "driver_version": profile["driver_version"],
        "memory.total": dev["memory"]["total"] // MIB,
        "memory.used": dev["memory"]["used"] // MIB,
        "memory.free": dev["memory"]["free"] // MIB,
        "utilization.gpu": dev["utilization"]["gpu"],
        "utilization.memory": dev["utilization"]["memory"],
        "temperature.gpu": dev["temperature_gpu_c"],
        "power.draw": dev["power_usage_mw"] / 1000,
        "enforced.power.limit": dev["enforced_power_limit_mw"] / 1000,
        "clocks.sm": dev["clocks_mhz"]["sm"],
        "clocks.mem": dev["clocks_mhz"]["mem"],
        "ecc.errors.corrected.volatile.total": dev["ecc"]["corrected"],
        "ecc.errors.uncorrected.volatile.total": dev["ecc"]["uncorrected"],
        "clocks_event_reasons.active": hex(dev["clocks_event_reasons"]),
    }
    row.update(override)
    return row


def _apps_for(profile: dict[str, Any], index: int = 0) -> list[dict[str, Any]]:
    dev = profile["devices"][index]
    return [{"pid": float(p["pid"]), "gpu_uuid": dev["uuid"], "used_memory": p["used_memory"] // MIB} for p in dev["processes"]]


@pytest.fixture
def receiver(tmp_path: Path) -> Any:
    fake = FakeNvml()
    rec = gpu_check.Receiver("inprocess", None, nvml=fake)
    rec.start()
    yield rec, fake
    rec.stop()


def _verdicts(report: Any) -> dict[str, str]:
    return {item["check"]: item["result"] for item in report.items}


def test_the_check_passes_on_agreeing_figures(receiver: Any) -> None:
    rec, fake = receiver
    profile = fake.profile
    pairs = [{"ours": gpu_check.scrape(rec.url), "smi": _smi_for(profile), "apps": _apps_for(profile)} for _ in range(3)]
    report = gpu_check.Report()
    pid = profile["devices"][0]["processes"][0]["pid"]
    gpu_check.compare(report, pairs, "0", {"pid": pid, "bytes": 4 * 1024 * MIB, "backend": "torch"}, set())
    gpu_check.check_identity(report, pairs[-1]["ours"], pairs[-1]["smi"], "0")
    verdicts = _verdicts(report)
    for name in (
        "memory used within 1 %",
        "memory total",
        "power limit",
        "utilisation above 0.5 under load",
        "load pid found with its memory",
        "uuid",
        "name",
        "pci bus id",
        "driver version",
        "ECC corrected",
    ):
        assert verdicts[name] == "PASS", (name, report.items)
    assert not report.failed


def test_the_check_fails_when_memory_disagrees_by_more_than_1_percent(receiver: Any) -> None:
    rec, fake = receiver
    profile = fake.profile
    used = profile["devices"][0]["memory"]["used"] // MIB
    pairs = [{"ours": gpu_check.scrape(rec.url), "smi": _smi_for(profile, **{"memory.used": used * 1.05}), "apps": []}]
    report = gpu_check.Report()
    gpu_check.compare(report, pairs, "0", {"pid": 1, "bytes": 1, "backend": "torch"}, set())
    verdicts = _verdicts(report)
    assert verdicts["memory used within 1 %"] == "FAIL"
    assert verdicts["load pid found with its memory"] == "FAIL"  # pid 1 is not on the GPU
    assert report.failed


def test_the_check_fails_an_idle_gpu_under_load(receiver: Any) -> None:
    rec, fake = receiver
    fake.devices[0]["utilization"] = {"gpu": 3, "memory": 0}
    rec.collector.cache_seconds = 0
    pairs = [{"ours": gpu_check.scrape(rec.url), "smi": _smi_for(fake.profile), "apps": _apps_for(fake.profile)}]
    report = gpu_check.Report()
    pid = fake.devices[0]["processes"][0]["pid"]
    gpu_check.compare(report, pairs, "0", {"pid": pid, "bytes": 1, "backend": "torch"}, set())
    assert _verdicts(report)["utilisation above 0.5 under load"] == "FAIL"


def test_a_load_seen_through_another_pid_namespace_is_still_found(receiver: Any) -> None:
    rec, fake = receiver
    pairs = [{"ours": gpu_check.scrape(rec.url), "smi": _smi_for(fake.profile), "apps": _apps_for(fake.profile)}]
    report = gpu_check.Report()
    gpu_check.compare(report, pairs, "0", {"pid": 99999, "bytes": 1, "backend": "torch"}, set())
    item = next(i for i in report.items if i["check"] == "load pid found with its memory")
    assert item["result"] == "PASS" and "another PID namespace" in item["detail"]


def test_without_load_the_load_checks_are_not_run_and_the_result_is_partial(receiver: Any, tmp_path: Path) -> None:
    rec, fake = receiver
    pairs = [{"ours": gpu_check.scrape(rec.url), "smi": _smi_for(fake.profile), "apps": []}]
    report = gpu_check.Report()
    gpu_check.compare(report, pairs, "0", None, set())
    assert _verdicts(report)["utilisation above 0.5 under load"] == "NOT RUN"
    assert gpu_check.finish(report, tmp_path, {}) == 2


def test_record_writes_a_profile_the_fake_can_serve(tmp_path: Path) -> None:
    fake = FakeNvml(gpus=2)
    fake.nvmlInit()
    report = gpu_check.Report()
    args = argparse.Namespace(gpu=0, record_profile=False)
    gpu_check.record(report, fake, args, tmp_path, {"load": {"backend": "torch 2.4"}})
    fake.nvmlShutdown()
    path = tmp_path / "profiles" / "h100_80gb_hbm3.json"
    profile = load_profile(path)
    assert profile["source"] == "recorded" and "RECORDED" in profile["_comment"]
    assert len(profile["devices"]) == 2
    replay = FakeNvml(profile)
    replay.nvmlInit()
    assert replay.nvmlDeviceGetUUID(replay.nvmlDeviceGetHandleByIndex(1)) == fake.devices[1]["uuid"]


def test_timing_reports_a_median_per_gpu() -> None:
    report = gpu_check.Report()
    figures = gpu_check.timing(report, argparse.Namespace(timing_reads=20), nvml=FakeNvml(gpus=4))
    assert figures["gpus"] == 4 and figures["reads"] == 20
    assert figures["per_gpu_s"] == pytest.approx(figures["median_s"] / 4)
    assert "per GPU" in report.items[-1]["detail"]


def test_the_load_worker_says_why_it_cannot_load_here(tmp_path: Path) -> None:
    """No GPU here: the worker reports NOLOAD (no torch with CUDA, no libcuda) and the check records why."""
    args = argparse.Namespace(gpu=0, alloc_gib=0.01, load_seconds=5, ready_seconds=120)
    proc, info = gpu_check.start_load(args, tmp_path)
    assert proc is None
    assert "libcuda" in info["error"] or "CUDA" in info["error"]


def test_the_script_on_a_machine_without_nvml_fails_with_one_clear_line(tmp_path: Path) -> None:
    import pynvml

    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.fail("this test is for machines without an NVIDIA driver; on a GPU machine run the script itself")
    except pynvml.NVMLError:
        pass
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 1
    assert "FAIL  NVML: nvmlInit failed" in result.stdout and "RESULT: FAIL" in result.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["checks"][-1]["result"] == "FAIL"


def test_help_documents_the_one_command() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60, check=True)
    for flag in ("--record-profile", "--gpu", "--alloc-gib", "--metrics-url", "--receiver"):
        assert flag in result.stdout


FAKE_SMI = r'''#!{python}
"""Stands in for nvidia-smi: answers --query-gpu / --query-compute-apps from a JSON file, like the real one."""
import json, sys
data = json.load(open({data!r}))
arg = next(a for a in sys.argv[1:] if a.startswith("--query-"))
kind, fields = arg[len("--query-"):].split("=", 1)
rows = data["gpu"] if kind == "gpu" else data["apps"]
for field in fields.split(","):
    if rows and field not in rows[0]:
        print(f'Field "{{field}}" is not a valid field to query.', file=sys.stderr)
        sys.exit(2)
for row in rows:
    print(", ".join(str(row[f]) for f in fields.split(",")))
'''


def test_the_whole_check_runs_end_to_end_on_the_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """scripts/gpu_check.py's full flow with the fake as pynvml, an nvidia-smi that prints the same GPU, and a
    stand-in load process: every verdict PASS, exit 0, a report and a recorded profile written."""
    fake = FakeNvml()
    profile = fake.profile
    dev = profile["devices"][0]
    smi = _smi_for(profile)
    smi.pop("clocks_event_reasons.active")  # as an nvidia-smi older than the field: the check must cope
    smi["index"] = 0
    data = tmp_path / "smi.json"
    data.write_text(json.dumps({"gpu": [smi], "apps": [
        {"pid": p["pid"], "gpu_uuid": dev["uuid"], "used_memory": p["used_memory"] // MIB} for p in dev["processes"]
    ]}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_SMI.format(python=sys.executable, data=str(data)))
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.delenv("OUT", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", fake)

    def stand_in_load(args: Any, out_dir: Path) -> Any:
        proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, text=True)
        return proc, {"pid": dev["processes"][0]["pid"], "backend": "stand-in", "bytes": 4 * 1024 * MIB}

    monkeypatch.setattr(gpu_check, "start_load", stand_in_load)
    out = tmp_path / "out"
    code = gpu_check.main(["--receiver", "inprocess", "--poll-seconds", "0", "--timing-reads", "10", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "RESULT: PASS" in printed and "FAIL" not in printed.replace("RESULT: PASS", "")
    report = json.loads((out / "gpu_check.json").read_text())
    results = {item["check"]: item["result"] for item in report["checks"]}
    for name in ("memory used within 1 %", "load pid found with its memory", "utilisation above 0.5 under load", "uuid"):
        assert results[name] == "PASS"
    assert report["figures"]["timing"]["gpus"] == 1
    assert load_profile(out / "profiles" / "h100_80gb_hbm3.json")["devices"][0]["uuid"] == dev["uuid"]
    assert fake._refcount == 0  # every nvmlInit was shut down
