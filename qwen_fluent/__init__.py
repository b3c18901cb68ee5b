"""qwen-fluent: a Fluent Forward receiver that turns LLM inference logs into Prometheus metrics.

The pieces, one package each:

- :mod:`qwen_fluent.forward` -- the Forward protocol as a sans-IO state machine.
- :mod:`qwen_fluent.server`  -- the asyncio shell around it (TCP, TLS, Unix socket).
- :mod:`qwen_fluent.records` -- turns a decoded log record into a request, log or stats event.
- :mod:`qwen_fluent.metrics` -- aggregates those events and exposes them to Prometheus.
- :mod:`qwen_fluent.gpu`     -- GPU gauges read through NVML at scrape time.
- :mod:`qwen_fluent.cli`     -- the ``qwen-fluent`` command.
"""

__version__ = "0.1.0"
