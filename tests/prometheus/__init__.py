"""End-to-end tests against real Prometheus tools (prometheus, promtool)."""
