"""What the sensitive-data audit costs per record, beside the normaliser's cost on the same record.

Run: ``python bench/bench_sensitive.py [--seconds 0.5]``. Prints figures; asserts nothing.

Each case is timed with :mod:`timeit` (best of 5 repeats), the normaliser
(the reference: what every record already costs) and then
:class:`~qwen_fluent.records.sensitive.SensitiveScanner` on the same record,
in the same run, with their ratio. The cases are bench_normalise.py's records
shaped like Fluent Bit 4.2.8's output, plus records that do carry the data
looked for (a logged prompt with a card and a phone number, a header map with
a bearer token), and a 4 MiB ``log`` line, which the scanner's limits cut at
64 KiB.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any

from bench_normalise import CASES, KUBERNETES, REQUEST, TAG

from qwen_fluent.records import Normaliser
from qwen_fluent.records.sensitive import SensitiveScanner

EXTRA: dict[str, Any] = {
    "request log with a logged prompt (card, phone)": {
        **REQUEST, "kubernetes": KUBERNETES,
        "prompt": "Hi, I paid with 4111 1111 1111 1111 yesterday; call me back on +86 138 1234 5678 please. " * 3,
    },
    "request log with logged headers (bearer)": {
        **REQUEST, "kubernetes": KUBERNETES,
        "headers": {"Authorization": "Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0", "User-Agent": "openai-python/1.51.0",
                    "Content-Type": "application/json"},
    },
    "4 MiB log line (cut at 64 KiB)": {"log": "INFO 10.0.0.1 GET /v1/models 200 " * ((4 << 20) // 33),
                                       "stream": "stdout", "kubernetes": KUBERNETES},
}


def best_of(fn: Callable[[], Any], seconds: float) -> float:
    """Seconds per call: best of 5 repeats of about ``seconds`` each."""
    timer = timeit.Timer(fn)
    count, elapsed = timer.autorange()
    number = max(1, int(count * seconds / max(elapsed, 1e-9)))
    return min(timer.repeat(repeat=5, number=number)) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="target time per repeat")
    args = parser.parse_args()
    normalise = Normaliser()
    scanner = SensitiveScanner()
    print(f"{'case':48} {'normaliser us':>14} {'scan us':>9} {'scan/norm':>10}  found")
    for name, record in {**CASES, **EXTRA}.items():
        norm = best_of(lambda record=record: normalise(record, TAG), args.seconds)
        scan = best_of(lambda record=record: scanner.scan(record), args.seconds)
        found = ", ".join(sorted(scanner.scan(record))) or "-"
        print(f"{name:48} {norm * 1e6:14.2f} {scan * 1e6:9.2f} {scan / norm:9.1f}x  {found}")


if __name__ == "__main__":
    main()
