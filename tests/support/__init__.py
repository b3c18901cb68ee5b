"""Shared test helpers: a real Prometheus harness and a Forward client."""
