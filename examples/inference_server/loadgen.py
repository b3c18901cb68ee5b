#!/usr/bin/env python3
"""A seeded load generator for an OpenAI-compatible chat service, that keeps the ground truth.

    python3 examples/inference_server/loadgen.py --url http://127.0.0.1:8000 --requests 200 --concurrency 8
    python3 examples/inference_server/loadgen.py ... --out truth.json      # every request and answer

The plan (which requests, in which order, with which bodies) is drawn from
``--seed`` alone, so two runs with the same flags send the same bytes. Each
request is one of:

* ``chat``: a chat completion; prompt and output lengths drawn from log-normal
  distributions (``--prompt-tokens``, ``--output-tokens`` are their medians, in
  tokens of the example's byte tokenizer, i.e. about bytes); streamed with
  probability ``--stream``, and a stream asks for usage
  (``stream_options.include_usage``) with probability ``--include-usage``;
* ``cancel`` (``--cancel``): a long stream the client closes after its first
  content chunk, as a user who hits stop;
* a bad request (``--bad``), the next of :data:`BAD_KINDS` in turn: invalid JSON, no
  messages, a non-positive ``max_tokens``, an unknown model, a prompt past the
  context, a GET on the POST endpoint.

At most ``--concurrency`` requests are in flight. What it prints, and writes
with ``--out``, is what was sent and what came back, request by request: the
status the client saw (``success`` 2xx, ``client_error`` 4xx, ``error`` 5xx or
a broken stream, ``cancelled`` when it hung up), the HTTP status, the ``usage``
the service returned (``null`` when it returned none), the content chunks
counted, and the latencies. It is the ground truth the example's tests hold the
request log, ``qwen-fluent analyze`` and ``/metrics`` to.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

BAD_KINDS = ("invalid_json", "no_messages", "bad_max_tokens", "unknown_model", "context_too_long", "wrong_method")
PATH = "/v1/chat/completions"
#: Words the prompts are made of (ASCII, so one byte tokenizer token per byte).
WORDS = ("the", "model", "queue", "token", "latency", "fluent", "bit", "forward", "metrics", "request", "prompt",
         "cache", "gpu", "memory", "stream", "batch", "decode", "prefill", "answer", "question", "summarise")
#: A cancelled stream asks for this many tokens, so that it is still generating when the client hangs up.
CANCEL_MAX_TOKENS = 1000
#: A prompt this long is past the tiny model's 2048-token context (and the 7B shape's, with --context).
TOO_LONG_PROMPT_TOKENS = 40000


@dataclass
class Planned:
    """One request of the plan: exactly what will be sent."""

    index: int
    kind: str
    method: str
    body: str
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None


@dataclass
class Result:
    """What one request sent and got back."""

    index: int
    kind: str
    request_id: str
    method: str
    path: str
    body: str
    stream: bool
    include_usage: bool
    status: str = ""
    http_status: int | None = None
    usage: dict[str, int] | None = None
    content_chunks: int = 0
    finish_reason: str | None = None
    error_type: str | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    queue_time_ms: float | None = None
    inference_time_ms: float | None = None


def _lognormal(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    return max(low, min(high, round(rng.lognormvariate(math.log(median), sigma))))


def _prompt(rng: random.Random, tokens: int) -> str:
    words: list[str] = []
    size = -1
    while size < tokens:
        words.append(rng.choice(WORDS))
        size += len(words[-1]) + 1
    return " ".join(words)[:max(1, tokens)]


def plan(*, requests: int, seed: int, model: str, prompt_tokens: float, output_tokens: float,
         max_output_tokens: int, stream: float, include_usage: float, bad: float, cancel: float) -> list[Planned]:
    """The whole load, from the seed alone."""
    rng = random.Random(seed)
    out: list[Planned] = []
    # Bad kinds take turns (from a seeded start), so any load with six bad requests has them all.
    bad_kinds = itertools.islice(itertools.cycle(BAD_KINDS), rng.randrange(len(BAD_KINDS)), None)
    for i in range(requests):
        roll = rng.random()
        if roll < bad:
            kind = next(bad_kinds)
        elif roll < bad + cancel:
            kind = "cancel"
        else:
            kind = "chat"
        prompt = _prompt(rng, _lognormal(rng, prompt_tokens, 0.6, 1, 1500))
        max_tokens = _lognormal(rng, output_tokens, 0.7, 1, max_output_tokens)
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}],
                                "max_tokens": max_tokens}
        p = Planned(i, kind, "POST", "")
        if kind == "chat":
            p.stream = rng.random() < stream
            p.include_usage = p.stream and rng.random() < include_usage
        elif kind == "cancel":
            p.stream = True
            max_tokens = CANCEL_MAX_TOKENS
            body["max_tokens"] = max_tokens
            body["ignore_eos"] = True  # it must still be generating when the client hangs up
        elif kind == "no_messages":
            body["messages"] = []
        elif kind == "bad_max_tokens":
            body["max_tokens"] = rng.choice([0, -5, "ten"])
        elif kind == "unknown_model":
            body["model"] = model + "-missing"
        elif kind == "context_too_long":
            body["messages"][0]["content"] = _prompt(rng, TOO_LONG_PROMPT_TOKENS)
        elif kind == "wrong_method":
            p.method = "GET"
        if p.stream:
            body["stream"] = True
            if p.include_usage:
                body["stream_options"] = {"include_usage": True}
        p.max_tokens = body["max_tokens"] if isinstance(body["max_tokens"], int) else None
        if kind == "invalid_json":
            p.body = json.dumps(body)[:-7]  # cut short: not JSON any more
        elif kind == "wrong_method":
            p.body = ""
        else:
            p.body = json.dumps(body)
        out.append(p)
    return out


def _float_header(response: httpx.Response, name: str) -> float | None:
    try:
        return float(response.headers[name])
    except (KeyError, ValueError):
        return None


async def _one(client: httpx.AsyncClient, p: Planned, run_id: str) -> Result:
    rid = f"{run_id}-{p.index:05d}"
    r = Result(p.index, p.kind, rid, p.method, PATH, p.body, p.stream, p.include_usage)
    headers = {"content-type": "application/json", "x-request-id": rid}
    t0 = time.perf_counter()
    request = client.build_request(p.method, PATH, content=p.body.encode() if p.body else None, headers=headers)
    try:
        response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        r.status, r.error_type = "error", type(exc).__name__
        r.latency_ms = (time.perf_counter() - t0) * 1000
        return r
    r.http_status = response.status_code
    r.queue_time_ms = _float_header(response, "x-queue-time-ms")
    r.inference_time_ms = _float_header(response, "x-inference-time-ms")
    try:
        if p.stream and response.status_code == 200:
            await _read_stream(response, r, t0, hang_up=p.kind == "cancel")
        else:
            data = await response.aread()
            try:
                payload = json.loads(data)
            except json.JSONDecodeError:
                payload = None
            if isinstance(payload, dict):
                r.usage = payload.get("usage")
                if "error" in payload and isinstance(payload["error"], dict):
                    r.error_type = payload["error"].get("type")
                choices = payload.get("choices") or []
                if choices:
                    r.finish_reason = choices[0].get("finish_reason")
    except httpx.HTTPError as exc:
        r.status, r.error_type = "error", type(exc).__name__
    finally:
        await response.aclose()
    r.latency_ms = (time.perf_counter() - t0) * 1000
    if not r.status:
        code = response.status_code
        r.status = "success" if code < 300 else "client_error" if code < 500 else "error"
    return r


async def _read_stream(response: httpx.Response, r: Result, t0: float, *, hang_up: bool) -> None:
    """Read server-sent events; count content chunks, keep the usage chunk; hang up after the first
    content chunk when ``hang_up``."""
    done = False
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            done = True
            break
        event = json.loads(data)
        if "error" in event:
            r.status, r.error_type = "error", event["error"].get("type")
            return
        if event.get("usage"):
            r.usage = event["usage"]
        for choice in event.get("choices") or []:
            if choice.get("delta", {}).get("content"):
                r.content_chunks += 1
                if r.ttft_ms is None:
                    r.ttft_ms = (time.perf_counter() - t0) * 1000
            if choice.get("finish_reason"):
                r.finish_reason = choice["finish_reason"]
        if hang_up and r.content_chunks:
            r.status = "cancelled"
            return
    if not done:
        r.status, r.error_type = "error", "stream ended without [DONE]"


async def run(url: str, planned: list[Planned], concurrency: int, timeout: float, run_id: str) -> list[Result]:
    """Send the plan with at most ``concurrency`` requests in flight; results in plan order."""
    results: list[Result | None] = [None] * len(planned)
    todo = iter(planned)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        async def worker() -> None:
            for p in todo:
                results[p.index] = await _one(client, p, run_id)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [r for r in results if r is not None]


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), without numpy."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(results: list[Result], elapsed_s: float) -> dict[str, Any]:
    """Counts by status, token sums (of the usage the service returned), latency percentiles."""
    by_status: dict[str, int] = {}
    for r in results:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    ok = [r.latency_ms for r in results if r.status == "success"]
    ttft = [r.ttft_ms for r in results if r.status == "success" and r.ttft_ms is not None]
    with_usage = [r.usage for r in results if r.usage]
    return {
        "requests": len(results),
        "elapsed_s": round(elapsed_s, 3),
        "requests_per_s": round(len(results) / elapsed_s, 3) if elapsed_s > 0 else None,
        "by_status": dict(sorted(by_status.items())),
        "with_usage": len(with_usage),
        "prompt_tokens": sum(u["prompt_tokens"] for u in with_usage),
        "completion_tokens": sum(u["completion_tokens"] for u in with_usage),
        # Streams that asked for no usage: the content chunks are the only count the client has.
        "content_chunks_without_usage": sum(r.content_chunks for r in results
                                            if r.stream and not r.usage and r.status == "success"),
        "success_latency_ms": {f"p{q}": round(percentile(ok, q), 3) for q in (50, 90, 99)},
        "success_ttft_ms": {f"p{q}": round(percentile(ttft, q), 3) for q in (50, 90, 99)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="qwen2-tiny-random", help="the model name to ask for")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt-tokens", type=float, default=60, help="median prompt length (default 60)")
    parser.add_argument("--output-tokens", type=float, default=24, help="median max_tokens (default 24)")
    parser.add_argument("--max-output-tokens", type=int, default=256, help="max_tokens cap (default 256)")
    parser.add_argument("--stream", type=float, default=0.5, help="share of chat requests streamed")
    parser.add_argument("--include-usage", type=float, default=0.5, help="share of streams that ask for usage")
    parser.add_argument("--bad", type=float, default=0.1, help="share of bad requests (4xx)")
    parser.add_argument("--cancel", type=float, default=0.0, help="share of streams the client hangs up on")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--out", help="write every request and its answer, and the summary, as JSON here")
    parser.add_argument("--quiet", action="store_true", help="print the summary only")
    args = parser.parse_args(argv)
    if args.requests < 0 or args.concurrency < 1:
        parser.error("--requests must be >= 0 and --concurrency >= 1")
    if not 0 <= args.bad + args.cancel <= 1:
        parser.error("--bad + --cancel must be between 0 and 1")

    planned = plan(requests=args.requests, seed=args.seed, model=args.model, prompt_tokens=args.prompt_tokens,
                   output_tokens=args.output_tokens, max_output_tokens=args.max_output_tokens, stream=args.stream,
                   include_usage=args.include_usage, bad=args.bad, cancel=args.cancel)
    run_id = f"lg{args.seed}"
    t0 = time.perf_counter()
    results = asyncio.run(run(args.url, planned, args.concurrency, args.timeout, run_id))
    elapsed = time.perf_counter() - t0
    totals = summary(results, elapsed)
    if not args.quiet:
        for r in results:
            usage = f"{r.usage['prompt_tokens']}+{r.usage['completion_tokens']}" if r.usage else "-"
            print(f"{r.index:5d} {r.kind:16s} {'stream' if r.stream else 'plain ':6s} {r.http_status or '-':>4} "
                  f"{r.status:12s} usage={usage:9s} chunks={r.content_chunks:<4d} {r.latency_ms:8.1f} ms")
    print(json.dumps(totals))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"summary": totals, "flags": vars(args), "results": [asdict(r) for r in results]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
