"""An optional audit of records for likely secrets and personal data: which kinds, never the text.

Inference-server logs are written by people who sometimes log a request's
headers or a user's prompt; the article's last recommendation is to know
when that happens. :class:`SensitiveScanner` looks at a record's string values
and says which of :data:`KINDS` it found:

- ``api_key``: tokens with a vendor's documented prefix (OpenAI ``sk-``,
  Anthropic ``sk-ant-``, Hugging Face ``hf_``, GitHub ``ghp_``/``gho_``/...
  and ``github_pat_``, GitLab ``glpat-``, Slack ``xox?-``, AWS access key ids
  ``AKIA``/``ASIA``, Google ``AIza``), ``key=value`` text whose key names a
  secret, and any long value under a map key that names one (``api_key``,
  ``password``, ``client_secret``, ``x-api-key``, ...);
- ``bearer_token``: ``Bearer <token>`` (an ``Authorization`` header logged
  whole) and JSON Web Tokens (``eyJ...``.``eyJ...``.``...``);
- ``email``: ``local@domain.tld`` with a letters-only top-level domain;
- ``phone``: Chinese mobile numbers (11 digits, ``1[3-9]``, optional ``+86``),
  E.164 numbers written with their ``+`` (8 to 15 digits, separators allowed),
  and North American ``(415) 555-2671``. Bare digit runs are not phones: they
  are ids and timestamps far more often;
- ``cn_resident_id``: 18-character resident identity numbers (GB 11643-1999)
  whose birth date exists and whose check character (ISO 7064 MOD 11-2) is
  right; a wrong check digit is not counted;
- ``card_number``: 13 to 19 digits (single spaces or dashes between groups
  allowed) with an issuer prefix of Visa, Mastercard, American Express,
  Discover, JCB, Diners or UnionPay, the length that issuer uses, and a valid
  Luhn check digit. A digit run that is a valid resident id is not also a card.

What it never does: keep, return or log the matched text. :meth:`scan`
returns a set of kind names; nothing else leaves this module.

Bounded cost, whatever the record (limits in :class:`ScanLimits`): at most
``max_chars`` characters per record are looked at (each string is cut at
``max_string_chars``), containers are walked to ``max_depth`` and at most
``max_values`` values are visited; a record past a limit is scanned as far as
the limit (``scan`` then also reports ``truncated``). Strings shorter than
:data:`MIN_LENGTH` are skipped: nothing above fits in fewer characters.
The ``kubernetes`` map Fluent Bit adds is not scanned (``ScanLimits.skip_keys``:
the cluster wrote it, not the inference server, and it repeats on every record).
Integers are not scanned (a card or phone number logged as a JSON number is
missed): numbers in these logs are token counts, milliseconds and
timestamps, which would be checked for nothing on every record.

This module is in the bottom floor and imports nothing of the project.
``bench/bench_sensitive.py`` measures it beside the normaliser.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Iterable
from typing import Any

API_KEY, BEARER_TOKEN, EMAIL, PHONE, CN_RESIDENT_ID, CARD_NUMBER = (
    "api_key", "bearer_token", "email", "phone", "cn_resident_id", "card_number")
#: Every kind :meth:`SensitiveScanner.scan` can report, in a stable order (metrics label values).
KINDS: tuple[str, ...] = (API_KEY, BEARER_TOKEN, EMAIL, PHONE, CN_RESIDENT_ID, CARD_NUMBER)
#: Reported, besides kinds, when a record was only scanned up to a limit.
TRUNCATED = "truncated"

#: No pattern above fits in fewer characters (``a@b.cd``, ``sk-`` + 20, 11-digit phone: 6 or more).
MIN_LENGTH = 6


@dataclasses.dataclass(frozen=True)
class ScanLimits:
    """How much of one record is looked at. Defaults: a request log is ~500 characters; a
    logged prompt or a dumped header map a few KiB; 64 KiB per record covers them and bounds
    the cost of a 4 MiB ``log`` line to what 64 KiB costs (0.25 to 0.4 ms on the
    2-core CI machine, bench_sensitive.py)."""

    max_chars: int = 65536
    max_string_chars: int = 16384
    max_depth: int = 8
    max_values: int = 1024
    #: Map keys whose values are not scanned. ``kubernetes``: the metadata Fluent Bit's
    #: kubernetes filter adds is written by the cluster, not logged by the inference server,
    #: is the same on every record of a pod (an owner's e-mail in an annotation would count
    #: on every record), and is most of a record's strings: scanning it cost 6x the rest.
    skip_keys: frozenset[str] = frozenset({"kubernetes"})


# -- patterns -------------------------------------------------------------------------------------------

# Cost: most strings in these logs hold none of this, so each kind is first gated by a test
# that runs at C speed (a substring test, or a pattern that starts with a character class,
# which the regex engine skips through without trying each alternative at each position);
# the full patterns run only where a gate passed. The look-arounds keep a match from
# starting or ending inside a longer token.

#: One pass over the lower-cased text gates both :data:`_API` (vendor prefixes) and
#: :data:`_ASSIGNED` (words a secret's name contains): alternatives that each start with a
#: literal, which the engine turns into a first-character set.
_SECRET_GATE = re.compile(r"sk-|hf_|gh[pousr]_|github_pat_|glpat-|xox|akia|asia|aiza|key|secret|token|passw")
_API = re.compile(
    r"""(?<![A-Za-z0-9_-])
        (?: sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}
          | hf_[A-Za-z0-9]{30,}
          | gh[pousr]_[A-Za-z0-9]{36,}
          | github_pat_[A-Za-z0-9_]{30,}
          | glpat-[A-Za-z0-9_-]{20,}
          | xox[abposr]-[A-Za-z0-9-]{10,}
          | (?:AKIA|ASIA)[0-9A-Z]{16}
          | AIza[0-9A-Za-z_-]{35}
        )(?![A-Za-z0-9_-])""",
    re.VERBOSE,
)
#: Run on the lower-cased text: no IGNORECASE, so every alternative starts with a literal.
_ASSIGNED = re.compile(
    r"""(?:api[_-]?key|apikey|secret[_-]?key|client[_-]?secret|access[_-]?token|auth[_-]?token|password|passwd)
        ["']?\s*[:=]\s*["']?[^\s"'\x00,;*]{12,}""",
    re.VERBOSE,
)
#: Run on the lower-cased text.
_BEARER = re.compile(r"bearer\s+[a-z0-9\-._~+/]{16,}")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
#: An e-mail address's domain, matched from each ``@`` (cheaper than scanning for local parts:
#: image digests ``name@sha256:...`` are the ``@`` these records hold most).
_EMAIL_DOMAIN = re.compile(r"@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])")
#: Besides letters and digits of any script (internationalised addresses, RFC 6531).
_LOCAL_PUNCTUATION = frozenset("._%+-")
#: Gate of the numeric kinds: a run of 11 or more digits and separators (a Chinese mobile
#: number, the shortest, has 11 digits). Starts with a character class: skipped through fast.
#: No dot: dotted numbers are addresses, versions and decimals here (``10.244.1.23``), and
#: a run must be longer than a date (``2025-04-05``), the most common run in these records.
_NUMERIC_RUN = re.compile(r"[0-9][0-9 ()+-]{9,}")
_NUMERIC = re.compile(
    r"""(?P<digits>
        (?<![\w+])\d(?:[ -]?\d){12,18}(?!\w)
    )
  | (?P<phone>
        (?<![\w+])(?:\+?86[ -]?)?1[3-9]\d{9}(?!\w)
      | (?<![\w+])\+[1-9](?:[ -]?\d){7,14}(?!\w)
      | (?<!\w)\(\d{3}\)\ ?\d{3}-\d{4}(?!\w)
    )
  | (?P<cn_id>
        (?<![A-Za-z0-9])[1-8]\d{16}[0-9Xx](?![A-Za-z0-9])
    )""",
    re.VERBOSE,
)

#: Map keys whose value is a secret whatever it looks like, as words.
SECRET_KEY_WORDS: tuple[tuple[str, ...], ...] = (
    ("api", "key"), ("apikey",), ("x", "api", "key"), ("secret",), ("secret", "key"), ("client", "secret"),
    ("password",), ("passwd",), ("access", "token"), ("auth", "token"), ("refresh", "token"),
    ("private", "key"), ("authorization",), ("proxy", "authorization"),
)


def _spellings(words: tuple[str, ...]) -> set[str]:
    """snake_case, kebab-case, camelCase, PascalCase, UPPER_SNAKE, Title-Kebab and X-API-Key of ``words``."""
    title = [w.capitalize() for w in words]
    return {"_".join(words), "-".join(words), words[0] + "".join(title[1:]), "".join(title),
            "_".join(words).upper(), "-".join(words).upper(), "-".join(title),
            "-".join(w.upper() if w == "api" else w.capitalize() for w in words)}


#: Every spelling of :data:`SECRET_KEY_WORDS` looked for: an exact set lookup per key,
#: no lower-casing per key (the walk visits every key of every record).
SECRET_KEYS: frozenset[str] = frozenset(s for words in SECRET_KEY_WORDS for s in _spellings(words))
#: A value under a secret key counts from this length: shorter ones are placeholders
#: (``""``, ``"***"``, ``"<redacted>"``, ``"none"``).
SECRET_VALUE_MIN = 12
_REDACTED = re.compile(r"[*x.#<>\[\]]+|<?redacted>?|\[?filtered\]?|none|null", re.IGNORECASE)

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def cn_resident_id_valid(text: str) -> bool:
    """Whether 18 characters are a resident identity number: real birth date, right check character."""
    if len(text) != 18 or not text[:17].isdigit() or text[0] not in "12345678":
        return False
    try:
        born = datetime.date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
    except ValueError:
        return False
    if not (1800 <= born.year) or born > datetime.date.today():
        return False
    total = sum(int(d) * w for d, w in zip(text, _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == text[17].upper()


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _issuer_length_ok(digits: str) -> bool:
    """An issuer prefix (IIN) that issues cards of this length."""
    n = len(digits)
    two, four, six = int(digits[:2]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4":
        return n in (13, 16, 19)  # Visa
    if 51 <= two <= 55 or 222100 <= six <= 272099:
        return n == 16  # Mastercard
    if two in (34, 37):
        return n == 15  # American Express
    if four == 6011 or two == 65 or 644 <= int(digits[:3]) <= 649:
        return 16 <= n <= 19  # Discover
    if two == 62:
        return 16 <= n <= 19  # UnionPay
    if 3528 <= four <= 3589:
        return 16 <= n <= 19  # JCB
    if two in (36, 38, 39) or 300 <= int(digits[:3]) <= 305:
        return 14 <= n <= 19  # Diners Club
    return False


def card_number_valid(text: str) -> bool:
    """Digits (spaces and dashes ignored) of a card number: issuer, length and Luhn check."""
    digits = text.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and digits.isdigit() and _issuer_length_ok(digits) and luhn_valid(digits)


def kinds_in(text: str) -> set[str]:
    """The kinds found in one string."""
    found: set[str] = set()
    lower = text.lower()
    if _SECRET_GATE.search(lower) and (_API.search(text) or _ASSIGNED.search(lower)):
        found.add(API_KEY)
    if ("bearer" in lower and _BEARER.search(lower)) or ("eyJ" in text and _JWT.search(text)):
        found.add(BEARER_TOKEN)
    at = text.find("@", 1)
    while at > 0:
        before = text[at - 1]
        if (before.isalnum() or before in _LOCAL_PUNCTUATION) and _EMAIL_DOMAIN.match(text, at):
            found.add(EMAIL)
            break
        at = text.find("@", at + 1)
    for run in _NUMERIC_RUN.finditer(text):
        # Searched in the whole string between the run's ends, so that the look-arounds
        # see the characters around the run (a letter right before it makes it no number).
        # From one character before the run: the ``+`` or ``(`` a phone number starts with.
        for m in _NUMERIC.finditer(text, max(0, run.start() - 1), min(len(text), run.end() + 1)):
            kind = m.lastgroup
            value = m.group()
            if kind == "phone":
                found.add(PHONE)
            elif len(value) == 18 and cn_resident_id_valid(value):
                found.add(CN_RESIDENT_ID)  # an 18-digit id, or one that ends in X
            elif kind == "digits" and card_number_valid(value):
                found.add(CARD_NUMBER)
    return found


class SensitiveScanner:
    """Scans records; :meth:`scan` returns the kinds found (and ``truncated`` past a limit).

    The record's strings are gathered first and scanned as one text joined by
    NUL characters (no pattern matches across a NUL: it is neither a word
    character, a digit nor a separator the patterns allow), so the fixed cost
    of the gates is paid once per record, not once per value.
    """

    def __init__(self, limits: ScanLimits | None = None) -> None:
        self.limits = limits or ScanLimits()

    def scan(self, record: Any) -> frozenset[str]:
        """The kinds of :data:`KINDS` found in ``record``'s string values (and secret-named keys)."""
        walk = _Walk(self.limits)
        walk.visit(record, 0)
        found = kinds_in("\0".join(walk.texts)) if walk.texts else set()
        if walk.secret_key:
            found.add(API_KEY)
        if walk.truncated:
            found.add(TRUNCATED)
        return frozenset(found)

    def scan_many(self, records: Iterable[Any]) -> dict[str, int]:
        """How many of ``records`` carry each kind (a record with two e-mails counts once)."""
        counts = dict.fromkeys((*KINDS, TRUNCATED), 0)
        for record in records:
            for kind in self.scan(record):
                counts[kind] += 1
        return counts


