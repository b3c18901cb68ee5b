"""The ``qwen-fluent serve`` configuration: a TOML file, environment variables, flags.

Why TOML: the standard library reads it (``tomllib``, Python 3.11+; the small
``tomli`` backport on 3.10), so the configuration costs no dependency; it has
real types (a port is an integer, a key a string), and no YAML surprises
(``no`` becoming ``false``, octal ports). Fluent Bit users know both styles.

Precedence, highest first: command-line flag, ``QWEN_FLUENT_*`` environment
variable, configuration file, built-in default. Every file section maps onto
its package's own dataclass (:class:`~qwen_fluent.forward.Limits`,
:class:`~qwen_fluent.metrics.MetricsConfig`, ...), built once here; an
unknown section or key is an error that suggests the closest known one, so a
typo never silently falls back to a default.

The loader remembers where every value came from (:class:`Source`: a flag, a
variable, a file, the default), so an error names what the user actually
wrote: ``QWEN_FLUENT_PORT=abc`` is reported as that environment variable, not
as the file's ``[server] port``, and a port in use names the flag, variable or
key that chose it (:attr:`AppConfig.sources`).

It lives beside :mod:`qwen_fluent.app`, not in the CLI package: the app takes
an :class:`AppConfig` and the CLI builds one, and the app must not import the
CLI that sits on top of it (see tests/test_layers.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import socket
import sys
from typing import Any, Literal, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from .forward import AuthConfig, Limits
from .server import ServerConfig


class ConfigError(Exception):
    """The configuration is wrong; the message is one line a user can act on."""


ENV_PREFIX = "QWEN_FLUENT_"

SourceKind = Literal["flag", "env", "file", "default"]


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one setting's value came from: what an error message names.

    ``origin`` is the flag (``--port``), the variable (``QWEN_FLUENT_PORT``)
    or the file's path; empty for a built-in default.
    """

    kind: SourceKind
    section: str
    key: str
    origin: str = ""

    def __str__(self) -> str:
        if self.kind == "flag":
            return self.origin
        if self.kind == "env":
            return f"environment variable {self.origin}"
        if self.kind == "file":
            return f"[{self.section}] {self.key} in {self.origin}"
        return f"the default [{self.section}] {self.key}"


@dataclasses.dataclass(frozen=True)
class Flag:
    """One ``serve`` flag, its ``QWEN_FLUENT_*`` variable, and the file key it sets.

    ``dest`` is argparse's attribute name (``metrics_port`` for
    ``--metrics-port``). ``negate``: the flag turns the key off
    (``--no-gpu`` sets ``[gpu] enabled = false``; ``QWEN_FLUENT_NO_GPU=1``
    does the same).
    """

    dest: str
    section: str
    key: str
    negate: bool = False

    @property
    def option(self) -> str:
        return "--" + self.dest.replace("_", "-")

    @property
    def variable(self) -> str:
        return ENV_PREFIX + self.dest.upper()


#: Every ``serve`` flag that sets a file key, in ``--help`` order. The CLI reads
#: these from the parsed arguments by ``dest``; a new flag is one line here and
#: one ``add_argument`` there (docs/configuration.md lists them; tests/cli/test_docs.py checks).
FLAGS: tuple[Flag, ...] = (
    Flag("host", "server", "host"),
    Flag("port", "server", "port"),
    Flag("unix_socket", "server", "unix_socket"),
    Flag("tls_cert", "server", "tls_cert"),
    Flag("tls_key", "server", "tls_key"),
    Flag("tls_client_ca", "server", "tls_client_ca"),
    Flag("allowed_networks", "server", "allowed_networks"),
    Flag("shared_key", "auth", "shared_key"),
    Flag("self_hostname", "auth", "self_hostname"),
    Flag("metrics_host", "http", "host"),
    Flag("metrics_port", "http", "port"),
    Flag("web_config_file", "http", "web_config_file"),
    Flag("namespace", "metrics", "namespace"),
    Flag("no_gpu", "gpu", "enabled", negate=True),
    Flag("log_level", "log", "level"),
    Flag("workers", "server", "workers"),
    Flag("http_input_port", "http_input", "port"),
    Flag("stdin", "stdin", "enabled"),
    Flag("linger", "stdin", "linger"),
    Flag("state_dir", "reliability", "state_dir"),
    Flag("checkpoint_interval", "reliability", "checkpoint_interval"),
    Flag("dedup_window", "reliability", "dedup_window"),
    Flag("no_dedup", "reliability", "dedup", negate=True),
    Flag("redis_url", "reliability", "redis_url"),
    Flag("audit_sensitive", "audit", "sensitive"),
)

