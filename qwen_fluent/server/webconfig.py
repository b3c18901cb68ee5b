"""The Prometheus exporter toolkit's web configuration file, for ``/metrics``: TLS, basic auth, headers.

Every Go exporter (node_exporter, blackbox_exporter, Prometheus itself) reads
one YAML file given with ``--web.config.file`` in the format of
``github.com/prometheus/exporter-toolkit`` (``docs/web-configuration.md``,
``web/tls_config.go``, ``web/handler.go``). ``qwen-fluent serve
--web-config-file FILE`` reads the same file with the same meaning, so one
file, one Secret and one Prometheus ``scrape_config`` (``scheme: https``,
``tls_config``, ``basic_auth``) serve the whole fleet. What is matched:

- the keys: ``tls_server_config`` (``cert_file``/``key_file`` or inline
  ``cert``/``key``, ``client_auth_type``, ``client_ca_file``/``client_ca``,
  ``client_allowed_sans``, ``min_version``/``max_version`` with the Go names
  ``TLS10`` .. ``TLS13``, ``cipher_suites`` with Go's names,
  ``prefer_server_cipher_suites``, ``curve_preferences``),
  ``http_server_config`` (``http2``, ``headers``), ``basic_auth_users``,
  ``rate_limit`` (``interval``, ``burst``);
- strictness: the toolkit decodes with ``yaml.UnmarshalStrict``, so an unknown
  key, a duplicate key or a wrong type is an error, here too;
- relative paths are relative to the file's directory (``SetDirectory``);
- TLS is on when any TLS key is set, and then both a certificate and a key are
  required; client CAs without a client-auth policy are refused; the defaults
  are TLS 1.2 to 1.3;
- only five response headers may be set, three of them only to known values
  (``extraHTTPHeaders``): anything else is refused at start;
- every password hash must be a bcrypt hash (``validateUsers`` runs
  ``bcrypt.Cost`` on each);
- an unknown user is checked against a fixed dummy hash, so that a wrong user
  name takes as long as a wrong password (no user enumeration by timing);
- verified (user, hash, password) results are cached, at most
  :data:`AUTH_CACHE_SIZE` (the toolkit's ``cacheSize``, 100), so a scrape every
  15 s costs one bcrypt per password change, not one per scrape; bcrypt runs
  one at a time (the toolkit's ``bcryptMtx``), since it is CPU work that only
  slows every other request when run in parallel;
- the file is read again when it changes, and so are the certificate, key and
  CA files it names: a rotated certificate is served on the next connection.
  The toolkit re-reads everything on every request and every handshake; here
  the files are ``stat``-ed (microseconds) and re-read only when one changed,
  which serves the same bytes. While a changed file is invalid, requests are
  refused (500, or the connection closed for TLS), as the toolkit does; they
  are never served with the old credentials.

Where this differs, and why:

- ``client_auth_type: RequestClientCert`` and ``RequireAnyClientCert`` accept a
  client certificate *without verifying it*; the toolkit's own docs call every
  value but ``RequireAndVerifyClientCert`` insecure. Python's ``ssl`` module
  cannot ask for a certificate without verifying it, so these are refused at
  start with a message that names the values that work.
- ``curve_preferences``: Python's ``ssl`` can set one group, not a list, so the
  first curve listed is the only one offered (stricter than asked, never
  weaker); a warning says so when more are listed.
- ``http2`` is accepted and has no effect: the endpoint speaks HTTP/1.1, which
  Prometheus falls back to through ALPN.
- ``cipher_suites`` names of TLS 1.3 suites are accepted and ignored, as Go
  ignores them (TLS 1.3 suites are not configurable there either).
- A string key must be a YAML string: the Go decoder turns ``123`` into
  ``"123"``, PyYAML gives an integer whose original spelling (``0123``) is lost,
  so it is refused with "quote it".
- ``/healthz`` and ``/readyz`` answer without basic auth (see
  :mod:`qwen_fluent.server.http`): the toolkit wraps every path of the exporter
  but kubelet probes would then need the password in the Pod spec.
  ``docs/web-config.md`` explains.

YAML: the file is parsed with PyYAML's ``SafeLoader`` (no Python objects, no
tags), imported only when ``--web-config-file`` is given; bcrypt (PyPI
``bcrypt``, pyca's binding of OpenBSD's implementation) only when the file
has users. A missing one is a one-line error that says what to install.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import logging
import os
import re
import ssl
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

#: Verified (user, hash, password) results kept, the toolkit's ``cacheSize``.
#: A handful of scrapers use a handful of passwords; 100 keeps them all while
#: an attacker trying passwords can only churn it (each entry is 33 bytes of
#: key plus a bool: the cache holds at most a few KiB). Keys are SHA-256 digests,
#: so no password stays in memory in clear, unlike the toolkit's hex keys.
AUTH_CACHE_SIZE = 100

#: Largest web configuration file read, 1 MiB: a file with a few users and
#: inline PEM certificates is a few KiB; this only stops a wrong path (a log,
#: a device) from being read whole into memory.
MAX_FILE_BYTES = 1 << 20

#: bcrypt reads at most 72 bytes of a password; Go's ``CompareHashAndPassword``
#: uses the first 72 and ignores the rest, pyca's ``checkpw`` raises instead.
#: Cutting here gives the Go result for the same password.
BCRYPT_MAX_PASSWORD = 72

#: Headers the file may set and the values they may take (empty: any value):
#: the toolkit's ``extraHTTPHeaders``, private there "to ensure consistency in
#: the Prometheus ecosystem".
ALLOWED_HEADERS: Mapping[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}

TLS_VERSIONS: Mapping[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

#: Go's curve names (``web/tls_config.go``'s ``curves``) -> OpenSSL's.
CURVES: Mapping[str, str] = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
}

#: Go's names of the suites ``tls.CipherSuites()`` lists (the ones Go calls
#: secure, which are the only ones the toolkit accepts) -> OpenSSL's names.
#: The TLS 1.3 ones map to ``None``: Go accepts and ignores them.
CIPHER_SUITES: Mapping[str, str | None] = {
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}

#: The client-auth policies that verify what they accept -> ``ssl`` verify modes.
CLIENT_AUTH: Mapping[str, ssl.VerifyMode] = {
    "": ssl.CERT_NONE,
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
#: Go policies that take a client certificate without verifying it: refused (module docstring).
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")

#: A bcrypt hash: ``$2a$``, ``$2b$`` or ``$2y$`` (htpasswd writes 2y), a
#: two-digit cost of 4 to 31, 53 characters of salt and digest in bcrypt's
#: base64 alphabet. Go's ``bcrypt.Cost`` also takes the 1999 prefix ``$2$``,
#: which pyca's bcrypt cannot verify: refused at start rather than never matching.
_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_BCRYPT_MIN_COST, _BCRYPT_MAX_COST = 4, 31

#: Go's ``time.ParseDuration`` units.
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|μs|ms|s|m|h)")

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
_TLS_KEYS = ("cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type", "client_ca_file",
             "cipher_suites", "curve_preferences", "min_version", "max_version", "prefer_server_cipher_suites",
             "client_allowed_sans")
_HTTP_KEYS = ("http2", "headers")
_RATE_KEYS = ("interval", "burst")


class WebConfigError(ValueError):
    """The web configuration file cannot be used; the message is one line that names the file and the key."""


class MissingDependency(WebConfigError):
    """PyYAML or bcrypt is not installed; the message says what to install."""


@dataclasses.dataclass(frozen=True)
class TLSServerConfig:
    """``tls_server_config``, paths already joined with the file's directory."""

    cert_file: str = ""
    key_file: str = ""
    cert: str = ""
    key: str = dataclasses.field(default="", repr=False)
    client_ca_file: str = ""
    client_ca: str = ""
    client_auth_type: str = ""
    client_allowed_sans: tuple[str, ...] | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        """TLS is on when any TLS key is set (the toolkit's ``IsEnabled``)."""
        return bool(self.cert_file or self.cert or self.key_file or self.key or self.client_ca_file
                    or self.client_ca or self.client_auth_type)

    def files(self) -> tuple[str, ...]:
        """The files this configuration reads, for noticing that one changed."""
        return tuple(f for f in (self.cert_file, self.key_file, self.client_ca_file) if f)


