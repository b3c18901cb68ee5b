"""The Fluent Forward protocol (v1), server side, without I/O.

See :class:`ForwardConnection` for the state machine, :mod:`.events` for what
it produces, :class:`Limits` for every bound it enforces and
:mod:`.errors` for what it raises.
"""

from .connection import ForwardConnection, State
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
from .handshake import AuthConfig
from .limits import Limits

__all__ = [
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
]
