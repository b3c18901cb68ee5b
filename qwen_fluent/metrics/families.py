"""The request families as a table: one line per histogram or counter.

The aggregator (:mod:`.llm`, :mod:`.table`), the fast path (:mod:`.fast`),
the exposition and the docs' tests read these tables, so adding a request
histogram is one line here: its name (after the namespace), help text, the
:class:`~qwen_fluent.records.events.RequestEvent` field it observes, the
:class:`~qwen_fluent.metrics.config.MetricsConfig` attribute holding its
bucket bounds, its OpenMetrics unit, and whether it carries exemplars and
integer sums. Its labels come from the configuration (``histogram_labels``,
``family_labels``); request families with the same label list share one
:class:`~qwen_fluent.metrics.table.RequestGroup` of label sets.
"""

from __future__ import annotations

from typing import NamedTuple


class HistogramSpec(NamedTuple):
    """One request histogram."""

    name: str
    help: str
    #: The RequestEvent field observed (``None`` there: not observed).
    field: str
    #: The MetricsConfig attribute with the bounds.
    buckets: str
    #: OpenMetrics unit ("" for counts of tokens).
    unit: str
    #: Attach the last ``request_id`` per bucket as an OpenMetrics exemplar.
    exemplars: bool = False
    #: Token counts: the sum stays an exact integer.
    integer: bool = False


class SumCounterSpec(NamedTuple):
    """A counter of the sum of a RequestEvent field (``rate()`` of it is a per-second total).

    It carries the request counters' labels (``labels``, with ``status``),
    which the histogram of the same field may not (``histogram_labels``).
    """

    name: str
    help: str
    #: The RequestEvent field summed (an integer count).
    field: str


REQUEST_HISTOGRAMS: tuple[HistogramSpec, ...] = (
    HistogramSpec("request_duration_seconds", "End-to-end request duration as the server logged it (total_time).",
                  "total_s", "duration_buckets", "seconds", exemplars=True),
    HistogramSpec("request_queue_duration_seconds",
                  "Time requests waited in the server's queue before inference started.",
                  "queue_s", "duration_buckets", "seconds"),
    HistogramSpec("request_inference_duration_seconds", "Time requests spent in inference (prefill and decode).",
                  "inference_s", "duration_buckets", "seconds", exemplars=True),
    HistogramSpec("time_to_first_token_seconds", "Time from request arrival to its first output token.",
                  "ttft_s", "ttft_buckets", "seconds"),
    HistogramSpec("time_per_output_token_seconds",
                  "Time per output token: as logged, else (total - ttft) / (output_tokens - 1), "
                  "else inference / output_tokens.",
                  "tpot_s", "tpot_buckets", "seconds"),
    HistogramSpec("request_input_tokens", "Prompt (input) tokens per request.",
                  "input_tokens", "input_token_buckets", "", integer=True),
    HistogramSpec("request_output_tokens", "Generated (output) tokens per request.",
                  "output_tokens", "output_token_buckets", "", integer=True),
)

REQUEST_COUNTERS: tuple[SumCounterSpec, ...] = (
    SumCounterSpec("input_tokens_total", "Prompt (input) tokens of finished requests; rate() gives tokens/s.",
                   "input_tokens"),
    SumCounterSpec("output_tokens_total", "Generated (output) tokens of finished requests; rate() gives tokens/s.",
                   "output_tokens"),
)

#: The requests counter: one per request label set.
REQUESTS_HELP = ("Inference requests finished, by status (error and timeout are server-side failures; "
                 "client_error and cancelled are not).")