#: Flag ``dest`` -> (section, key): the same table, keyed for lookups.
FLAG_KEYS: dict[str, tuple[str, str]] = {flag.dest: (flag.section, flag.key) for flag in FLAGS}


def flag_for(section: str, key: str) -> Flag | None:
    """The flag that sets ``[section] key``, if there is one."""
    for flag in FLAGS:
        if (flag.section, flag.key) == (section, key):
            return flag
    return None


def setters(section: str, key: str) -> str:
    """Every way to set ``[section] key``, for a message: ``--port, QWEN_FLUENT_PORT or [server] port``."""
    flag = flag_for(section, key)
    ways = [flag.option, flag.variable] if flag is not None and not flag.negate else []
    ways.append(f"[{section}] {key}")
    return ", ".join(ways[:-1]) + (" or " if len(ways) > 1 else "") + ways[-1]


@dataclasses.dataclass
class HTTPConfig:
    """The Prometheus endpoint."""

    host: str = "0.0.0.0"
    #: 8000, as in the article this project follows; Prometheus scrapes it.
    port: int = 8000
    #: The Prometheus exporter toolkit's web configuration file (TLS, basic auth) for /metrics;
    #: empty: plain HTTP, no auth. Read by qwen_fluent.server.webconfig when the endpoint starts.
    web_config_file: str = ""


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
    #: Only peers in these networks ("10.0.0.0/8", "192.168.1.7") may connect over TCP; empty: any.
    allowed_networks: list = dataclasses.field(default_factory=list)
    #: Receiver processes sharing the Forward port (SO_REUSEPORT), merged on
    #: one /metrics. 1: one process, no merge. One per core is the useful most.
    workers: int = 1


@dataclasses.dataclass
class LogSection:
    """The receiver's own log (stderr)."""

    level: str = "info"


@dataclasses.dataclass
class HTTPInputSection:
    """The HTTP input (:mod:`qwen_fluent.server.http_input`): on with ``enabled``, or ``--http-input-port``.

    Its limits default to :class:`~qwen_fluent.server.http_input.HTTPLimits`'
    (the reasons are there); bodies are also held to ``[limits]``
    ``max_decompressed_bytes`` and ``max_connections``, as Forward messages are.
    """

    #: The flag ``--http-input-port`` (or its variable) turns it on as well.
    enabled: bool = False
    host: str = "0.0.0.0"
    #: 9880, Fluent Bit's ``http`` input's port; 0 picks a free one.
    port: int = 9880
    #: ``Authorization: Bearer <secret>`` or Basic auth with it as the password. Empty:
    #: ``[auth] shared_key`` when that is set (one secret for both inputs), else no auth.
    secret: str = ""
    #: Basic auth's user name, when it must be one (empty: any).
    username: str = ""
    #: Serve HTTPS with ``[server] tls_cert``/``tls_key``/``tls_client_ca`` when those are set.
    tls: bool = True
    default_tag: str = "http.0"
    tag_header: str = "X-Fluent-Tag"
    date_key: str = "date"
    max_body_bytes: int = 8 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_inflight_bytes: int = 64 * 1024 * 1024
    max_connections_per_address: int = 32
    idle_timeout: float = 75.0
    request_timeout: float = 60.0