@dataclasses.dataclass(frozen=True)
class RateLimit:
    """``rate_limit``: a token bucket of ``burst`` tokens refilled one per ``interval`` seconds."""

    interval: float
    burst: int


@dataclasses.dataclass(frozen=True)
class WebConfig:
    """One parsed, validated web configuration file."""

    path: str
    tls: TLSServerConfig
    #: user -> bcrypt hash (bytes, as bcrypt takes it).
    users: Mapping[str, bytes] = dataclasses.field(default_factory=dict, repr=False)
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    http2: bool = True
    rate_limit: RateLimit | None = None

    def files(self) -> tuple[str, ...]:
        return (self.path, *self.tls.files())

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server context for ``tls_server_config``; ``None`` when TLS is off. Reads the PEM files."""
        return _ssl_context(self.tls, self.path) if self.tls.enabled else None


# -- parsing -----------------------------------------------------------------------------------------


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise MissingDependency("--web-config-file needs PyYAML: pip install pyyaml "
                                "(or pip install 'qwen-fluent[web]')") from None
    return yaml


def _strict_loader(yaml: Any) -> type:
    """PyYAML's safe loader, refusing duplicate keys as Go's ``UnmarshalStrict`` does."""

    class StrictLoader(yaml.SafeLoader):  # type: ignore[misc, name-defined]
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: let the base class say so
                    duplicate = False
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                if not isinstance(key, (list, dict)):
                    seen.add(key)
            return super().construct_mapping(node, deep)

    return StrictLoader


def _section(data: Mapping[str, Any], name: str, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    value = data.get(name)
    if value is None:  # absent, or a key with nothing under it: the defaults
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(f"{where}: {name} must be a mapping, got {type(value).__name__}")
    _known(value, keys, f"{where}: {name}")
    return value


def _known(table: Mapping[Any, Any], keys: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in keys:
            raise WebConfigError(f"{where}: unknown key {key!r} (known: {', '.join(keys)})")


def _string(table: Mapping[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WebConfigError(f"{where}: {key} must be a string, got {value!r} (quote it)")
    return value


def _strings(table: Mapping[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WebConfigError(f"{where}: {key} must be a list of strings, got {value!r}")
    return tuple(value)


def _bool(table: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = table.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise WebConfigError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def _join(directory: str, path: str) -> str:
    """``config_util.JoinDir``: a relative path is relative to the file's directory."""
    return path if not path or os.path.isabs(path) else os.path.join(directory, path)


