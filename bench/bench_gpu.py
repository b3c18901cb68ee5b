#!/usr/bin/env python3
"""Time one GPU collection (an uncached collect()) against the fake NVML.

    python3 bench/bench_gpu.py [--reads 2000]

This measures the collector's own cost: walking the devices, the bookkeeping
per call, per-process pod attribution (cgroup reads from a fixture /proc,
log-folder lookups) and building the metric families. The fake answers in
Python in about a microsecond per call; real NVML calls cost more (tens of
microseconds for most, up to milliseconds for process lists), which the
device check (scripts/gpu_check.py) times on a real GPU. Prints the median
and p90 per collection and per GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qwen_fluent.gpu import GpuCollector  # noqa: E402
from tests.support.fake_nvml import FakeNvml  # noqa: E402

PROCESSES_PER_GPU = 4  # a vLLM tensor-parallel rank plus a few sidecars: typical of an inference node


def fixture_host(root: Path, gpus: int) -> list[list[int]]:
    """A /proc and /var/log with PROCESSES_PER_GPU pod processes per GPU; returns their pids."""
    (root / "log" / "pods").mkdir(parents=True)
    (root / "log" / "containers").mkdir(parents=True)
    pids: list[list[int]] = []
    for gpu in range(gpus):
        row = []
        for n in range(PROCESSES_PER_GPU):
            pid = 10_000 + gpu * 100 + n
            uid = f"{gpu:08x}-0000-4000-8000-{n:012x}"
            cid = f"{gpu:032x}{n:032x}"
            (root / "proc" / str(pid)).mkdir(parents=True)
            (root / "proc" / str(pid) / "cgroup").write_text(
                f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid.replace('-', '_')}.slice/"
                f"cri-containerd-{cid}.scope\n"
            )
            (root / "log" / "pods" / f"inference_vllm-{gpu}-{n}_{uid}").mkdir()
            os.symlink(os.devnull, root / "log" / "containers" / f"vllm-{gpu}-{n}_inference_vllm-{cid}.log")
            row.append(pid)
        pids.append(row)
    return pids


def bench(gpus: int, reads: int, attribution: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pids = fixture_host(root, gpus)
        fake = FakeNvml(gpus=gpus)
        for gpu, row in enumerate(pids):
            fake.set_processes(gpu, [(pid, (n + 1) * 1024**3) for n, pid in enumerate(row)])
        collector = GpuCollector(
            nvml=fake,
            cache_seconds=0,
            process_attribution=attribution,
            proc_root=str(root / "proc"),
            log_root=str(root / "log"),
        )
        for _ in range(20):  # warm: identity caches, pod index
            list(collector.collect())
        durations = []
        for _ in range(reads):
            started = time.perf_counter()
            list(collector.collect())
            durations.append(time.perf_counter() - started)
        collector.close()
    return statistics.median(durations), statistics.quantiles(durations, n=10)[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=2000, help="collections timed per case (default 2000)")
    args = parser.parse_args()
    print(f"one uncached collect() against the fake NVML, {PROCESSES_PER_GPU} processes per GPU, {args.reads} reads")
    print(f"{'GPUs':>4} {'attribution':>11} {'median ms':>10} {'p90 ms':>8} {'per GPU ms':>11}")
    for gpus in (1, 8):
        for attribution in (False, True):
            median, p90 = bench(gpus, args.reads, attribution)
            print(f"{gpus:>4} {'on' if attribution else 'off':>11} {median * 1e3:>10.3f} {p90 * 1e3:>8.3f} {median * 1e3 / gpus:>11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
