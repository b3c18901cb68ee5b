"""vLLM's periodic engine stats line, as gauges.

vLLM logs one line every few seconds (``--disable-log-stats`` turns it off).
The shapes across versions:

- v0 engine (0.2 - 0.6)::

    INFO 04-05 10:23:47 metrics.py:351] Avg prompt throughput: 1240.0 tokens/s, Avg generation
    throughput: 55.3 tokens/s, Running: 3 reqs, Swapped: 0 reqs, Pending: 0 reqs, GPU KV cache
    usage: 12.5%, CPU KV cache usage: 0.0%.

  and, with prefix caching, a second line ``Prefix cache hit rate: GPU: 12.34%, CPU: 0.00%``.
- v1 engine (0.8 onwards)::

    INFO 04-05 10:23:47 [loggers.py:116] Engine 000: Avg prompt throughput: 0.0 tokens/s, Avg
    generation throughput: 0.0 tokens/s, Running: 1 reqs, Waiting: 0 reqs, GPU KV cache usage:
    0.2%, Prefix cache hit rate: 0.0%

  possibly behind a process prefix such as ``(APIServer pid=1)``.

Fields are read by name, in any order, and any subset is accepted (a line cut
short still yields what it holds); ``Pending`` and ``Waiting`` are the same
gauge. Percentages become ratios 0..1.

The v1 line's engine index (``Engine 001:``) is kept, without its leading
zeros (``"1"``), as :attr:`~qwen_fluent.records.events.EngineStats.engine`:
with data parallelism one pod prints a line per engine, and only the index
tells them apart. The v0 line has none and gives ``""``.
"""

from __future__ import annotations

import re
from typing import Any

_FIELD = re.compile(
    r"(Avg prompt throughput|Avg generation throughput|Running|Waiting|Pending|Swapped"
    r"|GPU KV cache usage|CPU KV cache usage|KV cache usage|Prefix cache hit rate(?:: GPU)?)"
    r": ([0-9]{1,12}(?:\.[0-9]{1,12})?)"
)

#: vLLM prints ``"Engine %03d: "``. Six digits: an index is a data-parallel
#: rank, far below a million; a longer digit run is not an index.
_ENGINE = re.compile(r"Engine ([0-9]{1,6}): ")

#: Which EngineStats slot each name fills, and the factor to apply (percent -> ratio).
_SLOTS: dict[str, tuple[int, float]] = {
    "Avg prompt throughput": (0, 1.0),
    "Avg generation throughput": (1, 1.0),
    "Running": (2, 1.0),
    "Waiting": (3, 1.0),
    "Pending": (3, 1.0),
    "Swapped": (4, 1.0),
    "GPU KV cache usage": (5, 0.01),
    "KV cache usage": (5, 0.01),
    "CPU KV cache usage": (6, 0.01),
    "Prefix cache hit rate": (7, 0.01),
    "Prefix cache hit rate: GPU": (7, 0.01),
}

def looks_like_stats(line: str) -> bool:
    """Whether ``line`` may be a stats line (a substring test, no regex)."""
    return "throughput: " in line or "Prefix cache hit rate: " in line


def parse_stats(line: str) -> list[Any] | None:
    """The eight EngineStats values (``None`` where absent), or ``None`` if no field was found."""
    values: list[Any] = [None] * 8
    found = False
    for match in _FIELD.finditer(line):
        slot, factor = _SLOTS[match.group(1)]
        if values[slot] is not None:
            continue  # the first occurrence wins
        value = float(match.group(2)) * factor
        if factor != 1.0 and value > 1.0:
            continue  # a percentage above 100 is not one
        values[slot] = value
        found = True
    return values if found else None


def engine_index(line: str) -> str:
    """The engine index of a v1 stats line without leading zeros (``"000"`` -> ``"0"``), else ``""``."""
    match = _ENGINE.search(line)
    return str(int(match.group(1))) if match is not None else ""