@dataclasses.dataclass
class StdinSection:
    """``serve --stdin`` (:mod:`qwen_fluent.server.stdin`): log lines from standard input."""

    enabled: bool = False
    #: Keep serving /metrics after the input ends, until a signal (``--linger``).
    linger: bool = False
    #: The tag every line's record carries (a tail tag names a pod: docs/inputs.md).
    tag: str = "stdin"


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
    #: (section, key) -> where its value came from, for every value not left at
    #: its default; :meth:`source` answers for the others too.
    sources: dict[tuple[str, str], Source] = dataclasses.field(default_factory=dict)
    #: The HTTP input's settings, or ``None`` when it is off (the default).
    http_input: HTTPInputSection | None = None
    #: ``serve --stdin``.
    stdin: StdinSection = dataclasses.field(default_factory=StdinSection)
    #: ``[reliability]``: duplicate window, state directory, shared duplicate store
    #: (:class:`~qwen_fluent.reliability.ReliabilityConfig`; ``None``: all off).
    reliability: Any = None
    #: ``[audit]``: the sensitive-data audit (:class:`~qwen_fluent.audit.AuditConfig`; ``None``: off).
    audit: Any = None

    def source(self, section: str, key: str) -> Source:
        """Where ``[section] key`` came from (``Source("default", ...)`` when nothing set it)."""
        return self.sources.get((section, key), Source("default", section, key))


def _section_types() -> dict[str, type]:
    """Each file section and the dataclass it maps onto (imported late: optional pieces)."""
    from .gpu import GpuConfig
    from .metrics import MetricsConfig
    from .records import NormaliserConfig
    from .audit import AuditConfig
    from .reliability.config import ReliabilityConfig

    return {
        "server": ServerSection,
        "auth": AuthSection,
        "limits": Limits,
        "http": HTTPConfig,
        "log": LogSection,
        "records": NormaliserConfig,
        "metrics": MetricsConfig,
        "gpu": GpuConfig,
        "http_input": HTTPInputSection,
        "stdin": StdinSection,
        "reliability": ReliabilityConfig,
        "audit": AuditConfig,
    }



_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _coerce(value: Any, default: Any, source: Source) -> Any:
    """Check a value against its default's type; strings (from the environment) are converted.

    The error names ``source``: the flag, variable or file key the user wrote.
    Only text sources (a variable, a flag) are converted from strings: the
    file's TOML is typed, so ``port = "24224"`` there is an error, not an integer.
    """
    text = source.kind in ("env", "flag")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if text and isinstance(value, str) and value.strip().lower() in _BOOLEANS:
            return _BOOLEANS[value.strip().lower()]
        raise ConfigError(f"{source} must be true or false, got {value!r}")
    for kind, noun in ((int, "an integer"), (float, "a number")):
        if type(default) is kind:
            if text and isinstance(value, str):
                try:
                    return kind(value)
                except ValueError:
                    pass
            # an integer is a fine float; a float is not a fine integer; a bool is neither
            elif type(value) is kind or (kind is float and type(value) is int):
                return kind(value)
            raise ConfigError(f"{source} must be {noun}, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise ConfigError(f"{source} must be a string, got {value!r}")
    if isinstance(default, (list, tuple)):
        if text and isinstance(value, str):  # "a, b" from an environment variable
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            return value
        raise ConfigError(f"{source} must be a list, got {value!r}")
    if isinstance(default, dict):
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{source} must be a table, got {value!r}")
    return value  # no default to compare with: the section's own dataclass checks it


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


def _did_you_mean(word: str, known: list[str], wrap: str = "{}") -> str:
    """``"; did you mean 'port'?"`` for the closest known name, or nothing when none is close.

    difflib's ratio with its usual 0.6 cutoff: one or two letters wrong or
    swapped in a short key (``potr``, ``prot``, ``serve``) match, unrelated
    words do not.
    """
    close = difflib.get_close_matches(word, known, n=1)
    return f"; did you mean {wrap.format(close[0])}?" if close else ""


def _build(cls: type, values: Mapping[str, tuple[Any, Source]], section: str) -> Any:
    """The section's own dataclass from checked values; its own validation errors name their source.

    The dataclass raises ``ValueError`` (or ``TypeError``) without saying
    which key was wrong in terms the user wrote, so the culprit is found by
    building the dataclass with each set value alone: the first that fails
    on its own is named. A combination that fails only together (histogram
    labels not among the labels) names every value that was set.
    """
    kwargs = {key: value for key, (value, _) in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        for key, (value, source) in values.items():
            try:
                cls(**{key: value})
            except (TypeError, ValueError):
                raise ConfigError(f"{exc} (from {source})") from None
        named = ", ".join(str(source) for _, source in values.values())
        raise ConfigError(f"[{section}]: {exc} (set by {named})") from None


def misspelt_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """Warnings for ``QWEN_FLUENT_*`` variables that are no setting but close to one (``QWEN_FLUENT_PROT``).

    Only warnings, and only for near misses: other tools share the prefix
    (the benchmarks' ``QWEN_FLUENT_BENCH_SERVE``), so an unknown variable is
    not an error, but a typo would otherwise leave its setting at the
    default without a word.
    """
    environ = os.environ if environ is None else environ
    known = sorted(flag.dest.upper() for flag in FLAGS)
    out = []
    for name in sorted(environ):
        suffix = name[len(ENV_PREFIX):]
        if name.startswith(ENV_PREFIX) and suffix not in known:
            hint = _did_you_mean(suffix, known, ENV_PREFIX + "{}")  # the shared prefix would make anything close
            if hint:
                out.append(f"environment variable {name} is not a qwen-fluent setting and is ignored{hint}")
    return out


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed TOML file, or :class:`ConfigError` naming the file and what is wrong with it."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def _file_values(path: str, data: Mapping[str, Any], types: Mapping[str, type],
                 defaults: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, tuple[Any, Source]]]:
    """The file's values, checked against the sections' keys and types, each with its source."""
    out: dict[str, dict[str, tuple[Any, Source]]] = {}
    for name, table in data.items():
        if name not in types:
            hint = _did_you_mean(name, sorted(types), "[{}]")
            raise ConfigError(f"unknown section [{name}] in {path}{hint} (known: {', '.join(sorted(types))})")
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table in {path}, got {table!r}")
        known = sorted(defaults[name])
        for key, value in table.items():
            if key not in defaults[name]:
                hint = _did_you_mean(key, known, "'{}'")
                raise ConfigError(f"unknown key {key!r} in [{name}] in {path}{hint} (known: {', '.join(known)})")
            source = Source("file", name, key, path)
            out.setdefault(name, {})[key] = (_coerce(value, defaults[name][key], source), source)
    return out


