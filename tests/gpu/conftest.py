"""Fixtures for the GPU collector tests: the fake NVML on every recorded profile, and fixture /proc trees."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from qwen_fluent.gpu import GpuCollector
from tests.support.fake_nvml import PROFILES_DIR, FakeNvml, load_profile

PROFILES = sorted(PROFILES_DIR.glob("*.json"))


@pytest.fixture(params=PROFILES, ids=[p.stem for p in PROFILES])
def profile(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Every profile under tests/support/nvml_profiles (hand-written or recorded on a device)."""
    return load_profile(request.param)


class Scrape:
    """A collector registered in its own registry, with a sample lookup."""

    def __init__(self, collector: GpuCollector) -> None:
        self.collector = collector
        self.registry = CollectorRegistry()
        self.registry.register(collector)

    def value(self, metric: str, /, **labels: str) -> float | None:
        return self.registry.get_sample_value(metric, labels)

    def samples(self, name: str) -> list[Any]:
        """Every sample whose name is ``name``, across all families (one scrape)."""
        return [s for fam in self.registry.collect() for s in fam.samples if s.name == name]


@pytest.fixture
def scrape_of(tmp_path: Path) -> Iterator[Any]:
    """Build a started collector on a fake (no /proc or /var/log of this machine) and close it after."""
    made: list[GpuCollector] = []

    def make(nvml: Any, **kwargs: Any) -> Scrape:
        kwargs.setdefault("proc_root", str(tmp_path / "no-proc"))
        kwargs.setdefault("log_root", str(tmp_path / "no-log"))
        collector = GpuCollector(nvml=nvml, **kwargs)
        made.append(collector)
        collector.start()
        return Scrape(collector)

    yield make
    for collector in made:
        collector.close()


@pytest.fixture
def fake(profile: dict[str, Any]) -> FakeNvml:
    return FakeNvml(profile)


class ProcTree:
    """A fixture host: ``proc/<pid>/cgroup`` files and the kubelet's ``log/pods`` and ``log/containers`` names."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.log = root / "log"
        (self.log / "pods").mkdir(parents=True)
        (self.log / "containers").mkdir(parents=True)
        self.proc.mkdir()

    def process(self, pid: int, cgroup: str) -> None:
        (self.proc / str(pid)).mkdir()
        (self.proc / str(pid) / "cgroup").write_text(cgroup)

    def pod(self, namespace: str, pod: str, uid: str, containers: dict[str, str] | None = None) -> None:
        """A pod's log folder and, for each container name -> id, its /var/log/containers link."""
        folder = self.log / "pods" / f"{namespace}_{pod}_{uid}"
        folder.mkdir()
        for name, cid in (containers or {}).items():
            (folder / name).mkdir()
            (folder / name / "0.log").write_text("")
            os.symlink(folder / name / "0.log", self.log / "containers" / f"{pod}_{namespace}_{name}-{cid}.log")


@pytest.fixture
def tree(tmp_path: Path) -> ProcTree:
    return ProcTree(tmp_path)
