"""Plain and JSON log lines counted by level."""

from __future__ import annotations

import pytest

from qwen_fluent.records import NO_SOURCE, LogEvent, Normaliser, NormaliserConfig, Unrecognised, normalise


@pytest.mark.parametrize(
    "line, level",
    [
        # uvicorn
        ('INFO:     10.0.0.1:5000 - "POST /v1/chat/completions HTTP/1.1" 200 OK', "info"),
        ("ERROR:    Exception in ASGI application", "error"),
        ("WARNING:  Invalid HTTP request received.", "warning"),
        # vLLM
        ("INFO 04-05 10:23:47 api_server.py:1024] Started server process [1]", "info"),
        ("WARNING 04-05 10:23:47 [config.py:512] Casting torch.bfloat16 to torch.float16.", "warning"),
        ("(EngineCore_0 pid=7) ERROR 09-01 12:00:00 [core.py:700] EngineCore failed to start.", "error"),
        ("DEBUG 04-05 10:23:47 [loggers.py:116] Engine 000: idle", "debug"),
        # Python logging
        ("WARNING:root:disk almost full", "warning"),
        ("CRITICAL:app.worker:out of memory", "critical"),
        ("2025-04-05 10:23:47,123 - app.server - ERROR - request failed", "error"),
        ("2025-04-05 10:23:47,123 INFO app.server: listening", "info"),
        ("[2025-04-05 10:23:47 +0000] [1] [INFO] Starting gunicorn 22.0.0", "info"),
        # Rust tracing, env_logger
        ("2025-04-05T10:23:47.123456Z  INFO text_generation_router: router/src/main.rs:300: Connected", "info"),
        ("2025-04-05T10:23:47.123456Z  WARN text_generation_router: Could not find tokenizer", "warning"),
        ("2025-04-05T10:23:47.123456Z TRACE h2::codec: frame", "debug"),
        ("\x1b[2m2025-04-05T10:23:47.123456Z\x1b[0m \x1b[31mERROR\x1b[0m \x1b[2mtext_generation_launcher\x1b[0m: Shard 0 failed", "error"),
        ("[2025-04-05T10:23:47Z WARN  my_crate] slow", "warning"),
        # klog, logfmt
        ("I0405 10:23:47.123456       1 server.go:42] serving", "info"),
        ("E0405 10:23:47.123456       1 server.go:42] failed", "error"),
        ("F0405 10:23:47.123456       1 server.go:42] fatal", "critical"),
        ('time=2025-04-05T10:23:47Z level=warn msg="queue is long"', "warning"),
        ("ts=1 lvl=error msg=x", "error"),
        # the capture's router line, and lines without a level
        ("INFO router started on :8080\n", "info"),
        ("FATAL: could not load model", "critical"),
        ("Loading safetensors checkpoint shards: 100% Completed | 4/4", "unknown"),
        ("just some words in a line that has info and error in lower case", "unknown"),
    ],
)
def test_plain_line_levels(line, level):
    assert normalise({"log": line}, "t") == LogEvent(level, NO_SOURCE)


@pytest.mark.parametrize(
    "record, level",
    [
        ({"level": "INFO", "message": "Connected", "target": "x"}, "info"),
        ({"levelname": "WARNING", "message": "slow"}, "warning"),
        ({"severity": "ERROR", "message": "x"}, "error"),
        ({"severity": "EMERGENCY"}, "critical"),
        ({"lvl": "dbug"}, "unknown"),
        ({"level": 30, "msg": "pino info"}, "unknown"),
        ({"level": "notice", "log": "a notice"}, "info"),
        ({"log.level": "warn", "message": "ecs"}, "warning"),
        ({"level": ["info"]}, "unknown"),
        ({"level": "i" * 100}, "unknown"),
    ],
)
def test_json_record_levels(record, level):
    assert normalise(record, "t") == LogEvent(level, NO_SOURCE)
    assert normalise({"log": __import__("json").dumps(record)}, "t") == LogEvent(level, NO_SOURCE)


def test_level_in_the_line_wins_over_the_record_level():
    assert normalise({"level": "info", "message": "ERROR: boom"}, "t") == LogEvent("error", NO_SOURCE)


def test_a_huge_plain_line_is_read_by_its_head():
    line = "WARNING 04-05 10:23:47 x.py:1] " + "x" * 1_000_000
    assert normalise({"log": line}, "t") == LogEvent("warning", NO_SOURCE)


def test_a_huge_json_line_is_not_parsed():
    line = '{"request_id": "r", "pad": "' + "x" * 70_000 + '", "output_tokens": 3}'
    assert normalise({"log": line}, "t") == Unrecognised("line_too_long", NO_SOURCE)
    bigger = Normaliser(NormaliserConfig(max_line_length=100_000))({"log": line}, "t")
    assert bigger.output_tokens == 3


@pytest.mark.parametrize("line", ["", "   ", "\n", "\t\r\n"])
def test_blank_lines(line):
    assert normalise({"log": line}, "t") == Unrecognised("empty_line", NO_SOURCE)


@pytest.mark.parametrize(
    "line",
    ['{"a": 1', '{"a": 1}}', '{"deep": ' + "[" * 10_000 + "]" * 10_000 + "}", ',"output_tokens": 512}', '"a": 1}'],
    ids=["cut-short", "trailing-garbage", "nested-10k-deep", "tail-of-split-line", "quoted-tail"],
)
def test_broken_json_lines(line):
    assert normalise({"log": line}, "t") == Unrecognised("invalid_json", NO_SOURCE)


@pytest.mark.parametrize("line", ["[1, 2]", '"a string"', "[]"])
def test_json_that_is_not_an_object_is_a_plain_line(line):
    # only "{" opens a record; a line starting otherwise is prose to the level reader
    assert normalise({"log": line}, "t") == LogEvent("unknown", NO_SOURCE)


def test_empty_json_object_line():
    assert normalise({"log": "{}"}, "t") == Unrecognised("empty_record", NO_SOURCE)


def test_level_parsing_can_be_turned_off():
    normaliser = Normaliser(NormaliserConfig(parse_levels=False))
    assert normaliser({"log": "ERROR: x"}, "t") == LogEvent("unknown", NO_SOURCE)
    assert normaliser({"level": "error", "message": "x"}, "t") == LogEvent("unknown", NO_SOURCE)