def load(
    path: str | os.PathLike[str] | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    stdout: bool = False,
) -> AppConfig:
    """Resolve the configuration from file, environment and flags.

    ``flags``: flag ``dest`` -> value as argparse gives it (:data:`FLAGS`);
    ``None`` is "not given". ``environ`` defaults to ``os.environ``; pass
    ``{}`` to ignore the environment. Raises :class:`ConfigError` with one
    line that names where the wrong value came from.
    """
    environ = os.environ if environ is None else environ
    types = _section_types()
    defaults = {name: _defaults(cls) for name, cls in types.items()}
    values: dict[str, dict[str, tuple[Any, Source]]] = {name: {} for name in types}
    if path:
        for name, table in _file_values(str(path), read_file(path), types, defaults).items():
            values[name].update(table)

    def put(flag: Flag, value: Any, source: Source) -> None:
        value = _coerce(value, defaults[flag.section][flag.key], source)  # a negated key is a bool
        values[flag.section][flag.key] = (not value if flag.negate else value, source)

    for flag in FLAGS:
        env = environ.get(flag.variable)
        if env is not None and env != "":
            put(flag, env, Source("env", flag.section, flag.key, flag.variable))
    by_dest = {flag.dest: flag for flag in FLAGS}
    for dest, value in (flags or {}).items():
        if dest not in by_dest:
            raise ConfigError(f"unknown flag {dest!r}{_did_you_mean(dest, sorted(by_dest), '{!r}')}")
        flag = by_dest[dest]
        # None: not given. A negating flag is a switch (store_true): False is "not given" too,
        # so --no-gpu left off never overrides [gpu] enabled = false from the file.
        if value is not None and not (flag.negate and value is False):
            put(flag, value, Source("flag", flag.section, flag.key, flag.option))

    sections = {name: _build(cls, values[name], name) for name, cls in types.items()}
    sources = {(name, key): source for name, table in values.items() for key, (_, source) in table.items()}

    def where(section: str, key: str) -> Source:
        return sources.get((section, key), Source("default", section, key))

    srv: ServerSection = sections["server"]
    auth: AuthSection = sections["auth"]
    if (srv.tls_cert == "") != (srv.tls_key == ""):
        given, missing = ("tls_cert", "tls_key") if srv.tls_cert else ("tls_key", "tls_cert")
        raise ConfigError(f"tls_cert and tls_key must be given together: {where('server', given)} is set, "
                          f"set {missing} too with {setters('server', missing)}")
    for what in ("tls_cert", "tls_key", "tls_client_ca"):
        file = getattr(srv, what)
        if file and not os.access(file, os.R_OK):
            raise ConfigError(f"{where('server', what)}: {file!r} is not a readable file")
    if not auth.shared_key and auth.users:
        raise ConfigError(f"{where('auth', 'users')}: users need a shared_key (the Forward handshake carries "
                          f"both); set it with {setters('auth', 'shared_key')}")
    auth_config = None
    if auth.shared_key:
        try:
            auth_config = AuthConfig(
                auth.shared_key, auth.self_hostname or socket.gethostname(), {str(k): str(v) for k, v in auth.users.items()}
            )
        except ValueError as exc:
            raise ConfigError(f"[auth] {exc}") from None
    for section, key, low, high, value in (
        ("server", "port", 0, 65535, srv.port),
        ("http", "port", 0, 65535, sections["http"].port),
        ("server", "workers", 1, 256, srv.workers),
    ):
        if not (low <= value <= high):
            raise ConfigError(f"{where(section, key)} must be {low}..{high}, got {value}")
    http: HTTPConfig = sections["http"]
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
        allowed_networks=_networks(srv.allowed_networks, where("server", "allowed_networks")),
    )
    if srv.workers > 1 and sections["stdin"].enabled:
        raise ConfigError(f"--stdin reads one stream in one process; it cannot be used with {srv.workers} workers "
                          f"(from {where('server', 'workers')})")
    if srv.workers > 1 and (sections["reliability"].state_dir or sections["reliability"].redis_url):
        # Each worker would need a state file of its own, and a retry may land on another worker:
        # one process per state directory (replicas share duplicates through Redis, not workers).
        key = "state_dir" if sections["reliability"].state_dir else "redis_url"
        raise ConfigError(f"{where('reliability', key)} needs one process; it cannot be used with {srv.workers} "
                          f"workers (from {where('server', 'workers')})")
    if srv.workers > 1 and sections["audit"].sensitive:
        # The parent merges the workers' request families only (qwen_fluent/workers.py); the audit's
        # counts would stay in each worker, unseen. One process audits 30-40k records/s (docs/audit.md).
        raise ConfigError(f"{where('audit', 'sensitive')} audits in one process; it cannot be used with "
                          f"{srv.workers} workers (from {where('server', 'workers')})")
    if srv.workers > 1 and stdout:
        raise ConfigError(f"--stdout prints from one process; it cannot be used with {srv.workers} workers "
                          f"(from {where('server', 'workers')})")
    level = sections["log"].level.lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{where('log', 'level')} must be debug, info, warning or error, got {level!r}")
    return AppConfig(
        server=server,
        http=http,
        log_level=level,
        stdout=stdout,
        workers=srv.workers,
        metrics=sections["metrics"],
        records=sections["records"],
        gpu=sections["gpu"],
        sources=sources,
        http_input=_http_input(sections["http_input"], sources, srv, auth),
        stdin=sections["stdin"],
        reliability=sections["reliability"],
        audit=sections["audit"],
    )


def _networks(values: list, source: Source) -> tuple[Any, ...]:
    """``[server] allowed_networks`` as ip_network objects; a host address is its own /32 (or /128)."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            raise ConfigError(f"{source} must list networks such as \"10.0.0.0/8\" or addresses, got {value!r}") from None
    return tuple(out)


def _http_input(section: HTTPInputSection, sources: Mapping[tuple[str, str], Source], srv: ServerSection,
                auth: AuthSection) -> HTTPInputSection | None:
    """The HTTP input's section resolved (secret and TLS inherited from Forward), or ``None`` when it is off."""
    port = sources.get(("http_input", "port"), Source("default", "http_input", "port"))
    if not (section.enabled or port.kind in ("flag", "env")):  # --http-input-port alone turns it on
        return None
    if not (0 <= section.port <= 65535):
        raise ConfigError(f"{port} must be 0..65535, got {section.port}")
    if srv.port == section.port != 0:
        raise ConfigError(f"{port} is {section.port}, the Forward port too; give the HTTP input a port of its own")
    return dataclasses.replace(section, secret=section.secret or auth.shared_key)
