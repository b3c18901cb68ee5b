"""The ``qwen-fluent serve`` configuration: a TOML file, environment variables, flags.

Why TOML: the standard library reads it (``tomllib``, Python 3.11+; the small
``tomli`` backport on 3.10), so the configuration costs no dependency; it has
real types (a port is an integer, a key a string), and no YAML surprises
(``no`` becoming ``false``, octal ports). Fluent Bit users know both styles.

Precedence, highest first: command-line flag, ``QWEN_FLUENT_*`` environment
variable, configuration file, built-in default. Every file section maps onto a
dataclass; an unknown section or key is an error that names the known ones,
so a typo never silently falls back to a default.

It lives beside :mod:`qwen_fluent.app`, not in the CLI package: the app takes
an :class:`AppConfig` and the CLI builds one, and the app must not import the
CLI that sits on top of it (see tests/test_layers.py).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from .forward import AuthConfig, Limits
from .server import ServerConfig


class ConfigError(Exception):
    """The configuration is wrong; the message is one line a user can act on."""


@dataclasses.dataclass
class HTTPConfig:
    """The Prometheus endpoint."""

    host: str = "0.0.0.0"
    #: 8000, as in the article this project follows; Prometheus scrapes it.
    port: int = 8000


@dataclasses.dataclass
class AuthSection:
    """Secure-forward authentication; off while ``shared_key`` is empty."""

    shared_key: str = ""
    #: The hostname the server signs its PONG with; defaults to this machine's name.
    self_hostname: str = ""
    #: ``{username = "password"}``; empty turns user authentication off.
    users: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ServerSection:
    """The Forward listener (see :class:`qwen_fluent.server.ServerConfig`)."""

    host: str = "0.0.0.0"
    port: int = 24224
    unix_socket: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    shutdown_grace: float = 10.0
    #: Receiver processes sharing the Forward port (SO_REUSEPORT), merged on
    #: one /metrics. 1: one process, no merge. One per core is the useful most.
    workers: int = 1


@dataclasses.dataclass
class LogSection:
    """The receiver's own log (stderr)."""

    level: str = "info"


@dataclasses.dataclass
class AppConfig:
    """Everything ``serve`` needs, resolved."""

    server: ServerConfig
    http: HTTPConfig
    log_level: str = "info"
    stdout: bool = False
    #: ``serve --workers N`` (see :mod:`qwen_fluent.workers`).
    workers: int = 1
    #: Sections owned by the metrics, records and GPU packages, as their own dataclasses.
    metrics: Any = None
    records: Any = None
    gpu: Any = None


def _section_types() -> dict[str, type]:
    """Each file section and the dataclass it maps onto (imported late: optional pieces)."""
    from .gpu import GpuConfig
    from .metrics import MetricsConfig
    from .records import NormaliserConfig

    return {
        "server": ServerSection,
        "auth": AuthSection,
        "limits": Limits,
        "http": HTTPConfig,
        "log": LogSection,
        "records": NormaliserConfig,
        "metrics": MetricsConfig,
        "gpu": GpuConfig,
    }


#: Flags (and their QWEN_FLUENT_* variables) -> (section, key).
FLAG_KEYS: dict[str, tuple[str, str]] = {
    "host": ("server", "host"),
    "port": ("server", "port"),
    "unix_socket": ("server", "unix_socket"),
    "tls_cert": ("server", "tls_cert"),
    "tls_key": ("server", "tls_key"),
    "tls_client_ca": ("server", "tls_client_ca"),
    "shared_key": ("auth", "shared_key"),
    "self_hostname": ("auth", "self_hostname"),
    "metrics_host": ("http", "host"),
    "metrics_port": ("http", "port"),
    "namespace": ("metrics", "namespace"),
    "log_level": ("log", "level"),
    "workers": ("server", "workers"),
}

