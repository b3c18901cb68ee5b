"""The Fluent Forward protocol (v1), server side, without I/O.

See :class:`ForwardConnection` for the state machine, :mod:`.events` for what
it produces, :class:`Limits` for every bound it enforces and
:mod:`.errors` for what it raises. A consumer with a typed decoder of its own
asks the connection to defer PackedForward payloads (``defer_packed``) and
reads them with :func:`split_packed` and :func:`decode_record`, falling back
to :func:`decode_packed`, the reference.
"""

from .connection import ForwardConnection, State
from .decode import decode_packed
from .errors import ForwardError
from .events import (
    NEED_DATA,
    AuthFailed,
    AuthSucceeded,
    EndOfStream,
    Entry,
    Heartbeat,
    Message,
    Mode,
    Signal,
    SkippedMessage,
)
from .handshake import AuthConfig, field_bytes, sha512_hex
from .limits import Limits
from .packed import decode_record, entry_seconds, is_map, split_packed

__all__ = [
    "field_bytes",
    "sha512_hex",
    "NEED_DATA",
    "AuthConfig",
    "AuthFailed",
    "AuthSucceeded",
    "EndOfStream",
    "Entry",
    "ForwardConnection",
    "ForwardError",
    "Heartbeat",
    "Limits",
    "Message",
    "Mode",
    "Signal",
    "SkippedMessage",
    "State",
    "decode_packed",
    "decode_record",
    "entry_seconds",
    "is_map",
    "split_packed",
]