def parse_duration(text: Any, where: str) -> float:
    """Seconds of a Go duration (``"1m30s"``, ``"250ms"``, ``"0"``); an integer is nanoseconds, as yaml.v2 reads it."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise WebConfigError(f"{where}: not a duration: {text!r}")
    if isinstance(text, int):
        return text * 1e-9
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    total, pos = 0.0, 0
    for m in _DURATION.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(body) or not body:
        raise WebConfigError(f"{where}: not a duration: {text!r} (write it as Go does: 1s, 500ms, 1m30s)")
    return -total if text.startswith("-") else total


def parse_web_config(text: str, path: str) -> WebConfig:
    """Parse and validate the file's ``text``; relative paths are taken from ``path``'s directory.

    Reads no certificate: :func:`load_web_config` also builds the TLS context.
    """
    yaml = _yaml()
    where = f"web config {path}"
    try:
        data = yaml.load(text, Loader=_strict_loader(yaml))  # a SafeLoader subclass: no Python objects
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        raise WebConfigError(f"{where} is not valid YAML: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise WebConfigError(f"{where}: expected a mapping of {', '.join(_TOP_KEYS)}, got {type(data).__name__}")
    _known(data, _TOP_KEYS, where)
    directory = os.path.dirname(os.path.abspath(path))

    t = _section(data, "tls_server_config", _TLS_KEYS, where)
    tw = f"{where}: tls_server_config"
    tls = TLSServerConfig(
        cert_file=_join(directory, _string(t, "cert_file", tw)),
        key_file=_join(directory, _string(t, "key_file", tw)),
        cert=_string(t, "cert", tw),
        key=_string(t, "key", tw),
        client_ca_file=_join(directory, _string(t, "client_ca_file", tw)),
        client_ca=_string(t, "client_ca", tw),
        client_auth_type=_string(t, "client_auth_type", tw),
        client_allowed_sans=_strings(t, "client_allowed_sans", tw),
        min_version=_string(t, "min_version", tw) or "TLS12",
        max_version=_string(t, "max_version", tw) or "TLS13",
        cipher_suites=_strings(t, "cipher_suites", tw) or (),
        prefer_server_cipher_suites=_bool(t, "prefer_server_cipher_suites", True, tw),
        curve_preferences=_strings(t, "curve_preferences", tw) or (),
    )
    _check_tls(tls, tw)

    h = _section(data, "http_server_config", _HTTP_KEYS, where)
    hw = f"{where}: http_server_config"
    headers = h.get("headers") or {}
    if not isinstance(headers, dict):
        raise WebConfigError(f"{hw}: headers must be a mapping, got {headers!r}")
    for name, value in headers.items():
        if name not in ALLOWED_HEADERS:
            raise WebConfigError(f"{hw}: HTTP header {name!r} can not be configured "
                                 f"(only {', '.join(ALLOWED_HEADERS)})")
        if not isinstance(value, str):
            raise WebConfigError(f"{hw}: header {name} must be a string, got {value!r} (quote it)")
        allowed = ALLOWED_HEADERS[name]
        if allowed and value not in allowed:
            raise WebConfigError(f"{hw}: invalid value for {name}: expected one of {list(allowed)}, got {value!r}")

    users_table = data.get("basic_auth_users") or {}
    if not isinstance(users_table, dict):
        raise WebConfigError(f"{where}: basic_auth_users must be a mapping of user: bcrypt hash")
    users: dict[str, bytes] = {}
    for user, hashed in users_table.items():
        if not isinstance(user, str):
            raise WebConfigError(f"{where}: basic_auth_users: user name {user!r} must be a string (quote it)")
        if not isinstance(hashed, str):
            raise WebConfigError(f"{where}: basic_auth_users: {user}'s password must be a bcrypt hash string")
        m = _BCRYPT.fullmatch(hashed)
        if m is None or not (_BCRYPT_MIN_COST <= int(m.group(1)) <= _BCRYPT_MAX_COST):
            # Never echo the value: it may be a password written in clear by mistake.
            raise WebConfigError(f"{where}: basic_auth_users: {user}'s password is not a bcrypt hash "
                                 "(make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')")
        users[user] = hashed.encode("ascii")

    r = _section(data, "rate_limit", _RATE_KEYS, where)
    rate_limit = None
    if r:
        interval = parse_duration(r.get("interval", 0), f"{where}: rate_limit: interval")
        burst = r.get("burst", 0)
        if isinstance(burst, bool) or not isinstance(burst, int):
            raise WebConfigError(f"{where}: rate_limit: burst must be an integer, got {burst!r}")
        if interval < 0:
            raise WebConfigError(f"{where}: rate_limit: interval must not be negative")
        if interval > 0:
            # Go's limiter with burst 0 refuses every request; a file saying so is a mistake, said here.
            if burst < 1:
                raise WebConfigError(f"{where}: rate_limit: burst must be at least 1 when interval is set "
                                     "(0 would refuse every request)")
            rate_limit = RateLimit(interval, burst)

    return WebConfig(path=path, tls=tls, users=users, headers=dict(headers),
                     http2=_bool(h, "http2", True, hw), rate_limit=rate_limit)


def _check_tls(tls: TLSServerConfig, where: str) -> None:
    """What the toolkit refuses before reading any certificate."""
    if not tls.enabled:
        return
    if tls.cert_file and tls.cert:
        raise WebConfigError(f"{where}: give cert or cert_file, not both")
    if tls.key_file and tls.key:
        raise WebConfigError(f"{where}: give key or key_file, not both")
    if tls.client_ca_file and tls.client_ca:
        raise WebConfigError(f"{where}: give client_ca or client_ca_file, not both")
    if not (tls.cert_file or tls.cert):
        raise WebConfigError(f"{where}: missing one of cert or cert_file")
    if not (tls.key_file or tls.key):
        raise WebConfigError(f"{where}: missing one of key or key_file")
    if tls.client_auth_type in UNVERIFIED_CLIENT_AUTH:
        raise WebConfigError(
            f"{where}: client_auth_type {tls.client_auth_type} accepts client certificates without verifying "
            "them and is not supported; use RequireAndVerifyClientCert (or VerifyClientCertIfGiven)")
    if tls.client_auth_type not in CLIENT_AUTH:
        raise WebConfigError(f"{where}: invalid client_auth_type {tls.client_auth_type!r} "
                             f"(one of {', '.join(k for k in CLIENT_AUTH if k)})")
    if (tls.client_ca_file or tls.client_ca) and CLIENT_AUTH[tls.client_auth_type] == ssl.CERT_NONE:
        raise WebConfigError(f"{where}: client CA's have been configured without a client_auth_type")
    for key in ("min_version", "max_version"):
        if getattr(tls, key) not in TLS_VERSIONS:
            raise WebConfigError(f"{where}: unknown TLS version {getattr(tls, key)!r} in {key} "
                                 f"(one of {', '.join(TLS_VERSIONS)})")
    if TLS_VERSIONS[tls.min_version] > TLS_VERSIONS[tls.max_version]:
        raise WebConfigError(f"{where}: min_version {tls.min_version} is above max_version {tls.max_version}")
    for suite in tls.cipher_suites:
        if suite not in CIPHER_SUITES:
            raise WebConfigError(f"{where}: unknown cipher {suite!r}")
    for curve in tls.curve_preferences:
        if curve not in CURVES:
            raise WebConfigError(f"{where}: unknown curve {curve!r} (one of {', '.join(CURVES)})")


def _ssl_context(tls: TLSServerConfig, path: str) -> ssl.SSLContext:
    """The server-side context; :class:`WebConfigError` naming the file OpenSSL refuses."""
    where = f"web config {path}: tls_server_config"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(["http/1.1"])  # no HTTP/2 here; a client offering h2 falls back
    _load_pair(ctx, tls, where)
    suites = [CIPHER_SUITES[s] for s in tls.cipher_suites if CIPHER_SUITES[s]]
    if suites:
        try:
            ctx.set_ciphers(":".join(s for s in suites if s))
        except ssl.SSLError as exc:
            raise WebConfigError(f"{where}: this OpenSSL supports none of cipher_suites: {exc.reason}") from None
    if tls.curve_preferences:
        if len(tls.curve_preferences) > 1:
            log.warning("%s: curve_preferences: only %s is offered (Python's ssl sets one curve, not a list)",
                        where, tls.curve_preferences[0])
        ctx.set_ecdh_curve(CURVES[tls.curve_preferences[0]])
    mode = CLIENT_AUTH[tls.client_auth_type]
    if mode != ssl.CERT_NONE:
        try:
            if tls.client_ca_file:
                ctx.load_verify_locations(cafile=tls.client_ca_file)
            elif tls.client_ca:
                ctx.load_verify_locations(cadata=tls.client_ca)
            else:  # Go verifies against the system roots when no client CA is given
                ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        except FileNotFoundError:
            raise WebConfigError(f"{where}: client_ca_file {tls.client_ca_file} does not exist") from None
        except OSError as exc:
            raise WebConfigError(f"{where}: cannot read client_ca_file {tls.client_ca_file}: "
                                 f"{exc.strerror or exc}") from None
        except (ssl.SSLError, ValueError):
            what = f"client_ca_file {tls.client_ca_file}" if tls.client_ca_file else "client_ca"
            raise WebConfigError(f"{where}: {what} is not a PEM CA certificate") from None
        ctx.verify_mode = mode
    return ctx


def _load_pair(ctx: ssl.SSLContext, tls: TLSServerConfig, where: str) -> None:
    """Load the certificate and key, from files or inline PEM; an error names which one fails."""
    for key in ("cert_file", "key_file"):
        file = getattr(tls, key)
        if file:
            try:
                with open(file, "rb"):
                    pass
            except OSError as exc:
                raise WebConfigError(f"{where}: failed to read {key} ({file}): {exc.strerror or exc}") from None
    with tempfile.TemporaryDirectory(prefix="qwen-fluent-web-") as tmp:  # mode 0700: inline key stays private
        cert_file, key_file = tls.cert_file, tls.key_file
        for text, name in ((tls.cert, "cert.pem"), (tls.key, "key.pem")):
            if text:
                file = os.path.join(tmp, name)
                fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                if name == "cert.pem":
                    cert_file = file
                else:
                    key_file = file
        cert_name = tls.cert_file or "cert"
        key_name = tls.key_file or "key"
        try:
            # A throwaway context, only to tell a bad certificate from a bad key (OpenSSL's own
            # error names neither); never the server's, whose trust store is for client CAs.
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert_file)
        except (ssl.SSLError, ValueError):
            raise WebConfigError(f"{where}: {cert_name} is not a PEM certificate") from None
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, ValueError):
            raise WebConfigError(f"{where}: {key_name} is not the PEM private key of {cert_name}") from None


def load_web_config(path: str) -> tuple[WebConfig, ssl.SSLContext | None]:
    """Read, parse and validate the file, and build its TLS context (what the toolkit's ``Validate`` checks).

    Raises :class:`WebConfigError` with one line naming the file and what is wrong.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise WebConfigError(f"web config file {path!r} not found") from None
    except OSError as exc:
        raise WebConfigError(f"cannot read web config file {path!r}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise WebConfigError(f"web config file {path!r} is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WebConfigError(f"web config file {path!r} is not UTF-8 text") from None
    config = parse_web_config(text, path)
    return config, config.ssl_context()


# -- serving -----------------------------------------------------------------------------------------


def _bcrypt() -> Any:
    try:
        import bcrypt
    except ImportError:
        raise MissingDependency("basic_auth_users in the web config needs bcrypt: pip install bcrypt "
                                "(or pip install 'qwen-fluent[web]')") from None
    return bcrypt


class BasicAuth:
    """Checks ``Authorization: Basic`` against the file's bcrypt hashes, as the toolkit's handler does.

    Thread-safe: the HTTP server calls :meth:`check` from one thread per connection.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._bcrypt = _bcrypt()
        self.users = dict(users)
        # The dummy hash for unknown users has the highest cost among the real ones: a wrong user name
        # then costs what a wrong password costs. (The toolkit's fixed cost-10 dummy is faster than a
        # cost-12 user's hash, which tells an attacker which names exist.) One hash at start.
        cost = max(int(h[4:6]) for h in self.users.values())  # b"$2y$10$...": the cost is bytes 4-5
        self._dummy = self._bcrypt.hashpw(os.urandom(16).hex().encode(), self._bcrypt.gensalt(cost))
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()
        #: bcrypt comparisons run (cache misses), for tests and the log.
        self.verifications = 0

    def check(self, header: str | None) -> str | None:
        """The authenticated user for an ``Authorization`` header value, or ``None``."""
        credentials = parse_basic(header)
        if credentials is None:
            return None
        user, password = credentials
        hashed = self.users.get(user)
        known = hashed is not None
        if hashed is None:
            hashed = self._dummy
        password = password[:BCRYPT_MAX_PASSWORD]
        key = hashlib.sha256(b"\0".join((user.encode("utf-8", "surrogateescape"), hashed, password))).digest()
        with self._cache_lock:
            ok = self._cache.get(key)
            if ok is not None:
                self._cache.move_to_end(key)
        if ok is None:
            with self._bcrypt_lock:
                self.verifications += 1
                try:
                    ok = bool(self._bcrypt.checkpw(password, hashed))
                except ValueError:  # a NUL byte in the password: bcrypt cannot take it
                    ok = False
            ok = ok and known
            with self._cache_lock:
                self._cache[key] = ok
                while len(self._cache) > AUTH_CACHE_SIZE:
                    self._cache.popitem(last=False)
        return user if ok and known else None

    @property
    def cached(self) -> int:
        return len(self._cache)


def parse_basic(header: str | None) -> tuple[str, bytes] | None:
    """``(user, password)`` of a ``Basic`` ``Authorization`` value, as Go's ``Request.BasicAuth`` reads it."""
    if not header or len(header) < 6 or header[:6].lower() != "basic ":
        return None
    import base64
    import binascii

    try:
        decoded = base64.b64decode(header[6:], validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user.decode("utf-8", "surrogateescape"), password


class TokenBucket:
    """``rate_limit``: ``burst`` requests at once, then one per ``interval`` (Go's ``rate.Limiter``)."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._tokens = float(limit.burst)
        self._at = clock()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.limit.burst), self._tokens + (now - self._at) / self.limit.interval)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


def allowed_san(cert: Mapping[str, Any] | None, allowed: tuple[str, ...]) -> bool:
    """Whether a verified peer certificate (``getpeercert()``) has a SAN in ``allowed``.

    Go compares DNS names, e-mail addresses, IP addresses (in Go's spelling) and
    URIs; IP addresses are compared as addresses here, so ``::1`` matches however
    OpenSSL spells it.
    """
    if not cert:
        return False
    allowed_set = set(allowed)
    allowed_ips = set()
    for value in allowed:
        try:
            allowed_ips.add(ipaddress.ip_address(value))
        except ValueError:
            pass
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "IP Address":
            try:
                if ipaddress.ip_address(value.strip()) in allowed_ips:
                    return True
            except ValueError:
                continue
        elif kind in ("DNS", "email", "URI") and value in allowed_set:
            return True
    return False


@dataclasses.dataclass(frozen=True)
class Active:
    """What the server applies now: the parsed file, its TLS context and its authenticator."""

    config: WebConfig
    context: ssl.SSLContext | None
    auth: BasicAuth | None
    limiter: TokenBucket | None


def _signature(paths: tuple[str, ...]) -> tuple[Any, ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            out.append((path, exc.errno))
        else:
            out.append((path, st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


class WebConfigWatcher:
    """The web configuration as it is now: loaded at start, loaded again when a file it reads changes.

    :meth:`current` returns the :class:`Active` configuration, or raises
    :class:`WebConfigError` while the changed file is invalid (requests are
    then refused, as the toolkit refuses them). Whether TLS is on is decided
    at start (:attr:`tls`), as in the toolkit: a file that turns it on or off
    later is refused until a restart.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        config, context = load_web_config(path)
        self._active = self._activate(config, context, None)
        self._signature = _signature(config.files())
        self._error: WebConfigError | None = None
        self._lock = threading.Lock()
        self.tls = context is not None
        #: Times a changed file was loaded, and times it could not be.
        self.reloads = 0
        self.reload_failures = 0

    @staticmethod
    def _activate(config: WebConfig, context: ssl.SSLContext | None, old: Active | None) -> Active:
        auth = None
        if config.users:
            if old is not None and old.auth is not None and old.auth.users == dict(config.users):
                auth = old.auth  # same users: keep the cache and the dummy hash
            else:
                auth = BasicAuth(config.users)
        limiter = None
        if config.rate_limit is not None:
            if old is not None and old.limiter is not None and old.limiter.limit == config.rate_limit:
                limiter = old.limiter
            else:
                limiter = TokenBucket(config.rate_limit)
        return Active(config, context, auth, limiter)

    def current(self) -> Active:
        with self._lock:
            signature = _signature(self._active.config.files())
            if signature != self._signature:
                self._signature = signature
                try:
                    config, context = load_web_config(self.path)
                    if (context is not None) != self.tls:
                        raise WebConfigError(f"web config {self.path}: TLS was turned "
                                             f"{'on' if context else 'off'} in the file; restart to apply it")
                    self._active = self._activate(config, context, self._active)
                    # Files named by the new config may differ from the old ones.
                    self._signature = _signature(config.files())
                    self._error = None
                    self.reloads += 1
                    log.info("web config %s reloaded", self.path)
                except WebConfigError as exc:
                    self.reload_failures += 1
                    self._error = exc
                    log.error("%s; refusing /metrics requests until it is fixed", exc)
            if self._error is not None:
                raise self._error
            return self._active
