"""Tests of qwen_fluent.metrics, qwen_fluent.pipeline and qwen_fluent.server.http."""
