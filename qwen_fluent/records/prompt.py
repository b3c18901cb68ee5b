"""System-prompt change events: only a short hash of the prompt travels on.

Recognised shapes (a record that is not a request):

- ``{"event": "system_prompt_changed", "system_prompt_hash": "9f86d081884c7d65..."}``
  (``event`` may also be ``system_prompt_change``, ``system_prompt_updated``,
  ``prompt_changed``, under the key ``event`` or ``event_type``);
- any record carrying ``system_prompt_hash`` (or ``system_prompt_sha256``);
- any record carrying the prompt itself as ``system_prompt`` (a string).

The hash is always 16 lower-case hex characters, the first 16 of a SHA-256,
so that a record carrying the text and one carrying the full SHA-256 hex
digest of the same text give the same value. When both are present the text
wins (our algorithm is known; a supplied hash may be another). A supplied
"hash" that is not hex (8 to 128 characters, optional ``sha256:`` prefix) is
treated as text and hashed: prompt text never reaches a label.
"""

from __future__ import annotations

import hashlib
from typing import Any

#: Values of ``event``/``event_type`` that announce a change.
PROMPT_EVENTS = frozenset(("system_prompt_changed", "system_prompt_change", "system_prompt_updated", "prompt_changed"))
EVENT_KEYS = ("event", "event_type")
HASH_KEYS = ("system_prompt_hash", "system_prompt_sha256")
TEXT_KEY = "system_prompt"
#: Any of these keys makes a (non-request) record a prompt change candidate.
PROMPT_KEYS = frozenset((*HASH_KEYS, TEXT_KEY))

HASH_CHARS = 16  # 64 bits: collisions among a deployment's prompts are out of reach
_HEX = frozenset("0123456789abcdef")
_HASH_LENGTHS = (8, 128)  # CRC32 hex .. SHA-512 hex


def is_prompt_event(record: dict[Any, Any]) -> bool:
    """Whether ``record`` announces a prompt change by its ``event`` value."""
    for key in EVENT_KEYS:
        value = record.get(key)
        if type(value) is str and value in PROMPT_EVENTS:
            return True
    return False


def hash_text(text: str) -> str:
    """The first 16 hex characters of SHA-256 of ``text``'s bytes.

    Text that came off the wire with invalid UTF-8 (surrogate-escaped) hashes
    its original bytes; a lone surrogate from a JSON escape is hashed as its
    UTF-8-like encoding (surrogatepass) rather than failing.
    """
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:HASH_CHARS]


def normalise_hash(value: str) -> str:
    """A supplied hash as 16 lower-case hex characters; non-hex input is hashed as text."""
    candidate = value.strip().lower()
    if candidate.startswith("sha256:"):
        candidate = candidate[7:]
    if _HASH_LENGTHS[0] <= len(candidate) <= _HASH_LENGTHS[1] and _HEX.issuperset(candidate):
        return candidate[:HASH_CHARS]
    return hash_text(value)


def prompt_hash(record: dict[Any, Any]) -> str | None:
    """The prompt hash a change record carries, or ``None`` if it carries no usable one."""
    text = record.get(TEXT_KEY)
    if type(text) is str and text:
        return hash_text(text)
    for key in HASH_KEYS:
        value = record.get(key)
        if type(value) is str and value.strip():
            return normalise_hash(value)
    return None
