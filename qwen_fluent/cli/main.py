"""The ``qwen-fluent`` command.

``qwen-fluent serve`` runs the receiver; ``qwen-fluent gpu`` prints what NVML
reads now; ``qwen-fluent check-config`` validates a configuration file and
exits. Errors a user can fix (a port in use, an unreadable certificate, an
unknown key) are one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import ssl
import sys
from collections.abc import Callable

from .. import __version__
from ..config import ENV_PREFIX, FLAGS, AppConfig, ConfigError, load, misspelt_variables

#: Subcommands that live in a module of their own under ``qwen_fluent/cli/``:
#: name -> module. Each module has ``add_parser(subparsers)`` (cheap: no heavy
#: imports at module level, the parser is built on every call) and
#: ``run(args) -> int``. One line here adds a command.
COMMANDS: dict[str, str] = {
    "demo": ".demo",
    "send": ".send",
    "analyze": ".analyze",
    "explain": ".explain",
}

DESCRIPTION = """\
qwen-fluent receives logs from Fluent Bit's (or Fluentd's) `forward` output
and turns LLM inference-server logs into Prometheus metrics on /metrics.

  qwen-fluent serve                      Forward on :24224, metrics on :8000
  qwen-fluent serve --stdout             ... and print every record as JSON
  qwen-fluent serve --config qwen-fluent.toml
  qwen-fluent gpu                        one-screen table of the GPUs (NVML)
  qwen-fluent check-config FILE          validate a config file and exit
  qwen-fluent explain RECORD             what the receiver makes of one record or log line
