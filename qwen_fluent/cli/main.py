"""The ``qwen-fluent`` command.

``qwen-fluent serve`` runs the receiver; ``qwen-fluent gpu`` prints what NVML
reads now; ``qwen-fluent check-config`` validates a configuration file and
exits. Errors a user can fix (a port in use, an unreadable certificate, an
unknown key) are one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import ssl
import sys

import importlib

from .. import __version__
from ..config import ENV_PREFIX, ConfigError, load

#: Subcommands that live in a module of their own under ``qwen_fluent/cli/``:
#: name -> module. Each module has ``add_parser(subparsers)`` (cheap: no heavy
#: imports at module level, the parser is built on every call) and
#: ``run(args) -> int``. One line here adds a command.
COMMANDS: dict[str, str] = {
    "send": ".send",
    "analyze": ".analyze",
}

DESCRIPTION = """\
qwen-fluent receives logs from Fluent Bit's (or Fluentd's) `forward` output
and turns LLM inference-server logs into Prometheus metrics on /metrics.

  qwen-fluent serve                      Forward on :24224, metrics on :8000
  qwen-fluent serve --stdout             ... and print every record as JSON
  qwen-fluent serve --config qwen-fluent.toml
  qwen-fluent gpu                        one-screen table of the GPUs (NVML)
  qwen-fluent check-config FILE          validate a config file and exit
  qwen-fluent send FILE...               replay log files over Forward, as Fluent Bit would
  qwen-fluent analyze FILE...            latency, QPS and token percentiles of a log file
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
    g.add_argument("--self-hostname", metavar="NAME", help="hostname sent in the handshake (default: this host)")
    m = serve.add_argument_group("metrics output")
    m.add_argument("--metrics-host", metavar="HOST", help="address for /metrics (default 0.0.0.0)")
    m.add_argument("--metrics-port", type=int, metavar="PORT", help="port for /metrics (default 8000)")
    m.add_argument("--namespace", help="metric name prefix (default qwen)")
    m.add_argument("--no-gpu", action="store_true", help="do not read GPUs through NVML")
    g.add_argument("--workers", type=int, metavar="N",
                   help="receiver processes sharing the Forward port, one /metrics for all (default 1)")
    serve.add_argument("--stdout", action="store_true", help="also print every record as a JSON line")
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
    from ..app import run

    flags = {key: getattr(args, key, None) for key in (
        "host", "port", "unix_socket", "tls_cert", "tls_key", "tls_client_ca", "shared_key",
        "self_hostname", "metrics_host", "metrics_port", "namespace", "log_level", "workers",
    )}
    try:
        config = load(args.config, flags, stdout=args.stdout)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.no_gpu and config.gpu is not None:
        config.gpu.enabled = False
    logging.basicConfig(
        level=config.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if config.workers > 1:
            from ..workers import WorkerError, run_workers

            try:
                return run_workers(config)
            except WorkerError as exc:
                return _fail(str(exc))
        return asyncio.run(run(config))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return _fail(f"address already in use: {exc.strerror} ({_where(exc)})")
        if isinstance(exc, ssl.SSLError):
            return _fail(f"TLS certificate or key could not be loaded: {exc}")
        return _fail(f"{exc.strerror or exc}{_where(exc)}")
    except KeyboardInterrupt:
        return 130


def _where(exc: OSError) -> str:
    text = str(exc)
    return f": {text}" if text else ""


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
        try:
            load(args.config, environ={})
        except ConfigError as exc:
            return _fail(str(exc))
        print(f"{args.config}: ok")
        return 0
    if args.command in COMMANDS:
        return importlib.import_module(COMMANDS[args.command], __package__).run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
