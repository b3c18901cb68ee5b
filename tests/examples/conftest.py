"""The example inference service's tests need torch and transformers (a CPU build, ~1 GB installed):
``scripts/test-example-service PYTHON`` installs them and runs these tests. They carry the
``example_service`` marker so that the per-version suite runs can deselect them (``-m "not
example_service"``); where they are selected and torch is missing they fail, they never skip."""

from __future__ import annotations


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "example_service: runs examples/inference_server (needs torch + transformers; "
        "scripts/test-example-service installs them)",
    )