"""

SERVE_EPILOG = f"""\
Every flag can also be set with an environment variable: {ENV_PREFIX}<FLAG>, upper
case with underscores (--shared-key -> {ENV_PREFIX}SHARED_KEY). Precedence:
flag, then environment, then the --config file, then the default. See
examples/qwen-fluent.toml for every setting, and docs/configuration.md.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen-fluent", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"qwen-fluent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the Forward receiver and the /metrics endpoint",
        description="Run the Forward receiver and the Prometheus /metrics endpoint.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("-c", "--config", metavar="FILE", help="TOML configuration file")
    g = serve.add_argument_group("forward input")
    g.add_argument("--host", help="address to listen on for Forward (default 0.0.0.0)")
    g.add_argument("--port", type=int, help="Forward TCP port (default 24224)")
    g.add_argument("--unix-socket", metavar="PATH", help="also listen on this Unix socket")
    g.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain")
    g.add_argument("--tls-key", metavar="PEM", help="private key for --tls-cert")
    g.add_argument("--tls-client-ca", metavar="PEM", help="require client certificates signed by this CA")
    g.add_argument("--shared-key", metavar="KEY", help="require the secure-forward handshake with this key")
    g.add_argument("--allowed-networks", metavar="NETS",
                   help="accept Forward connections only from these networks, comma-separated (10.0.0.0/8,127.0.0.1)")
    g.add_argument("--self-hostname", metavar="NAME", help="hostname sent in the handshake (default: this host)")
    m = serve.add_argument_group("metrics output")
    m.add_argument("--metrics-host", metavar="HOST", help="address for /metrics (default 0.0.0.0)")
    m.add_argument("--metrics-port", type=int, metavar="PORT", help="port for /metrics (default 8000)")
    m.add_argument("--web-config-file", metavar="FILE",
                   help="TLS and basic auth for /metrics: the Prometheus exporter toolkit's web config (docs/web-config.md)")
    m.add_argument("--namespace", help="metric name prefix (default qwen)")
    m.add_argument("--no-gpu", action="store_true", default=None,
                   help="do not read GPUs through NVML ([gpu] enabled = false)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="receiver processes sharing the Forward port, one /metrics for all (default 1)")
    i = serve.add_argument_group("other inputs (docs/inputs.md)")
    i.add_argument("--http-input-port", type=int, metavar="PORT",
                   help="also take records POSTed over HTTP on this port (Fluent Bit's http output; off by default)")
    i.add_argument("--stdin", action="store_true", default=None,
                   help="read log lines from standard input; no Forward port unless --port is given; exit at EOF")
    i.add_argument("source", nargs="?", choices=["-"], metavar="-",
                   help="'-': read log lines from standard input, the same as --stdin (`kubectl logs -f POD | "
                        "qwen-fluent serve -`)")
    i.add_argument("--linger", action="store_true", default=None,
                   help="with --stdin: keep serving /metrics after the input ends, until a signal")
    r = serve.add_argument_group("exactly once (docs/reliability.md)")
    r.add_argument("--state-dir", metavar="DIR",
                   help="checkpoint counters and the duplicate window here; restore them at start")
    r.add_argument("--checkpoint-interval", type=float, metavar="SECONDS",
                   help="seconds between checkpoints to --state-dir (default 5)")
    r.add_argument("--dedup-window", type=float, metavar="SECONDS",
                   help="seconds a message is remembered to recognise a client's resend (default 600)")
    r.add_argument("--no-dedup", action="store_true", default=None,
                   help="count resent messages again (duplicate detection off)")
    r.add_argument("--redis-url", metavar="URL",
                   help="share the duplicate window with other replicas through this Redis (redis://host:6379/0)")
    serve.add_argument("--stdout", action="store_true", help="also print every record as a JSON line")
    serve.add_argument("--audit-sensitive", action="store_true", default=None,
                       help="count records that carry likely secrets or personal data, by kind and pod, "
                            "never the text ([audit] sensitive; docs/audit.md)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")

    gpu = sub.add_parser("gpu", help="print a table of the GPUs as NVML reads them now")
    gpu.set_defaults(command="gpu")

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("config", metavar="FILE")
    for name, module in COMMANDS.items():
        importlib.import_module(module, __package__).add_parser(sub)
    return parser


def _fail(message: str) -> int:
    print(f"qwen-fluent: error: {message}", file=sys.stderr)
    return 2


def _serve(args: argparse.Namespace) -> int:
    from ..app import ListenError, run
    from ..reliability import ReliabilityError
    from ..server.webconfig import WebConfigError

    if args.source == "-":
        args.stdin = True  # `serve -`: standard input as the source, as --stdin
    flags = {flag.dest: getattr(args, flag.dest, None) for flag in FLAGS}
    try:
        config = load(args.config, flags, stdout=args.stdout)
    except ConfigError as exc:
        return _fail(str(exc))
    logging.basicConfig(
        level=config.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for warning in misspelt_variables():
        logging.getLogger("qwen_fluent").warning("%s", warning)
    try:
        if config.workers > 1:
            from ..workers import WorkerError, run_workers

            try:
                return run_workers(config)
            except WorkerError as exc:
                return _fail(str(exc))
        return asyncio.run(run(config))
    except ListenError as exc:
        return _fail(str(exc))
    except WebConfigError as exc:
        return _fail(str(exc))
    except ReliabilityError as exc:  # a state directory or checkpoint that cannot be used
        return _fail(str(exc))
    except ssl.SSLError as exc:
        return _fail(_tls_message(exc, config))
    except OSError as exc:
        text = os.strerror(exc.errno) if exc.errno else str(exc)
        return _fail(f"{text}: {exc.filename}" if exc.filename else text)
    except KeyboardInterrupt:
        return 130


def _tls_message(exc: ssl.SSLError, config: AppConfig) -> str:
    """A certificate, key or CA file that is readable but that OpenSSL refuses: which one, set where.

    OpenSSL's own text names neither file (``[SSL] PEM lib (_ssl.c:3905)``),
    so each file is loaded again on its own to find the one it refuses.
    """
    server = config.server

    def named(key: str) -> str:
        return f"{key} {getattr(server, key)} (from {config.source('server', key)})"

    def refused(load: Callable[[ssl.SSLContext], None]) -> bool:
        try:
            load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        except (ssl.SSLError, OSError):
            return True
        return False

    if server.tls_cert and refused(lambda c: c.load_verify_locations(cafile=server.tls_cert)):
        return f"{named('tls_cert')} is not a PEM certificate"
    if server.tls_cert and refused(lambda c: c.load_cert_chain(server.tls_cert, server.tls_key)):
        return f"{named('tls_key')} is not the PEM private key of {named('tls_cert')}"
    if server.tls_client_ca and refused(lambda c: c.load_verify_locations(cafile=server.tls_client_ca)):
        return f"{named('tls_client_ca')} is not a PEM CA bundle"
    return f"TLS could not be set up: {exc.reason or exc}"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "serve":
        return _serve(args)
    if args.command == "gpu":
        from ..gpu import print_table

        return print_table()
    if args.command == "check-config":
        from ..server.webconfig import WebConfigError, load_web_config

        try:
            checked = load(args.config, environ={})
            if checked.http.web_config_file:  # the web config it names is checked as serve would load it
                load_web_config(checked.http.web_config_file)
        except (ConfigError, WebConfigError) as exc:
            return _fail(str(exc))
        print(f"{args.config}: ok")
        return 0
    if args.command in COMMANDS:
        return importlib.import_module(COMMANDS[args.command], __package__).run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
