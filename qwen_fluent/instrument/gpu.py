"""GPU memory of the serving process, for the line's ``gpu_memory_mb``; left out when nothing can tell.

Two sources, tried in this order under ``gpu_memory = "auto"``:

1. **torch**, only when the application has already imported it and initialised CUDA
   in this process: ``torch.cuda.max_memory_allocated()``, the peak of torch's caching
   allocator on the current device since start (or since the application last reset
   it). Cheap (a counter read), so read on every line. We never import torch and never
   touch CUDA ourselves: importing torch costs seconds, and a CUDA call in a process that
   has none creates a context that takes hundreds of MiB of the GPU we are measuring.
2. **NVML** (``pynvml``, a qwen-fluent dependency): the sum of ``usedGpuMemory`` over the
   compute processes that are this process or its descendants, on every GPU. That is
   what vLLM needs: its API server (where the middleware runs) does not use the GPU,
   its engine core is a child process that does. Re-read at most every ``refresh_s``
   (default 5 s): listing processes costs ~0.1-1 ms per GPU, too much for every
   request, and memory moves slowly once the model and KV cache are allocated.

NVML reports host PIDs. In a container with its own PID namespace (a Kubernetes pod
without ``hostPID``) none of them is ours, and the field is left out; per-pod GPU memory
then comes from the receiver's own NVML attribution (docs/gpu.md).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

#: Descendant processes followed from /proc (children of children...), at most: vLLM with
#: tensor parallelism has one worker per GPU plus a few helpers; 1024 bounds a fork bomb's cost.
MAX_DESCENDANTS = 1024


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it, from Linux's ``/proc/<pid>/task/<tid>/children``.

    Where that file does not exist (another OS, a kernel without ``CONFIG_PROC_CHILDREN``)
    the set is ``{pid}`` alone.
    """
    found = {pid}
    todo = [pid]
    while todo and len(found) < MAX_DESCENDANTS:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children", encoding="ascii") as handle:
                    children = handle.read().split()
            except OSError:
                continue
            for child in children:
                number = int(child)
                if number not in found and len(found) < MAX_DESCENDANTS:
                    found.add(number)
                    todo.append(number)
    return found


class GpuMemoryProbe:
    """Callable: bytes of GPU memory this process (and its children) use, or ``None``.

    ``mode`` is ``"auto"`` (torch, else NVML), ``"torch"``, ``"nvml"`` or ``"off"``.
    ``nvml`` is the pynvml module or anything with its functions (tests pass a fake
    NVML); by default pynvml is imported on first use. A failure to load or initialise
    NVML turns the NVML source off for the life of the probe (it is not retried per
    request). Meant for one thread, the server's event loop.
    """

    def __init__(self, mode: str = "auto", *, nvml: Any = None, refresh_s: float = 5.0, pid: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.mode = mode
        self.refresh_s = refresh_s
        self.pid = os.getpid() if pid is None else pid
        self._nvml = nvml
        self._handles: list[Any] | None = None
        self._nvml_dead = mode in ("off", "torch")
        self._clock = clock
        self._next_read = 0.0
        self._cached: int | None = None
        #: NVML process listings made so far (the refresh interval's effect can be checked).
        self.nvml_reads = 0

    def __call__(self) -> int | None:
        if self.mode == "off":
            return None
        if self.mode in ("auto", "torch"):
            value = _torch_peak()
            if value is not None or self.mode == "torch":
                return value
        if self._nvml_dead:
            return None
        now = self._clock()
        if now >= self._next_read:
            self._next_read = now + self.refresh_s
            self._cached = self._read_nvml()
        return self._cached

    def _read_nvml(self) -> int | None:
        nvml = self._nvml
        if self._handles is None:
            try:
                if nvml is None:
                    import pynvml as nvml

                    self._nvml = nvml
                nvml.nvmlInit()
                self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            except Exception:  # noqa: BLE001 - ImportError, NVMLError (no driver, no GPU): no NVML here
                self._nvml_dead = True
                return None
        self.nvml_reads += 1
        pids = descendants(self.pid)
        total = 0
        seen = False
        for handle in self._handles:
            try:
                processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except Exception:  # noqa: BLE001 - NVMLError on one GPU (lost, no permission): skip that GPU
                continue
            for process in processes:
                used = getattr(process, "usedGpuMemory", None)
                if getattr(process, "pid", None) in pids and type(used) is int and used >= 0:
                    total += used
                    seen = True
        return total if seen else None


def _torch_peak() -> int | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        cuda = torch.cuda
        if not cuda.is_initialized():
            return None
        value = cuda.max_memory_allocated()
    except Exception:  # noqa: BLE001 - a broken or CPU-only torch build: no torch figure
        return None
    return value if type(value) is int and value > 0 else None
