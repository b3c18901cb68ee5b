"""System-prompt change events: a hash travels on, never the prompt text."""

from __future__ import annotations

import hashlib
import json

import pytest

from qwen_fluent.records import NO_SOURCE, LogEvent, PromptChange, RequestEvent, Unrecognised, normalise

PROMPT = "You are a helpful assistant. Answer in French."
DIGEST = hashlib.sha256(PROMPT.encode()).hexdigest()


def test_event_with_a_full_sha256_gives_its_first_16_hex_chars():
    record = {"event": "system_prompt_changed", "system_prompt_hash": DIGEST, "model": "qwen2.5-7b"}
    assert normalise(record, "t") == PromptChange(DIGEST[:16], "qwen2.5-7b", NO_SOURCE)


def test_text_and_hash_of_the_same_prompt_agree():
    from_text = normalise({"system_prompt": PROMPT}, "t")
    from_hash = normalise({"system_prompt_hash": "sha256:" + DIGEST.upper()}, "t")
    assert from_text.prompt_hash == from_hash.prompt_hash == DIGEST[:16]


def test_the_text_never_reaches_the_event():
    event = normalise({"event": "system_prompt_updated", "system_prompt": PROMPT, "level": "info"}, "t")
    assert isinstance(event, PromptChange) and PROMPT not in repr(event)


def test_a_hash_field_holding_text_is_hashed_not_copied():
    event = normalise({"system_prompt_hash": PROMPT}, "t")
    assert event.prompt_hash == DIGEST[:16]


def test_text_wins_over_a_supplied_hash():
    event = normalise({"system_prompt": PROMPT, "system_prompt_hash": "0" * 64}, "t")
    assert event.prompt_hash == DIGEST[:16]


def test_short_hex_hashes_are_kept_whole():
    assert normalise({"system_prompt_hash": "DEADBEEF"}, "t").prompt_hash == "deadbeef"


def test_invalid_utf8_prompt_hashes_its_original_bytes():
    raw = b"Tu es un assistant \xff"
    event = normalise({"system_prompt": raw.decode("utf-8", "surrogateescape")}, "t")
    assert event.prompt_hash == hashlib.sha256(raw).hexdigest()[:16]
    assert normalise({"system_prompt": "lone \ud800"}, "t").prompt_hash.isalnum()


def test_model_from_pod_label_and_wrapped_json():
    meta = {"namespace_name": "n", "pod_name": "p", "container_name": "c", "host": "h", "labels": {"model": "m"}}
    record = {"log": json.dumps({"event": "prompt_changed", "system_prompt_hash": DIGEST}), "kubernetes": meta}
    event = normalise(record, "t")
    assert isinstance(event, PromptChange) and event.model == "m" and event.source.pod == "p"


@pytest.mark.parametrize(
    "record",
    [
        {"event": "system_prompt_changed"},
        {"event": "system_prompt_changed", "system_prompt": ""},
        {"event_type": "system_prompt_change", "system_prompt": ["a", "list"]},
        {"system_prompt": {"role": "system"}},
        {"system_prompt_hash": 12345},
        {"system_prompt_hash": "   "},
    ],
)
def test_announced_or_carried_without_a_usable_prompt(record):
    assert normalise(record, "t") == Unrecognised("invalid_prompt_change", NO_SOURCE)


def test_null_prompt_fields_do_not_make_a_change():
    assert normalise({"system_prompt": None, "level": "info", "message": "x"}, "t") == LogEvent("info", NO_SOURCE)
    assert normalise({"event": "started", "level": "info"}, "t") == LogEvent("info", NO_SOURCE)
    assert normalise({"event": ["system_prompt_changed"], "level": "info"}, "t") == LogEvent("info", NO_SOURCE)


def test_a_request_that_names_its_prompt_is_a_request():
    event = normalise({"request_id": "r", "output_tokens": 3, "system_prompt_hash": DIGEST}, "t")
    assert isinstance(event, RequestEvent)
