"""The ``[gpu]`` section of the configuration, as a dataclass.

The configuration loader (:mod:`qwen_fluent.config`) builds :class:`GpuConfig`
from the ``[gpu]`` table, ``--no-gpu`` or ``QWEN_FLUENT_NO_GPU`` (``enabled =
false``), and the app hands it to :meth:`GpuConfig.collector`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class GpuConfig:
    """What the GPU collector reads and how often.

    ``enabled``
        Register the collector at all. Default on: on a node without NVML it
        costs one failed library load and exposes ``qwen_gpu_nvml_up 0``.
    ``cache_seconds``
        How long one NVML read is served to every scraper. Default 1 s:
        NVML's utilisation counters are themselves averaged over a sample
        period of 1/6 s to 1 s depending on the product (nvml.h,
        ``nvmlDeviceGetUtilizationRates``), so reading faster gains nothing,
        while several Prometheus replicas (an HA pair scraping every 5 s, plus
        a curl) each trigger at most one read per second. dcgm-exporter's own
        collection interval defaults to 30 s; we read on demand instead so
        that the scrape interval decides freshness.
    ``process_attribution``
        Label each GPU process with the namespace / pod / container it
        belongs to, by reading ``/proc/<pid>/cgroup``. Needs the DaemonSet to
        run with ``hostPID: true`` (otherwise the pids NVML reports are not
        visible and processes keep their pid only).
    ``proc_root``
        Where the host's ``/proc`` is. ``/proc`` with ``hostPID: true``; a
        host mount such as ``/host/proc`` otherwise.
    ``log_root``
        Where the kubelet's ``/var/log`` is mounted: pod and container names
        are read from the names in ``pods/`` and ``containers/`` under it
        (see docs/gpu.md, "Per-pod attribution").
    """

    enabled: bool = True
    cache_seconds: float = 1.0
    process_attribution: bool = True
    proc_root: str = "/proc"
    log_root: str = "/var/log"

    def __post_init__(self) -> None:
        if self.cache_seconds < 0:
            raise ValueError(f"gpu.cache_seconds must be >= 0, not {self.cache_seconds!r}")

    def collector(self, namespace: str = "qwen", *, nvml: Any = None) -> Any:
        """A :class:`~qwen_fluent.gpu.collector.GpuCollector` built from this configuration."""
        from qwen_fluent.gpu.collector import GpuCollector

        return GpuCollector(
            namespace,
            nvml=nvml,
            cache_seconds=self.cache_seconds,
            process_attribution=self.process_attribution,
            proc_root=self.proc_root,
            log_root=self.log_root,
        )