class _Walk:
    """One record's strings, within the limits."""

    __slots__ = ("budget", "limits", "secret_key", "texts", "truncated", "values")

    def __init__(self, limits: ScanLimits) -> None:
        self.limits = limits
        self.texts: list[str] = []
        self.budget = limits.max_chars
        self.values = limits.max_values
        self.truncated = False
        self.secret_key = False

    def visit(self, value: Any, depth: int) -> None:
        if isinstance(value, str):
            self.text(value)
            return
        if not isinstance(value, (dict, list, tuple)):
            return
        if depth >= self.limits.max_depth:
            self.truncated = True
            return
        texts = self.texts
        items: Any = value
        if isinstance(value, dict):
            skip = self.limits.skip_keys
            items = value.values() if skip.isdisjoint(value) else [v for k, v in value.items() if k not in skip]
            if not self.secret_key and not SECRET_KEYS.isdisjoint(value):
                for key in SECRET_KEYS.intersection(value):
                    item = value[key]
                    # An Authorization header's "Bearer ..." is a bearer token, found as such in the text.
                    if type(item) is str and len(item) >= SECRET_VALUE_MIN and not _REDACTED.fullmatch(item) \
                            and item[:7].lower() != "bearer ":
                        self.secret_key = True
        self.values -= len(items)
        if self.values < 0:
            self.truncated = True
            return
        for item in items:
            if type(item) is str:
                # Inlined text(): this loop is most of the walk's cost.
                n = len(item)
                if n >= MIN_LENGTH:
                    if n > self.limits.max_string_chars or n >= self.budget:
                        self.text(item)
                        if self.budget <= 0:
                            return
                    else:
                        self.budget -= n + 1
                        texts.append(item)
            elif isinstance(item, (dict, list, tuple)):
                self.visit(item, depth + 1)
                if self.budget <= 0 or self.values < 0:
                    return

    def text(self, value: str) -> None:
        if len(value) < MIN_LENGTH:
            return
        cut = min(self.limits.max_string_chars, self.budget)
        if cut <= 0:
            self.truncated = True
            return
        if len(value) > cut:
            value = value[:cut]
            self.truncated = True
        self.budget -= len(value) + 1
        self.texts.append(value)

