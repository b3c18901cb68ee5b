"""``qwen-fluent demo``: the receiver, fed live traffic over Forward, and what its /metrics says, on one screen.

Three parts run in this one process, and talk only the way a deployment's parts do:

- the receiver, exactly what ``qwen-fluent serve`` runs (:class:`qwen_fluent.app.Receiver`), on free
  loopback ports, GPU off, on an asyncio loop in a thread of its own;
- a traffic generator thread: request logs of a few models served by a few pods, shaped as Fluent Bit's
  ``tail`` + ``kubernetes`` filter (``Merge_Log On``) leave them, sent through the Forward client
  (:mod:`qwen_fluent.client`) as Fluent Bit's ``forward`` output sends them: CompressedPackedForward
  (gzip), one chunk per pod per flush, each acked. Seeded: the same ``--seed`` gives the same requests.
  A few requests fail, and now and then one pod has a slow spell (queueing and slow decoding);
- a view that scrapes ``/metrics`` over HTTP once a second and parses it with prometheus-client's parser,
  as a Prometheus would, and shows rates and percentiles computed from the counters and histogram
  buckets over a sliding window, the way ``rate()`` and ``histogram_quantile()`` would.

With a terminal the view is a live ``rich`` table; without one (a pipe, CI) it prints a plain line per
interval. Ctrl-C (SIGINT) or SIGTERM stops all three within two seconds and exits 0; ``--duration``
stops after that many seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

#: Seconds between two scrapes of /metrics: Prometheus' common scrape interval is 15 s; a demo that
#: moves wants one a second, which costs the receiver well under a millisecond per scrape here.
SCRAPE_INTERVAL = 1.0

#: Seconds of scrapes that rates and percentiles are computed over (``rate(x[10s])``). Short enough that a
#: slow spell shows within seconds, long enough for a few hundred requests at the default rate.
WINDOW = 10.0

#: Seconds between two flushes of the generator: Fluent Bit's ``flush`` defaults to 1 s; a quarter of
#: that makes the counts move smoothly on screen.
FLUSH_INTERVAL = 0.25

#: Seconds the receiver gives open connections to finish when the demo stops (``serve`` waits 10 s;
#: the demo's only client is its own generator, already stopped by then). Part of the 2 s stop budget.
SHUTDOWN_GRACE = 0.5

#: Seconds each part may take to stop before the demo exits anyway (the threads are daemons): the
#: three together stay inside the two seconds a Ctrl-C is promised.
STOP_TIMEOUT = 0.6

#: Seconds the receiver may take to start: it binds two loopback ports, well under a second even on
#: a loaded machine; past this something is wrong and the demo says so instead of waiting.
START_TIMEOUT = 30.0

#: The tag prefix Fluent Bit's tail input gives container logs (``Tag kube.*`` on /var/log/containers).
TAG_PREFIX = "kube.var.log.containers"

NAMESPACE = "ml-serving"


@dataclasses.dataclass(frozen=True)
class ModelProfile:
    """How one model behaves: prefill cost per prompt token, decode time per output token, GPU memory."""

    name: str
    prefill_ms_per_token: float
    decode_ms_per_token: float
    gpu_memory_mb: int
    image: str


#: Several models, as a router in front of a GPU pool serves them; the costs are of the order a 7B model
#: on an A100-class GPU has (a prompt token in well under a millisecond, an output token in ~20-40 ms).
MODELS = (
    ModelProfile("qwen2.5-7b-instruct", 0.25, 28.0, 18432, "vllm/vllm-openai:v0.6.3"),
    ModelProfile("qwen2.5-1.5b-instruct", 0.08, 11.0, 6144, "vllm/vllm-openai:v0.6.3"),
    ModelProfile("llama-3.1-8b-instruct", 0.3, 32.0, 20480, "ghcr.io/huggingface/text-generation-inference:2.4"),
)

#: Pods per model: the 7B model is the busy one.
PODS_PER_MODEL = (3, 2, 1)

#: Outcome mix of a request: (status, HTTP status, error_type, probability). 4xx are the client's
#: (context too long, rate limited); 5xx and timeouts are the server's and count in error ratios.
OUTCOMES = (
    ("client_error", 400, "context_length_exceeded", 0.010),
    ("client_error", 429, "rate_limited", 0.006),
    ("error", 500, "internal_error", 0.008),
    ("error", 503, "engine_overloaded", 0.004),
    ("timeout", 504, "timeout", 0.003),
)


@dataclasses.dataclass(eq=False)  # eq=False: hashed by identity, a key of the per-pod batches
class Pod:
    """One inference pod, with the ``kubernetes`` map Fluent Bit's kubernetes filter attaches."""

    model: ModelProfile
    name: str
    host: str
    container_id: str
    kubernetes: dict[str, Any]
    slow_until: float = 0.0

    @property
    def tag(self) -> str:
        # What the tail input names a container's log: <pod>_<namespace>_<container>-<container id>.log
        return f"{TAG_PREFIX}.{self.name}_{NAMESPACE}_{self.kubernetes['container_name']}-{self.container_id}.log"


