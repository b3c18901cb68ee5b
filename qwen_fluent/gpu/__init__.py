"""GPU gauges read through NVML at scrape time.

- :class:`GpuCollector` -- the prometheus_client collector (``<namespace>_gpu_*``).
- :class:`GpuConfig`    -- the ``[gpu]`` configuration section.
- :func:`print_table`   -- ``qwen-fluent gpu``: what NVML reads now, on one screen.

The pieces: :mod:`.reader` (one NVML read as plain data), :mod:`.attribution`
(pid -> namespace/pod/container), :mod:`.xid` (XID event thread),
:mod:`.errors` (failure vocabulary). Tests hand the collector a stand-in for
pynvml (``tests/support/fake_nvml.py``); it is not part of this package.
Nothing here imports pynvml at module load: the receiver runs where it is
missing. See docs/gpu.md.
"""

from qwen_fluent.gpu.collector import GpuCollector, family_names
from qwen_fluent.gpu.config import GpuConfig
from qwen_fluent.gpu.errors import DeviceLost, GpuError, NvmlUnavailable
from qwen_fluent.gpu.table import print_table

__all__ = ["GpuCollector", "GpuConfig", "print_table", "family_names", "GpuError", "NvmlUnavailable", "DeviceLost"]
