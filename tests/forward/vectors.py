"""Reading the Fluent Bit 4.2.8 wire captures in ``tests/vectors/``.

Each case folder holds, per connection, the client's bytes, the capture
server's bytes and its event log, plus a ``dump.txt`` written by the capture
tool with every decoded message. The tests decode the raw bytes with our core
and compare with ``dump.txt``: the dump is the independent ground truth.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parent.parent / "vectors" / "fluent-bit-4.2.8"

# Shared keys and hostnames used when the captures were made (vectors/README.md).
SHARED_KEY = "secret"
SERVER_HOSTNAME = "capture-server"
USERS = {"alice": "s3cret"}

DUMP_MODES = {
    "Forward": "forward",
    "Message": "message",
    "PackedForward": "packed_forward",
    "CompressedPackedForward": "compressed_packed_forward",
}

_EVENT_TIME = re.compile(r"EventTime\(sec=(\d+), nsec=(\d+)\)")


@dataclasses.dataclass
class DumpEntry:
    sec: int
    nsec: int
    record: dict[str, Any]
    metadata: dict[str, Any] | None


@dataclasses.dataclass
class DumpObject:
    mode: str
    entries: list[DumpEntry]


@dataclasses.dataclass
class Capture:
    case: str
    name: str  # conn-NNN
    client: bytes
    server: bytes
    events: list[dict[str, Any]]
    objects: list[DumpObject]  # client->server objects from dump.txt
    server_args: dict[str, str]  # the capture server's command line, from dump.txt

    @property
    def shared_key(self) -> str:
        return self.server_args.get("--shared-key", SHARED_KEY)

    def server_objects(self) -> list[Any]:
        unpacker = msgpack.Unpacker(raw=True, strict_map_key=False)
        unpacker.feed(self.server)
        return list(unpacker)


def _parse_time(text: str) -> tuple[int, int, dict[str, Any] | None]:
    text = text.strip()
    if text.startswith("["):
        # ['EventTime(...) = ... [fixext8(type=0)]', {'k': 'v'}] [array32(2)]
        literal = text[: text.rindex("]", 0, text.rindex("[")) + 1]
        first, metadata = ast.literal_eval(literal)
        sec, nsec, _ = _parse_time(first)
        return sec, nsec, metadata
    m = _EVENT_TIME.search(text)
    if m:
        return int(m.group(1)), int(m.group(2)), None
    return int(text.split()[0]), 0, None


def _parse_dump(text: str) -> dict[str, list[DumpObject]]:
    """Client->server objects of each connection, from dump.txt."""
    result: dict[str, list[DumpObject]] = {}
    conn = None
    in_client = False
    pending_time: tuple[int, int, dict[str, Any] | None] | None = None
    for line in text.splitlines():
        if line.startswith("# CONNECTION "):
            conn = line.split()[-1]
            result[conn] = []
            in_client = False
        elif line.startswith("== "):
            in_client = line.startswith("== client->server")
        elif in_client and conn and line.startswith("-- object"):
            mode = line.rsplit("mode=", 1)[1].strip()
            result[conn].append(DumpObject(mode, []))
        elif in_client and conn and line.lstrip().startswith("time:"):
            pending_time = _parse_time(line.split("time:", 1)[1])
        elif in_client and conn and line.lstrip().startswith("record:"):
            assert pending_time is not None, line
            sec, nsec, metadata = pending_time
            record = json.loads(line.split("record:", 1)[1])
            result[conn][-1].entries.append(DumpEntry(sec, nsec, record, metadata))
            pending_time = None
    return result


def _server_args(text: str) -> dict[str, str]:
    for line in text.splitlines():
        if line.startswith("# capture server args:"):
            words = line.split(":", 1)[1].split()
            return {k: v for k, v in zip(words[::2], words[1::2])}
    return {}


def cases() -> list[str]:
    return sorted(p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("_"))


def captures(case: str) -> list[Capture]:
    folder = ROOT / case
    text = (folder / "dump.txt").read_text()
    dump = _parse_dump(text)
    args = _server_args(text)
    out = []
    for client in sorted(folder.glob("conn-*.client.bin")):
        name = client.name.split(".")[0]
        events = [json.loads(line) for line in (folder / f"{name}.events.jsonl").read_text().splitlines() if line]
        out.append(
            Capture(
                case=case,
                name=name,
                client=client.read_bytes(),
                server=(folder / f"{name}.server.bin").read_bytes(),
                events=events,
                objects=dump.get(name, []),
                server_args=args,
            )
        )
    return out


def all_captures() -> list[Capture]:
    return [c for case in cases() for c in captures(case)]