def make_pods(rng: random.Random) -> list[Pod]:
    """The demo's pods: a Deployment per model, pods named as a ReplicaSet names them."""
    pods = []
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # the characters Kubernetes uses in generated names
    for model, count in zip(MODELS, PODS_PER_MODEL):
        template_hash = "".join(rng.choice(alphabet) for _ in range(9))
        deployment = model.name.replace(".", "-")
        container = "vllm" if "vllm" in model.image else "tgi"
        for _ in range(count):
            name = f"{deployment}-{template_hash}-{''.join(rng.choice(alphabet) for _ in range(5))}"
            host = f"gpu-node-{rng.randrange(1, 5):02d}"
            container_id = "%064x" % rng.getrandbits(256)
            kubernetes = {
                "pod_name": name,
                "namespace_name": NAMESPACE,
                "pod_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "labels": {"app.kubernetes.io/name": "llm-inference", "model": model.name,
                           "pod-template-hash": template_hash},
                "annotations": {"prometheus.io/scrape": "false"},
                "host": host,
                "container_name": container,
                "docker_id": container_id,
                "container_hash": f"{model.image.split(':')[0]}@sha256:{'%064x' % rng.getrandbits(256)}",
                "container_image": model.image,
            }
            pods.append(Pod(model, name, host, container_id, kubernetes))
    return pods


