"""Default histogram bucket bounds, each with the reason for its choice.

Bounds are upper bounds (Prometheus ``le``, inclusive), in base units:
seconds for durations, tokens for token counts. ``+Inf`` is implicit and
never listed. Every default is configurable through
:class:`~qwen_fluent.metrics.config.MetricsConfig`.
"""

from __future__ import annotations

#: End-to-end, queue and inference durations (seconds).
#:
#: The article's latency thresholds (100 ms, 500 ms, 1 s, 2 s, 3 s, 4 s,
#: 5 s) are all exact bounds, so ``histogram_quantile`` answers "is P95 under
#: 2 s?" without interpolating across a threshold, and an SLO ratio
#: ``le="2"`` / ``_count`` is exact. Past 5 s the bounds widen roughly
#: x1.5-x2 out to 10 minutes: LLM requests with long outputs run for minutes
#: (vLLM's own ``e2e_request_latency_seconds`` buckets go to 7680 s for the
#: same reason). 21 bounds: about the size of vLLM's histograms, so a label
#: set costs the same number of series as theirs.
DURATION_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0,
    7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0,
)

#: Time to first token (seconds). Streaming chat UIs feel instant under
#: ~250 ms and broken past a few seconds, so the resolution is in the
#: 10 ms - 2.5 s range (vLLM's ``time_to_first_token_seconds`` starts at
#: 1 ms; log-based timings are not that precise, so we start at 10 ms) and
#: the tail stops at 60 s, where prefill of a 128k-token prompt on a busy
#: server lands.
TTFT_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 0.75,
    1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)

#: Time per output token (seconds). Decode steps take 5-100 ms on current
#: GPUs (10-200 tokens/s per stream); vLLM's ``time_per_output_token_seconds``
#: uses 10 ms - 2.5 s for the same reason. Beyond 1 s per token the server is
#: effectively stalled, which one wide tail bucket records.
TPOT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
)

#: Prompt (input) tokens per request: powers of two from 16 to 131072.
#:
#: Context windows are powers of two (Qwen2.5 serves 32768 natively and
#: 131072 with YaRN), so a prompt that fills the window lands exactly on a
#: bound; doubling gives constant relative resolution over four orders of
#: magnitude in 14 buckets. Below 16 tokens there is hardly a chat template.
INPUT_TOKEN_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(4, 18))

#: Generated (output) tokens per request: powers of two from 1 to 8192.
#:
#: ``max_tokens`` is usually set to a power of two and 8192 is Qwen2.5's
#: generation limit, so truncated answers land exactly on a bound; 1-token
#: answers (classification, yes/no) get their own bucket.
OUTPUT_TOKEN_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(0, 14))
