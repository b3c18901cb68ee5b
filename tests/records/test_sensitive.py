"""The sensitive-data audit: each kind found where it is, and not where it only looks like it is.

True positives are published test values (card networks' test numbers, the
GB 11643-1999 example resident ids, AWS's documented example key id); false
positives are the strings these records really carry (timestamps, UUIDs,
image digests, container ids, IP addresses, request ids) and near misses
(one digit changed so that a check digit fails).
"""

from __future__ import annotations

import time

import pytest

from qwen_fluent.records.sensitive import (
    KINDS,
    TRUNCATED,
    ScanLimits,
    SensitiveScanner,
    card_number_valid,
    cn_resident_id_valid,
    kinds_in,
    luhn_valid,
)

SCAN = SensitiveScanner()

TRUE = {
    "api_key": [
        "sk-proj-4f9K2mZq8Lr1Tx7Vb3Nc6Hd0",
        "using key sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv for the judge",
        "hf_abcdefghijklmnopqrstuvwxyzABCDEF",
        "token ghp_0123456789abcdefghijABCDEFGHIJ012345 leaked",
        "AKIAIOSFODNN7EXAMPLE",
        "AIzaSyA-abcdefghijklmnopqrstuvwxyz01234",
        "xoxb-1234567890-abcdefghij",
        "glpat-abcdefghij0123456789",
        'config: {"api_key": "q8Zr1Lm4Nx7Pv2Tb"}',
        "PASSWORD=Tr0ub4dor&3horse",
    ],
    "bearer_token": [
        "Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345",
        "authorization=bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ],
    "email": ["contact john.doe+llm@example.co.uk now", "user_1@mail.example.com", "王@example.cn"],
    "phone": ["call 13812345678", "+86 138 1234 5678", "+86-13912345678", "+1 415 555 2671", "(415) 555-2671",
              "+44 20 7946 0958"],
    "cn_resident_id": ["11010519491231002X", "id=11010519491231002x;", "440524188001010014"],
    "card_number": ["4111111111111111", "4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005",
                    "6011111111111117", "3530111333300000", "6200000000000005", "30569309025904",
                    "paid with 2223003122003222."],
}

FALSE = [
    # what the records carry
    "2025-04-05T10:23:45.123456789Z", "3f1c2b4a-1111-2222-3333-123089695663", "req_abc123xyz",
    "vllm/vllm-openai@sha256:" + "ab" * 32, "a1b2c3d4e5f6" * 5, "10.244.1.23", "1733480000123",
    "1733480000123456789", "/v1/chat/completions", "llm-inference-7d9f8b6c5-x2k4p",
    "Avg prompt throughput: 1234.5 tokens/s, Running: 3 reqs", "input_tokens=1240 output_tokens=320",
    "ts 1733480000 1733480001 1733480002",
    # near misses: the check digit fails, the date does not exist, no issuer, too short
    "4111111111111112", "5555-5555-5555-4445", "11010519491231002Y", "110105194912310021",
    "110105194902301234", "9111111111111111", "1234567890123", "41111111111111",
    # almost addresses, almost phones, almost keys
    "user@localhost", "name@sha256:abcdef", "@example.com", "12345678901", "23812345678", "+86 12", "sk-short",
    "my-ghp_token", "Bearer short", "password: ********", "the bearer of bad news",
]


@pytest.mark.parametrize("kind, text", [(k, t) for k, texts in TRUE.items() for t in texts])
def test_found(kind: str, text: str) -> None:
    assert kind in kinds_in(text)
    assert kind in SCAN.scan({"log": text, "status": "success"})


@pytest.mark.parametrize("text", FALSE)
def test_not_found(text: str) -> None:
    assert kinds_in(text) == set()
    assert SCAN.scan({"message": text}) == frozenset()


def test_check_digits() -> None:
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert cn_resident_id_valid("11010519491231002X") and not cn_resident_id_valid("110105194912310029")
    assert not cn_resident_id_valid("11010520991231002X")  # born in the future
    assert card_number_valid("4111 1111 1111 1111") and not card_number_valid("4111 1111 1111 111")
    # an 18-digit id is not also counted as a card, even where its digits would pass Luhn
    assert kinds_in("11010519491231002X") == {"cn_resident_id"}


def test_a_realistic_record_with_everything_reports_kinds_never_text() -> None:
    record = {
        "timestamp": "2025-04-05T10:23:45Z", "request_id": "req_abc123xyz", "status": "success",
        "prompt": "My card is 4111 1111 1111 1111 and my phone is 13812345678, mail a@example.com",
        "headers": {"Authorization": "Bearer abcdefghijklmnopqrstuvwxyz012345", "X-Api-Key": "q8Zr1Lm4Nx7Pv2Tb"},
        "user": {"ids": ["11010519491231002X"]},
        "kubernetes": {"pod_name": "llm-inference-0", "labels": {"app": "llm"}},
    }
    found = SCAN.scan(record)
    assert found == frozenset(KINDS)
    assert all(isinstance(k, str) and k in KINDS for k in found)
    assert SCAN.scan_many([record, {"status": "success"}, {"m": "a@example.com"}]) == {
        "api_key": 1, "bearer_token": 1, "email": 2, "phone": 1, "cn_resident_id": 1, "card_number": 1,
        "truncated": 0}


def test_secret_named_keys_count_only_with_a_real_looking_value() -> None:
    assert SCAN.scan({"apiKey": "zzzzzzzzzzzzzz"}) == {"api_key"}
    assert SCAN.scan({"client_secret": "0123456789abcdef"}) == {"api_key"}
    for placeholder in ("", "***", "************", "<redacted>", "[FILTERED]", "none", "short"):
        assert SCAN.scan({"api_key": placeholder}) == frozenset(), placeholder
    assert SCAN.scan({"api_key_id": "zzzzzzzzzzzzzz"}) == frozenset()  # not a secret's name


def test_limits_bound_the_work_and_say_so() -> None:
    limits = ScanLimits(max_chars=1000, max_string_chars=500, max_depth=3, max_values=50)
    scanner = SensitiveScanner(limits)
    # past max_string_chars: cut, and what lies after the cut is not seen
    assert scanner.scan({"log": "x" * 600 + " a@example.com"}) == {TRUNCATED}
    assert scanner.scan({"log": "a@example.com " + "x" * 600}) == {"email", TRUNCATED}
    # past max_depth
    deep = {"a": {"b": {"c": {"d": "a@example.com"}}}}
    assert scanner.scan(deep) == {TRUNCATED}
    # past max_values
    assert scanner.scan({"v": list(range(60)) + ["a@example.com"]}) == {TRUNCATED}
    # past max_chars, over several strings
    assert scanner.scan({f"k{i}": "y" * 400 for i in range(5)}) == {TRUNCATED}
    # a 4 MiB line costs what the limit costs, not what the line costs
    huge = {"log": "a1b2c3 " * ((4 << 20) // 7)}
    start = time.perf_counter()
    assert SCAN.scan(huge) == {TRUNCATED}
    assert time.perf_counter() - start < 0.5


def test_non_string_values_are_not_scanned_and_never_raise() -> None:
    assert SCAN.scan({"n": 4111111111111111, "f": 1.5, "b": True, "none": None, 3: "x", "raw": b"a@example.com"}) \
        == frozenset()
    assert SCAN.scan("a plain line with a@example.com") == {"email"}
    assert SCAN.scan(None) == frozenset() and SCAN.scan(42) == frozenset()


def test_kubernetes_metadata_is_not_scanned_unless_asked() -> None:
    record = {"log": "ok", "kubernetes": {"annotations": {"owner": "team-lead@example.com"}}}
    assert SCAN.scan(record) == frozenset()
    assert SensitiveScanner(ScanLimits(skip_keys=frozenset())).scan(record) == {"email"}


def test_an_authorization_header_is_a_bearer_token_or_a_key_by_its_scheme() -> None:
    assert SCAN.scan({"Authorization": "Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0"}) == {"bearer_token"}
    assert SCAN.scan({"Authorization": "Basic dXNlcjpwYXNzd29yZA=="}) == {"api_key"}