ENV_PREFIX = "QWEN_FLUENT_"


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check a value against its default's type; strings (from the environment) are converted."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
            return _BOOLEANS[value.strip().lower()]
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    for kind, noun in ((int, "an integer"), (float, "a number")):
        if type(default) is kind:
            if isinstance(value, str):
                try:
                    return kind(value)
                except ValueError:
                    pass
            # an integer is a fine float; a float is not a fine integer; a bool is neither
            elif type(value) is kind or (kind is float and type(value) is int):
                return kind(value)
            raise ConfigError(f"{where} must be {noun}, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if isinstance(default, (list, tuple)):
        if isinstance(value, str):  # "a, b" from an environment variable
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            return value
        raise ConfigError(f"{where} must be a list, got {value!r}")
    if isinstance(default, dict):
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{where} must be a table, got {value!r}")
    return value  # no default to compare with: the section's own dataclass checks it


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            out[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[field.name] = field.default_factory()  # type: ignore[misc]
        else:
            out[field.name] = None
    return out


def _build(cls: type, values: Mapping[str, Any], section: str) -> Any:
    defaults = _defaults(cls)
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} in [{section}] (known: {', '.join(sorted(defaults))})"
        )
    kwargs = {k: _coerce(v, defaults[k], f"[{section}] {k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{section}]: {exc}") from None


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def load(
    path: str | os.PathLike[str] | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    stdout: bool = False,
) -> AppConfig:
    """Resolve the configuration from file, environment and flags (``None`` flags are unset)."""
    environ = os.environ if environ is None else environ
    types = _section_types()
    raw: dict[str, dict[str, Any]] = {name: {} for name in types}
    if path:
        data = read_file(path)
        for name, table in data.items():
            if name not in types:
                raise ConfigError(f"unknown section [{name}] in {path} (known: {', '.join(sorted(types))})")
            if not isinstance(table, dict):
                raise ConfigError(f"[{name}] must be a table in {path}")
            raw[name].update(table)
    for flag, (section, key) in FLAG_KEYS.items():
        env = environ.get(ENV_PREFIX + flag.upper())
        if env is not None and env != "":
            raw[section][key] = env
    for flag, value in (flags or {}).items():
        if value is not None:
            section, key = FLAG_KEYS[flag]
            raw[section][key] = value

    sections = {name: _build(cls, raw[name], name) for name, cls in types.items()}
    srv: ServerSection = sections["server"]
    auth: AuthSection = sections["auth"]
    if (srv.tls_cert == "") != (srv.tls_key == ""):
        raise ConfigError("[server] tls_cert and tls_key must be given together")
    for what in ("tls_cert", "tls_key", "tls_client_ca"):
        file = getattr(srv, what)
        if file and not os.access(file, os.R_OK):
            raise ConfigError(f"[server] {what} {file!r} is not a readable file")
    if not auth.shared_key and auth.users:
        raise ConfigError("[auth] users need a shared_key: the Forward handshake carries both")
    auth_config = None
    if auth.shared_key:
        try:
            auth_config = AuthConfig(
                auth.shared_key, auth.self_hostname or socket.gethostname(), {str(k): str(v) for k, v in auth.users.items()}
            )
        except ValueError as exc:
            raise ConfigError(f"[auth] {exc}") from None
    if not (0 <= srv.port <= 65535):
        raise ConfigError(f"[server] port must be 0..65535, got {srv.port}")
    http: HTTPConfig = sections["http"]
    if not (0 <= http.port <= 65535):
        raise ConfigError(f"[http] port must be 0..65535, got {http.port}")
    server = ServerConfig(
        host=srv.host,
        port=srv.port,
        unix_socket=srv.unix_socket or None,
        tls_cert=srv.tls_cert or None,
        tls_key=srv.tls_key or None,
        tls_client_ca=srv.tls_client_ca or None,
        auth=auth_config,
        limits=sections["limits"],
        shutdown_grace=srv.shutdown_grace,
    )
    if not (1 <= srv.workers <= 256):
        raise ConfigError(f"[server] workers must be 1..256, got {srv.workers}")
    if srv.workers > 1 and stdout:
        raise ConfigError("--stdout prints from one process; it cannot be used with [server] workers > 1")
    level = sections["log"].level.lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"[log] level must be debug, info, warning or error, got {level!r}")
    return AppConfig(
        server=server,
        http=http,
        log_level=level,
        stdout=stdout,
        workers=srv.workers,
        metrics=sections["metrics"],
        records=sections["records"],
        gpu=sections["gpu"],
    )

