"""Turning raw record values into clean numbers, durations, timestamps and label strings.

A record comes from msgpack (or from ``json.loads`` of a wrapped line), so any
value may have any type. These helpers accept exactly what is documented and
return ``None`` for everything else: a negative, NaN, infinite, boolean or
implausibly large number is *missing*, never zero and never an exception.
Each is a couple of type checks in the common case (an ``int`` or ``float``).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

_INF = float("inf")

#: Longest numeric string accepted ("18432", "1.5e3"): anything longer is not
#: a number a logger wrote, and ``float()`` of a long string costs its length.
MAX_NUMBER_STRING = 32

#: A request that lasted more than a day is a unit error (nanoseconds logged as
#: milliseconds), not a request: HTTP gateways time out within minutes to hours.
MAX_DURATION_S = 86_400.0

#: The largest context windows in production are ~10M tokens (2025); 100M
#: leaves a margin of ten while keeping a bogus value from wrecking a counter.
MAX_TOKENS = 100_000_000

#: 16 TiB: two orders of magnitude above a whole 8-GPU node's memory today.
MAX_GPU_MEMORY_BYTES = float(2**44)

MIB = float(2**20)
GIB = float(2**30)

_SURROGATES = re.compile("[\ud800-\udfff]")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def nonneg(value: Any) -> float | None:
    """A finite number >= 0 from an int, float or short numeric string; else ``None``.

    ``bool`` is rejected even though it is an ``int`` subclass (``True`` is not 1 token).
    """
    t = type(value)
    if t is int:
        if value < 0:
            return None
        try:
            return float(value)
        except OverflowError:  # an int beyond 1.8e308 (JSON allows it)
            return None
    if t is float:
        return value if 0.0 <= value < _INF else None  # NaN fails both comparisons
    if t is str:
        if len(value) > MAX_NUMBER_STRING:
            return None
        try:
            number = float(value)
        except ValueError:  # also UnicodeEncodeError (a lone surrogate), a ValueError subclass
            return None
        return number if 0.0 <= number < _INF else None
    return None


def seconds(value: Any, per_second: float) -> float | None:
    """A duration in seconds: a number divided by ``per_second`` (1000 for ``*_ms``), at most a day.

    Dividing (not multiplying by 1e-3) gives the float nearest the decimal
    value: 1876 ms is 1.876 s, not 1.8760000000000001.
    """
    number = nonneg(value)
    if number is None:
        return None
    number /= per_second
    return number if number <= MAX_DURATION_S else None


def tokens(value: Any) -> int | None:
    """A token count: a whole number in [0, MAX_TOKENS] (``12.0`` is 12, ``12.5`` is missing)."""
    if type(value) is int:
        return value if 0 <= value <= MAX_TOKENS else None
    number = nonneg(value)
    if number is None or number > MAX_TOKENS or not number.is_integer():
        return None
    return int(number)


def gpu_bytes(value: Any, scale: float) -> float | None:
    """GPU memory in bytes: a number times ``scale`` (MiB for ``*_mb``), at most 16 TiB."""
    number = nonneg(value)
    if number is None:
        return None
    number *= scale
    return number if number <= MAX_GPU_MEMORY_BYTES else None


# Rust's ``Debug`` for ``std::time::Duration`` picks the unit by magnitude:
# "1.234567s", "12.5ms", "850µs" (U+00B5), "3ns". Greek mu and "us" are
# accepted too, for other writers of the same notation. Order matters: every
# unit ends in "s", so the bare "s" comes last.
_DURATION_UNITS = (("ms", 1e3), ("µs", 1e6), ("μs", 1e6), ("us", 1e6), ("ns", 1e9), ("s", 1.0))


def duration_string(value: Any) -> float | None:
    """Seconds from a duration written with a unit (``"1.2s"``, ``"850µs"``); else ``None``."""
    if type(value) is not str or len(value) > MAX_NUMBER_STRING:
        return None
    text = value.strip()
    for suffix, per_second in _DURATION_UNITS:
        if text.endswith(suffix):
            number = text[: -len(suffix)]
            # a digit first: float() would also take "nan", "inf" or "-1"
            return seconds(number, per_second) if number[:1].isdigit() else None
    return None


def label(value: Any, limit: int) -> str:
    """A label-safe string: at most ``limit`` characters, valid UTF-8, stripped.

    ``str`` and ``bytes`` are accepted; anything else is ``""``. A lone
    surrogate (from msgpack's ``surrogateescape`` or a JSON ``\\ud800`` escape)
    becomes U+FFFD, so the value always encodes as UTF-8 for the exposition.
    """
    t = type(value)
    if t is not str:
        if t is bytes:
            value = value[: limit * 4].decode("utf-8", "replace")
        else:
            return ""
    if len(value) > limit:
        value = value[:limit]
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = _SURROGATES.sub("\ufffd", value)
    return value.strip()


def strip_ansi(text: str) -> str:
    """``text`` without ANSI colour sequences (TGI colours its plain logs unless LOG_COLORIZE=1)."""
    return _ANSI.sub("", text) if "\x1b" in text else text


_FRACTION = re.compile(r"\.(\d+)")
_MAX_TIMESTAMP_STRING = 40  # "2025-04-05T10:23:45.123456789+00:00" is 35


def epoch_seconds(value: Any) -> float | None:
    """Seconds since the epoch from a number or an ISO 8601 string; else ``None``.

    Numbers are read by magnitude, because loggers write seconds, milliseconds,
    microseconds or nanoseconds under the same key: above 1e17 nanoseconds,
    above 1e14 microseconds, above 1e11 milliseconds (1e11 s is the year 5138),
    else seconds. A string without a zone is taken as UTC.
    """
    if type(value) is str:
        return iso_seconds(value)
    number = nonneg(value)
    if number is None:
        return None
    if number > 1e17:
        return number / 1e9
    if number > 1e14:
        return number / 1e6
    if number > 1e11:
        return number / 1e3
    return number


def _six_digits(match: re.Match[str]) -> str:
    return "." + match.group(1)[:6].ljust(6, "0")  # Python 3.10 takes exactly 3 or 6 fractional digits


def iso_seconds(text: str) -> float | None:
    """Seconds since the epoch from an ISO 8601 date-time string; else ``None``."""
    if len(text) > _MAX_TIMESTAMP_STRING or len(text) < 10:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        # Python 3.10 refuses "Z" and more than six fractional digits.
        try:
            zoned = text.replace("Z", "+00:00").replace("z", "+00:00")
            moment = datetime.fromisoformat(_FRACTION.sub(_six_digits, zoned))
        except ValueError:
            return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        stamp = moment.timestamp()
    except (OverflowError, ValueError, OSError):
        return None
    return stamp if stamp >= 0.0 else None