def _iso(t: float, digits: int = 9) -> str:
    whole = datetime.fromtimestamp(int(t), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{t - int(t):.{digits}f}"[1:] if digits else ""
    return f"{whole}{frac}Z"


class Traffic:
    """Seeded request logs of :func:`make_pods`' pods: what each pod's stdout would hold, as records.

    The values are drawn from ``seed`` alone (times are the wall clock), so two runs with one seed send
    the same requests in the same order.
    """

    #: Seconds a slow spell lasts, and the chance per second that one starts on some pod.
    SLOW_SPELL_S = 6.0
    SLOW_SPELL_CHANCE = 0.04
    #: During a slow spell, queue time and decode time per token are multiplied by these.
    SLOW_QUEUE = 12.0
    SLOW_DECODE = 2.5

    def __init__(self, seed: int, rate: float) -> None:
        self.rng = random.Random(seed)
        self.rate = rate
        self.pods = make_pods(self.rng)
        self.weights = [3.0 if p.model is MODELS[0] else 1.5 if p.model is MODELS[1] else 1.0 for p in self.pods]
        self.count = 0

    def slow_pods(self, now: float) -> list[Pod]:
        return [p for p in self.pods if p.slow_until > now]

    def tick(self, now: float, seconds: float) -> dict[Pod, list[tuple[float, dict[str, Any]]]]:
        """The requests that finished in the last ``seconds``, by pod (a Poisson number of them)."""
        if self.rng.random() < self.SLOW_SPELL_CHANCE * seconds:
            self.rng.choice(self.pods).slow_until = now + self.SLOW_SPELL_S
        n = self._poisson(self.rate * seconds)
        out: dict[Pod, list[tuple[float, dict[str, Any]]]] = {}
        for _ in range(n):
            pod = self.rng.choices(self.pods, self.weights)[0]
            t = now - self.rng.random() * seconds
            out.setdefault(pod, []).append((t, self.request(pod, t, slow=pod.slow_until > now)))
        for events in out.values():
            events.sort(key=lambda e: e[0])
        return out

    def _poisson(self, mean: float) -> int:
        # Knuth's method; the mean per flush is tens at most.
        limit, k, p = math.exp(-mean), 0, 1.0
        while True:
            p *= self.rng.random()
            if p <= limit:
                return k
            k += 1

    def request(self, pod: Pod, t: float, slow: bool) -> dict[str, Any]:
        """One request log line as Fluent Bit forwards it: the app's JSON merged into the CRI record."""
        rng, model = self.rng, pod.model
        self.count += 1
        input_tokens = max(8, int(rng.lognormvariate(6.3, 0.8)))  # median ~550, a long tail of long prompts
        output_tokens = max(1, int(rng.lognormvariate(5.0, 0.7)))  # median ~150
        queue_ms = rng.expovariate(1 / 40.0) * (self.SLOW_QUEUE if slow else 1.0)
        prefill_ms = input_tokens * model.prefill_ms_per_token * rng.uniform(0.8, 1.3)
        decode = model.decode_ms_per_token * rng.uniform(0.85, 1.2) * (self.SLOW_DECODE if slow else 1.0)
        status, http_status, error_type = "success", 200, None
        draw = rng.random()
        for outcome in OUTCOMES:
            if draw < outcome[3]:
                status, http_status, error_type = outcome[:3]
                break
            draw -= outcome[3]
        if status == "client_error":
            output_tokens, decode, prefill_ms = 0, 0.0, 0.0
        elif status in ("error", "timeout"):
            output_tokens = rng.randrange(0, output_tokens + 1)
        ttft_ms = queue_ms + prefill_ms + (decode if output_tokens else 0.0)
        inference_ms = prefill_ms + decode * output_tokens
        if status == "timeout":
            inference_ms = max(inference_ms, 30_000.0)  # the server's own deadline
        total_ms = queue_ms + inference_ms + rng.uniform(1, 4)
        record: dict[str, Any] = {
            "time": _iso(t),
            "stream": "stdout",
            "_p": "F",
            "timestamp": _iso(t, 3),
            "request_id": f"req_{self.count:08d}{rng.getrandbits(32):08x}",
            "method": "POST",
            "path": "/v1/chat/completions" if rng.random() < 0.85 else "/v1/completions",
            "model": model.name,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_time_ms": round(total_ms, 1),
            "queue_time_ms": round(queue_ms, 1),
            "inference_time_ms": round(inference_ms, 1),
            "gpu_memory_mb": model.gpu_memory_mb + rng.randrange(0, 512),
            "status": status,
            "http_status": http_status,
            "kubernetes": pod.kubernetes,
        }
        if output_tokens:
            record["time_to_first_token_ms"] = round(ttft_ms, 1)
        if error_type:
            record["error_type"] = error_type
        return record


class Generator(threading.Thread):
    """Sends :class:`Traffic` to the receiver over Forward until :meth:`stop`, as Fluent Bit would."""

    def __init__(self, port: int, seed: int, rate: float) -> None:
        super().__init__(name="demo-traffic", daemon=True)
        from ..client import ForwardSender

        self.traffic = Traffic(seed, rate)
        self.sender = ForwardSender("127.0.0.1", port)
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from ..client import Mode, SenderClosed, build

        next_flush = time.monotonic()
        try:
            while not self._halt.is_set():
                now = time.time()
                for pod, events in self.traffic.tick(now, FLUSH_INTERVAL).items():
                    # One chunk per tag per flush: Fluent Bit buffers chunks per tag.
                    for chunk in build(pod.tag, events, Mode.COMPRESSED_PACKED_FORWARD, ack=True):
                        self.sender.send(chunk)
                next_flush += FLUSH_INTERVAL
                self._halt.wait(max(0.0, next_flush - time.monotonic()))
        except SenderClosed:
            pass
        except Exception as exc:  # noqa: BLE001 - a ClientError, or a bug: shown by the view, which then stops
            self.error = exc
        finally:
            self.sender.close()

    def stop(self, timeout: float) -> None:
        """Stop after the chunk in flight is acked (an ack takes milliseconds), or after ``timeout`` anyway.

        Closing the sender at once would lose acks of chunks the receiver already took, and the
        closing line would show fewer records acked than /metrics counted.
        """
        self._halt.set()
        self.join(timeout)
        if self.is_alive():
            self.sender.close()  # wakes a send waiting for its ack
            self.join(timeout)


class ReceiverThread(threading.Thread):
    """The receiver (``qwen_fluent.app.Receiver``) on an asyncio loop of its own."""

    def __init__(self, config: Any) -> None:
        super().__init__(name="demo-receiver", daemon=True)
        self.config = config
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.forward_port = 0
        self.metrics_port = 0
        self._loop: Any = None
        self._halt: Any = None

    def run(self) -> None:
        import asyncio

        from ..app import Receiver

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._halt = asyncio.Event()
            receiver = Receiver(self.config)
            await receiver.start()
            try:
                self.forward_port = receiver.forward.port or 0
                self.metrics_port = receiver.http.port if receiver.http is not None else 0
                self.ready.set()
                await self._halt.wait()
            finally:
                await receiver.stop()

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
        finally:
            self.ready.set()

    def stop(self) -> None:
        if self._loop is not None and self._halt is not None:
            try:
                self._loop.call_soon_threadsafe(self._halt.set)
            except RuntimeError:  # the loop has already closed
                pass


# -- what /metrics says -------------------------------------------------------------------------------

#: (model, pod): the rows of the view. Other labels (path, namespace, container) are summed over.
Key = tuple[str, str]


@dataclasses.dataclass
class Scrape:
    """The request families of one scrape, summed by (model, pod)."""

    at: float
    requests: dict[tuple[str, str, str], float]  # (model, pod, status) -> count
    tokens_in: dict[Key, float]
    tokens_out: dict[Key, float]
    duration: dict[Key, dict[float, float]]  # le -> cumulative count
    ttft: dict[Key, dict[float, float]]


def parse_scrape(text: str, namespace: str, at: float) -> Scrape:
    """Read the request families out of an exposition with prometheus-client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    s = Scrape(at, {}, {}, {}, {}, {})
    names = {
        f"{namespace}_requests_total": "requests",
        f"{namespace}_input_tokens_total": "tokens_in",
        f"{namespace}_output_tokens_total": "tokens_out",
        f"{namespace}_request_duration_seconds_bucket": "duration",
        f"{namespace}_time_to_first_token_seconds_bucket": "ttft",
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            where = names.get(sample.name)
            if where is None:
                continue
            key = (sample.labels.get("model", ""), sample.labels.get("pod", ""))
            if where == "requests":
                k3 = (*key, sample.labels.get("status", ""))
                s.requests[k3] = s.requests.get(k3, 0.0) + sample.value
            elif where in ("tokens_in", "tokens_out"):
                table = getattr(s, where)
                table[key] = table.get(key, 0.0) + sample.value
            else:
                buckets = getattr(s, where).setdefault(key, {})
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return s


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """``histogram_quantile(q, ...)`` over cumulative ``buckets`` (le -> count), as Prometheus computes it.

    Linear interpolation inside the bucket the rank falls in, from 0 for the first bucket; a rank in the
    +Inf bucket gives the highest finite bound. ``None`` when the histogram is empty.
    """
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf:
        return None
    count = buckets[math.inf]
    if count <= 0:
        return None
    rank = q * count
    lower, below = 0.0, 0.0
    for le in bounds:
        c = buckets[le]
        if c >= rank:
            if le == math.inf:
                return bounds[-2] if len(bounds) > 1 else None
            if c == below:
                return le
            return lower + (le - lower) * (rank - below) / (c - below)
        lower, below = le, c
    return None


def _minus(new: dict[Any, float], old: dict[Any, float]) -> dict[Any, float]:
    # A series that appeared since the old scrape counts from zero; one that expired is gone from both.
    return {k: v - old.get(k, 0.0) for k, v in new.items()}


@dataclasses.dataclass
class Row:
    """One line of the view: a (model, pod), or the total over all of them (``pod == ""``)."""

    model: str
    pod: str
    requests: float  # since start
    rate: float  # requests/s over the window
    by_status: dict[str, float]  # requests/s by status
    p50: float | None
    p95: float | None
    p99: float | None
    ttft_p50: float | None
    ttft_p95: float | None
    tokens_in: float  # tokens/s
    tokens_out: float

    @property
    def error_ratio(self) -> float:
        bad = self.by_status.get("error", 0.0) + self.by_status.get("timeout", 0.0)
        return bad / self.rate if self.rate else 0.0


class Window:
    """The scrapes of the last :data:`WINDOW` seconds (bounded: one per scrape interval, plus the edges)."""

    def __init__(self, seconds: float = WINDOW, interval: float = SCRAPE_INTERVAL) -> None:
        self.seconds = seconds
        self.scrapes: deque[Scrape] = deque(maxlen=int(seconds / interval) + 2)

    def add(self, scrape: Scrape) -> None:
        self.scrapes.append(scrape)
        while len(self.scrapes) > 2 and scrape.at - self.scrapes[1].at >= self.seconds:
            self.scrapes.popleft()

    def rows(self) -> list[Row]:
        """The total first, then a row per (model, pod), sorted."""
        if not self.scrapes:
            return []
        new = self.scrapes[-1]
        old = self.scrapes[0] if len(self.scrapes) > 1 else Scrape(new.at, {}, {}, {}, {}, {})
        dt = new.at - old.at
        requests = _minus(new.requests, old.requests)
        tin, tout = _minus(new.tokens_in, old.tokens_in), _minus(new.tokens_out, old.tokens_out)
        keys = sorted({k[:2] for k in new.requests})
        groups: list[tuple[str, str, Iterable[Key]]] = [("all models", "", keys)]
        groups += [(m, p, [(m, p)]) for m, p in keys]
        rows = []
        for model, pod, members in groups:
            members = list(members)
            total = sum(v for k, v in new.requests.items() if k[:2] in members)
            by_status: dict[str, float] = {}
            for k, v in requests.items():
                if k[:2] in members:
                    by_status[k[2]] = by_status.get(k[2], 0.0) + (v / dt if dt > 0 else 0.0)
            duration = self._histogram(new.duration, old.duration, members, dt)
            ttft = self._histogram(new.ttft, old.ttft, members, dt)
            rows.append(Row(
                model, pod, total, sum(by_status.values()), by_status,
                quantile(0.5, duration), quantile(0.95, duration), quantile(0.99, duration),
                quantile(0.5, ttft), quantile(0.95, ttft),
                sum(tin.get(k, 0.0) for k in members) / dt if dt > 0 else 0.0,
                sum(tout.get(k, 0.0) for k in members) / dt if dt > 0 else 0.0,
            ))
        return rows

    @staticmethod
    def _histogram(new: dict[Key, dict[float, float]], old: dict[Key, dict[float, float]],
                   members: list[Key], dt: float) -> dict[float, float]:
        # Over the window when it has two scrapes (histogram_quantile over rate()); since start before.
        out: dict[float, float] = {}
        for key in members:
            for le, c in new.get(key, {}).items():
                out[le] = out.get(le, 0.0) + c - (old.get(key, {}).get(le, 0.0) if dt > 0 else 0.0)
        return out


# -- showing it --------------------------------------------------------------------------------------

STATUSES = ("success", "client_error", "error", "timeout", "cancelled", "unknown")


def _seconds(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f}ms" if v < 1 else f"{v:.2f}s"


def delivery(stats: Any) -> str:
    """What the generator's Forward sender did (a :class:`qwen_fluent.client.SenderStats`)."""
    return f"records acked {stats.records} in {stats.acked} chunks, resent {stats.resends}"


def plain_line(elapsed: float, rows: list[Row], sent: str) -> str:
    """The view as one line, for a pipe or a log: the totals row only."""
    if not rows:
        return f"demo {elapsed:5.1f}s: requests 0 (waiting for the first scrape) | {sent}"
    r = rows[0]
    statuses = " ".join(f"{s} {r.by_status[s]:.1f}/s" for s in STATUSES if r.by_status.get(s))
    return (f"demo {elapsed:5.1f}s: requests {r.requests:.0f} ({r.rate:.1f}/s: {statuses or 'none yet'}) "
            f"latency p50 {_seconds(r.p50)} p95 {_seconds(r.p95)} p99 {_seconds(r.p99)} "
            f"ttft p50 {_seconds(r.ttft_p50)} tokens/s in {r.tokens_in:.0f} out {r.tokens_out:.0f} "
            f"| {sent}")


def rich_view(elapsed: float, rows: list[Row], url: str, sent: str, slow: list[str]) -> Any:
    """The view as a ``rich`` renderable: a header and a table per (model, pod)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    header = Text()
    header.append("qwen-fluent demo", style="bold")
    header.append(f"  {elapsed:.0f}s   metrics: ")
    header.append(url, style="underline cyan")
    header.append("   Ctrl-C to stop\n")
    if rows:
        r = rows[0]
        header.append(f"requests {r.requests:.0f}   {r.rate:.1f}/s  ")
        for s in STATUSES:
            v = r.by_status.get(s, 0.0)
            if v or s in ("success", "error"):
                header.append(f"  {s} {v:.1f}/s", style={"success": "green", "error": "red", "timeout": "red",
                                                          "client_error": "yellow"}.get(s, ""))
        header.append("\n")
    header.append(f"Forward (gzip, acks): {sent}", style="dim")
    if slow:
        header.append(f"   slow spell on {', '.join(slow)}", style="bold yellow")
    table = Table(title=f"last {WINDOW:.0f}s, from /metrics (histogram_quantile over the buckets)",
                  title_justify="left", expand=False)
    for name, justify in (("model", "left"), ("pod", "left"), ("req/s", "right"), ("err %", "right"),
                          ("p50", "right"), ("p95", "right"), ("p99", "right"), ("ttft p50", "right"),
                          ("ttft p95", "right"), ("tok/s in", "right"), ("tok/s out", "right")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for i, r in enumerate(rows):
        err = r.error_ratio * 100
        table.add_row(
            r.model, r.pod or "", f"{r.rate:.1f}", Text(f"{err:.1f}", style="red" if err >= 2 else ""),
            _seconds(r.p50), _seconds(r.p95), _seconds(r.p99), _seconds(r.ttft_p50), _seconds(r.ttft_p95),
            f"{r.tokens_in:.0f}", f"{r.tokens_out:.0f}", style="bold" if i == 0 else None,
            end_section=i == 0,
        )
    return Group(header, table)


# -- the command -------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run a receiver fed with live demo traffic and watch its metrics",
        description="Start the receiver on free loopback ports, send it Kubernetes-shaped inference logs "
                    "over Forward (gzip, acks) as Fluent Bit would, and show what its /metrics says, live. "
                    "Ctrl-C stops.",
    )
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C)")
    p.add_argument("--rate", type=float, default=40.0, metavar="R", help="requests per second (default 40)")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated requests (default 1)")
    p.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                   help="port for /metrics, to point a Prometheus at (default: a free one)")
    p.add_argument("--port", type=int, default=0, help="Forward port (default: a free one)")
    p.add_argument("--interval", type=float, default=SCRAPE_INTERVAL, metavar="S",
                   help=f"seconds between scrapes of /metrics (default {SCRAPE_INTERVAL:g})")


#: Seconds one scrape may take before it is skipped (Prometheus' own default scrape_timeout is 10 s;
#: the view must keep moving), and the last one, on the way out, inside the two-second stop.
SCRAPE_TIMEOUT = 2.0
FINAL_SCRAPE_TIMEOUT = 0.5


def _scrape(url: str, namespace: str, timeout: float = SCRAPE_TIMEOUT) -> Scrape:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode("utf-8")
    return parse_scrape(text, namespace, time.monotonic())


def run(args: argparse.Namespace) -> int:
    from ..config import ConfigError, load

    if args.rate <= 0 or args.interval <= 0 or (args.duration is not None and args.duration <= 0):
        print("qwen-fluent: error: --rate, --interval and --duration must be > 0", file=sys.stderr)
        return 2
    flags = {"host": "127.0.0.1", "port": args.port, "metrics_host": "127.0.0.1",
             "metrics_port": args.metrics_port, "no_gpu": True}
    try:
        # environ={}: the demo is self-contained; a QWEN_FLUENT_SHARED_KEY meant for `serve` must not
        # turn on a handshake its own generator does not know about.
        config = load(None, flags, environ={})
    except ConfigError as exc:
        print(f"qwen-fluent: error: {exc}", file=sys.stderr)
        return 2
    config.server = dataclasses.replace(config.server, shutdown_grace=SHUTDOWN_GRACE)

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    receiver = ReceiverThread(config)
    generator: Generator | None = None
    try:
        receiver.start()
        receiver.ready.wait(START_TIMEOUT)
        if receiver.error is not None or not receiver.metrics_port:
            exc = receiver.error
            if exc is None:
                reason = f"not ready within {START_TIMEOUT:g} s"
            else:
                reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
            print(f"qwen-fluent: error: the demo receiver did not start: {reason}", file=sys.stderr)
            return 2
        url = f"http://127.0.0.1:{receiver.metrics_port}/metrics"
        generator = Generator(receiver.forward_port, args.seed, args.rate)
        generator.start()
        return _watch(args, config.metrics.namespace, url, generator, stop)
    finally:
        if generator is not None:
            generator.stop(STOP_TIMEOUT / 2)
        receiver.stop()
        receiver.join(STOP_TIMEOUT * 2)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watch(args: argparse.Namespace, namespace: str, url: str, generator: Generator, stop: threading.Event) -> int:
    start = time.monotonic()
    deadline = start + args.duration if args.duration else math.inf
    window = Window(max(WINDOW, 2 * args.interval), args.interval)
    terminal = sys.stdout.isatty()
    print(f"qwen-fluent demo: Forward on 127.0.0.1:{generator.sender.port}, metrics on {url}", flush=True)
    if not terminal:
        print("(no terminal: one line per scrape; Ctrl-C stops)", flush=True)

    def step() -> tuple[float, list[Row]]:
        try:
            window.add(_scrape(url, namespace))
        except OSError as exc:  # the receiver is stopping, or a scrape took too long: skip this one
            print(f"scrape failed: {exc}", file=sys.stderr)
        return time.monotonic() - start, window.rows()

    ticks = iter(range(1, 1 << 62))

    def pause() -> float:
        # On a fixed schedule, so that the time a scrape takes does not stretch the interval.
        next_at = min(start + next(ticks) * args.interval, deadline)
        return max(0.0, next_at - time.monotonic())

    if terminal:
        from rich.console import Console
        from rich.live import Live

        console = Console()
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while not stop.is_set() and time.monotonic() < deadline and generator.error is None:
                elapsed, rows = step()
                live.update(rich_view(elapsed, rows, url, delivery(generator.sender.stats),
                                      [p.name for p in generator.traffic.slow_pods(time.time())]), refresh=True)
                stop.wait(pause())
    else:
        while not stop.is_set() and time.monotonic() < deadline and generator.error is None:
            elapsed, rows = step()
            print(plain_line(elapsed, rows, delivery(generator.sender.stats)), flush=True)
            stop.wait(pause())
    if generator.error is not None:
        print(f"qwen-fluent: error: the traffic generator stopped: {generator.error}", file=sys.stderr)
        return 1
    generator.stop(STOP_TIMEOUT / 2)
    try:
        rows = _final(url, namespace)
    except OSError:
        rows = []
    counted = f"{rows[0].requests:.0f}" if rows else "?"
    print(f"stopped: {delivery(generator.sender.stats)}; /metrics counted {counted} requests ({url})", flush=True)
    return 0


def _final(url: str, namespace: str) -> list[Row]:
    """The totals after the generator stopped: every acked record has been counted by then."""
    window = Window()
    window.add(_scrape(url, namespace, FINAL_SCRAPE_TIMEOUT))
    return window.rows()
