"""The line reader (qwen_fluent.records.lines): every line kind, partial joins, bounds, framing.

Records are checked both as the reader builds them and through the real normaliser, since the
contract is "shapes the normaliser already accepts".
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from qwen_fluent.records import EngineStats, LogEvent, Normaliser, RequestEvent, Unrecognised
from qwen_fluent.records.lines import (
    INVALID_JSON,
    LINE_TOO_LONG,
    MAX_SAMPLES,
    MAX_STREAMS,
    PARTIAL_TOO_LONG,
    LineReader,
)

REQUEST = {"request_id": "req_1", "input_tokens": 12, "output_tokens": 30, "total_time_ms": 1876,
           "status": "success", "model": "qwen2.5-7b"}
TEXT = json.dumps(REQUEST)


def docker(log: str, stream: str = "stdout", time: str = "2025-04-05T10:23:45.1Z") -> bytes:
    return (json.dumps({"log": log, "stream": stream, "time": time}) + "\n").encode()


def cri(text: str, tag: str = "F", stream: str = "stdout") -> bytes:
    return f"2025-04-05T10:23:45.123456789Z {stream} {tag} {text}\n".encode()


def read_all(reader: LineReader, lines: list[bytes]) -> list[dict]:
    out: list[dict] = []
    for line in lines:
        out += reader.line(line)
    return out + reader.close()


def test_json_line_is_the_object() -> None:
    reader = LineReader()
    records = read_all(reader, [TEXT.encode() + b"\n"])
    assert records == [REQUEST]
    event = Normaliser()(records[0])
    assert type(event) is RequestEvent and event.total_s == 1.876 and event.output_tokens == 30
    assert (reader.lines, reader.records, reader.unparsed_total) == (1, 1, 0)


def test_str_and_crlf_lines() -> None:
    reader = LineReader()
    assert reader.line(TEXT + "\r\n") == [REQUEST]
    assert reader.line("plain words é") == [{"log": "plain words é"}]


def test_docker_partials_joined_per_stream() -> None:
    half = len(TEXT) // 2
    lines = [
        docker(TEXT[:half], time="t1"),
        docker("ERROR on stderr\n", stream="stderr"),  # interleaved, complete
        docker(TEXT[half:] + "\n", time="t2"),
    ]
    reader = LineReader()
    records = read_all(reader, lines)
    assert [r["log"] for r in records] == ["ERROR on stderr\n", TEXT + "\n"]
    assert records[1]["time"] == "t1"  # the first part's time, as Fluent Bit's docker parser keeps
    assert reader.joined == 1
    normalise = Normaliser()
    assert type(normalise(records[0])) is LogEvent
    event = normalise(records[1])
    assert type(event) is RequestEvent and event.request_id == "req_1"


def test_cri_partials_joined() -> None:
    third = len(TEXT) // 3
    lines = [cri(TEXT[:third], "P"), cri("INFO stderr line", stream="stderr"), cri(TEXT[third:2 * third], "P"),
             cri(TEXT[2 * third:], "F")]
    reader = LineReader()
    records = read_all(reader, lines)
    assert records[0] == {"time": "2025-04-05T10:23:45.123456789Z", "stream": "stderr", "_p": "F",
                          "log": "INFO stderr line"}
    assert records[1]["log"] == TEXT and records[1]["stream"] == "stdout"
    assert reader.joined == 1 and reader.records == 2
    assert type(Normaliser()(records[1])) is RequestEvent


def test_cri_empty_text() -> None:
    reader = LineReader()
    assert reader.line(b"2025-04-05T10:23:45Z stdout F\n")[0]["log"] == ""


def test_plain_lines_reach_the_normaliser_recognisers() -> None:
    vllm = ("INFO 04-05 10:23:47 metrics.py:351] Avg prompt throughput: 1240.0 tokens/s, Avg generation "
            "throughput: 55.3 tokens/s, Running: 3 reqs, Swapped: 0 reqs, Pending: 0 reqs, GPU KV cache usage: "
            "12.5%, CPU KV cache usage: 0.0%.")
    tgi = ('2025-04-05T10:23:47.123456Z  INFO generate{total_time="1.25s" validation_time="1ms" '
           'queue_time="65µs" inference_time="1.2s" time_per_token="15ms"}: '
           'text_generation_router::server: router/src/server.rs:545: Success')
    reader = LineReader()
    records = read_all(reader, [vllm.encode() + b"\n", tgi.encode() + b"\n", b"WARNING:root:careful\n"])
    normalise = Normaliser()
    events = [normalise(r) for r in records]
    assert type(events[0]) is EngineStats and events[0].running == 3
    assert type(events[1]) is RequestEvent and events[1].total_s == 1.25 and events[1].output_tokens == 80
    assert type(events[2]) is LogEvent and events[2].level == "warning"


def test_invalid_json_counted_and_sampled() -> None:
    reader = LineReader()
    bad = [b'{"request_id": "x", \n', b"{\xff\xfe}\n", b"{}}\n"]
    assert read_all(reader, bad + [b"\n", b"   \n"]) == []
    assert reader.unparsed[INVALID_JSON] == 3 and reader.blank == 2 and reader.lines == 5
    assert [s.line_number for s in reader.samples] == [1, 2, 3]
    assert reader.samples[0].text == '{"request_id": "x", '


def test_invalid_utf8_inside_json_is_replaced() -> None:
    reader = LineReader()
    (record,) = reader.line(b'{"request_id": "a\xffb", "total_time_ms": 5}\n')
    assert record["request_id"] == "a\ufffdb"


def test_fluent_bit_cri_record_is_not_rejoined() -> None:
    record = {"time": "t", "stream": "stdout", "_p": "P", "log": "no newline"}
    assert LineReader().line(json.dumps(record)) == [record]


def test_line_too_long() -> None:
    reader = LineReader(max_line_length=100)
    records = read_all(reader, [b"{" + b"x" * 200 + b"}\n", TEXT.encode()[:90] + b"\n", b"short\n"])
    assert reader.unparsed[LINE_TOO_LONG] == 1
    assert records[-1] == {"log": "short"}
    assert len(reader.samples[0].text) <= 200


def test_partial_too_long_dropped_up_to_final_part() -> None:
    reader = LineReader(max_partial_length=50)
    lines = [cri("a" * 30, "P"), cri("b" * 30, "P"), cri("c" * 30, "P"), cri("tail", "F"), cri("after", "F")]
    records = read_all(reader, lines)
    assert [r["log"] for r in records] == ["after"]
    assert reader.unparsed[PARTIAL_TOO_LONG] == 1


def test_unfinished_partial_flushed_at_close() -> None:
    reader = LineReader()
    assert reader.line(docker('{"request_id": "cut'))  == []
    (record,) = reader.close()
    assert record["log"] == '{"request_id": "cut'
    assert type(Normaliser()(record)) is Unrecognised  # a cut object is invalid_json in the normaliser


def test_stream_bound() -> None:
    reader = LineReader()
    out = []
    for n in range(MAX_STREAMS + 1):
        out += reader.line(docker(f"part {n}", stream=f"s{n}"))
    assert [r["log"] for r in out] == ["part 0"]  # the oldest pending line was flushed as it stood
    assert len(reader.close()) == MAX_STREAMS


def test_samples_bounded() -> None:
    reader = LineReader()
    read_all(reader, [b"{" + str(n).encode() + b"\n" for n in range(50)])
    assert reader.unparsed[INVALID_JSON] == 50 and len(reader.samples) == MAX_SAMPLES


def test_data_frames_lines_and_bounds_memory() -> None:
    reader = LineReader(max_line_length=1000)
    stream = TEXT.encode() + b"\n" + b"y" * 5000 + b"\n" + b"tail without newline"
    out = []
    for at in range(0, len(stream), 64):
        out += reader.data(stream[at:at + 64])
        assert len(reader._buffer) <= 1000 + 64
    out += reader.close()
    assert out == [REQUEST, {"log": "tail without newline"}]
    assert reader.unparsed[LINE_TOO_LONG] == 1 and reader.lines == 3


lines_strategy = st.lists(
    st.sampled_from([
        TEXT.encode() + b"\n",
        docker(TEXT[:20]), docker(TEXT[20:] + "\n"),
        cri(TEXT[:10], "P"), cri(TEXT[10:], "F"),
        b"INFO 04-05 10:23:47 api_server.py:1] ok\n", b"{broken\n", b"\n", b"z" * 300 + b"\n",
    ]),
    max_size=40,
)


@given(lines_strategy, st.lists(st.integers(1, 97), min_size=1, max_size=10))
def test_data_equals_line_by_line(lines: list[bytes], cuts: list[int]) -> None:
    """However a stream is chunked, data() gives the same records and counts as line()."""
    by_line = LineReader(max_line_length=256)
    expected = read_all(by_line, lines)
    stream = b"".join(lines)
    chunked = LineReader(max_line_length=256)
    got = []
    at = 0
    step = 0
    while at < len(stream):
        size = cuts[step % len(cuts)]
        got += chunked.data(stream[at:at + size])
        at += size
        step += 1
    got += chunked.close()
    assert got == expected
    assert chunked.unparsed == by_line.unparsed
    assert (chunked.lines, chunked.records, chunked.blank) == (by_line.lines, by_line.records, by_line.blank)


def test_what_msgspec_refuses_json_loads_decides() -> None:
    """NaN (Python's json writes it), a lone surrogate escape, a number past float range: json.loads' reading."""
    reader = LineReader()
    (nan,) = reader.line(b'{"request_id": "x", "total_time_ms": NaN, "output_tokens": 3}')
    assert nan["total_time_ms"] != nan["total_time_ms"] and nan["output_tokens"] == 3
    (surrogate,) = reader.line(b'{"request_id": "\\ud800"}')
    assert surrogate == {"request_id": "\ud800"}
    (huge,) = reader.line(b'{"total_time_ms": 1e400}')
    assert huge == {"total_time_ms": float("inf")}
    assert reader.unparsed_total == 0
    event = Normaliser()(nan)
    assert type(event) is RequestEvent and event.total_s is None and event.output_tokens == 3


def test_leading_space_before_an_object() -> None:
    assert LineReader().line(b'   {"request_id": "r", "total_time_ms": 5}\n') == [
        {"request_id": "r", "total_time_ms": 5}]
