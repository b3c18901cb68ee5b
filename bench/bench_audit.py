"""What ``serve --audit-sensitive`` costs the whole receiver: records/s and CPU, with and without, same run.

    python3 bench/bench_audit.py [--records 100000] [--repeat 2] [--connections 1]

Prints figures; asserts nothing, but exits 1 when a count is wrong. The
cases are bench/run.py's intake (its ``serve_intake``: ``qwen-fluent serve``
as its own process, fed by a client process over TCP with acks, window 4,
clock from first byte to last ack, CPU from /proc) on the same seeded
kubernetes-shaped records (bench/workload.py), once plain (the reference)
and once with ``QWEN_FLUENT_AUDIT_SENSITIVE=1`` in the server's environment.
Runs alternate, each on a fresh process; the fastest of each is shown with
the ratio. With the audit on, two costs add up: every record is scanned
(bench/bench_sensitive.py: 8 to 20 us a request record), and PackedForward
payloads are decoded by the connection into Python objects and normalised
record by record instead of on the typed fast path (as with ``--stdout``).

The workload's records carry no secret, as most real ones do not: what is
measured is the price of looking. Besides the receiver's own counts (checked
by run.py), the audit's ``qwen_sensitive_scanned_records_total`` must equal
the records sent.
"""

from __future__ import annotations

import argparse
import os
import sys

import run
import workload
from prometheus_client.parser import text_string_to_metric_families

VARIABLE = "QWEN_FLUENT_AUDIT_SENSITIVE"


def scanned(port: int) -> int:
    """``qwen_sensitive_scanned_records_total`` as the server says (0 when the family is absent)."""
    status, body = run.http_get(port, "/metrics")
    if status != 200:
        raise run.BenchError(f"/metrics answered {status}")
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == "qwen_sensitive_scanned_records_total":
                return int(s.value)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--per-message", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--mode", choices=(workload.PACKED, workload.COMPRESSED), default=workload.PACKED)
    args = parser.parse_args()
    stream = workload.build(args.records, args.per_message, args.pods).streams[(workload.KUBERNETES, args.mode)]

    # serve_intake reads the server's counts just before it stops the process: read the audit's
    # count at the same moment, through the same call (run.py has no hook for an extra check).
    seen: list[int] = []
    counts = run.server_counts

    def counts_and_scanned(port: int) -> tuple[int, int]:
        seen.append(scanned(port))
        return counts(port)

    run.server_counts = counts_and_scanned
    print(f"machine: {run.machine()}")
    print(f"records: {stream.records:,} ({stream.name}, {args.per_message} per message, {args.pods} pods), "
          f"{args.connections} connection(s), fastest of {args.repeat}")
    results: dict[str, list[run.Intake]] = {"off": [], "audit": []}
    wrong = False
    try:
        for _ in range(args.repeat):
            for case in results:
                if case == "audit":
                    os.environ[VARIABLE] = "1"
                else:
                    os.environ.pop(VARIABLE, None)
                intake = run.serve_intake(stream, 4, args.connections, scrape=False)
                want = stream.records if case == "audit" else 0
                if not intake.counts_ok or seen[-1] != want:
                    wrong = True
                    print(f"  counts WRONG ({case}): {intake.counted}, scanned {seen[-1]:,} (expected {want:,})")
                results[case].append(intake)
    except (run.BenchError, OSError) as exc:
        print(f"bench_audit.py: {exc}", file=sys.stderr)
        return 2
    finally:
        os.environ.pop(VARIABLE, None)
    off, audit = run.fastest(results["off"]), run.fastest(results["audit"])
    print(f"  {'case':<34} {'records/s':>10} {'CPU us/rec':>10} {'peak RSS':>10}")
    for name, r in (("serve (reference)", off), ("serve --audit-sensitive", audit)):
        print(f"  {name:<34} {r.rate:10,.0f} {r.cpu_us:10.2f} {run.mib(r.peak_rss):>10}")
    # CPU is counted in 10 ms ticks: a short reference run can read 0.
    cpu_ratio = f"{audit.cpu_us / off.cpu_us:.2f}x" if off.cpu_us > 0 else "n/a"
    print(f"  audit/reference: records/s {audit.rate / off.rate:.2f}x, CPU per record {cpu_ratio} "
          f"(+{audit.cpu_us - off.cpu_us:.1f} us)")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
