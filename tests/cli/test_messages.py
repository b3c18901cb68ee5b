"""The error messages a user meets on day one, as a real ``qwen-fluent`` process prints them: exact text.

Each case runs ``python -m qwen_fluent serve`` (or ``check-config``) with the
port held by a real listening socket, a real environment and a real file, and
compares the whole of stderr's last line. What each message must do: name the
listener, its address and port, and the flag, variable or file key that chose
the value (or every way to set it, for a default); name an environment
variable as such; suggest the closest known key.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwen_fluent.config import _section_types

QWEN = [sys.executable, "-m", "qwen_fluent"]
#: Enough for an interpreter start and a failed bind on a loaded 2-core machine.
TIMEOUT = 60


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run qwen-fluent with only the QWEN_FLUENT_* variables given here (none inherited)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_FLUENT_")}
    return subprocess.run(QWEN + args, capture_output=True, text=True, timeout=TIMEOUT, env={**base, **(env or {})})


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line; the process must have exited 2 without a traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def warnings_of(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The text of each WARNING line qwen-fluent's own logger wrote to stderr."""
    return [line.split(" WARNING qwen_fluent: ", 1)[1] for line in proc.stderr.splitlines()
            if " WARNING qwen_fluent: " in line]


@pytest.fixture
def held() -> Iterator[int]:
    """A port on 127.0.0.1 that another program is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


LOCAL = ["--host", "127.0.0.1", "--metrics-host", "127.0.0.1", "--no-gpu"]


def test_forward_port_in_use_names_the_flag(held):
    proc = run(["serve", *LOCAL, "--port", str(held), "--metrics-port", "0"])
    assert error_line(proc) == (f"qwen-fluent: error: Forward port {held} on 127.0.0.1 is already in use by another "
                                "program; it was set by --port")


def test_forward_port_in_use_names_the_variable(held):
    proc = run(["serve", *LOCAL, "--metrics-port", "0"], {"QWEN_FLUENT_PORT": str(held)})
    assert error_line(proc) == (f"qwen-fluent: error: Forward port {held} on 127.0.0.1 is already in use by another "
                                "program; it was set by environment variable QWEN_FLUENT_PORT")


def test_forward_port_in_use_names_the_file_key(held, tmp_path):
    config = tmp_path / "qwen-fluent.toml"
    config.write_text(f'[server]\nhost = "127.0.0.1"\nport = {held}\n[http]\nhost = "127.0.0.1"\nport = 0\n'
                      "[gpu]\nenabled = false\n")
    proc = run(["serve", "--config", str(config)])
    assert error_line(proc) == (f"qwen-fluent: error: Forward port {held} on 127.0.0.1 is already in use by another "
                                f"program; it was set by [server] port in {config}")


def test_default_forward_port_in_use_says_how_to_change_it():
    """The default port 24224, held by this test (or already by someone else: in use either way)."""
    sock = socket.socket()
    try:
        try:
            sock.bind(("0.0.0.0", 24224))
            sock.listen()
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE  # taken by another program: just as good
        proc = run(["serve", "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--no-gpu"])
    finally:
        sock.close()
    assert error_line(proc) == ("qwen-fluent: error: Forward port 24224 on 0.0.0.0 is already in use by another "
                                "program; set another with --port, QWEN_FLUENT_PORT or [server] port")


def test_metrics_port_in_use_names_the_flag(held):
    proc = run(["serve", *LOCAL, "--port", "0", "--metrics-port", str(held)])
    assert error_line(proc) == (f"qwen-fluent: error: metrics port {held} on 127.0.0.1 is already in use by another "
                                "program; it was set by --metrics-port")


def test_metrics_port_in_use_names_the_variable(held):
    proc = run(["serve", *LOCAL, "--port", "0"], {"QWEN_FLUENT_METRICS_PORT": str(held)})
    assert error_line(proc) == (f"qwen-fluent: error: metrics port {held} on 127.0.0.1 is already in use by another "
                                "program; it was set by environment variable QWEN_FLUENT_METRICS_PORT")


def test_forward_port_in_use_with_workers(held):
    """With --workers the Forward port is bound in each worker; the parent passes the message on."""
    proc = run(["serve", *LOCAL, "--port", str(held), "--metrics-port", "0", "--workers", "2"])
    assert error_line(proc) == (f"qwen-fluent: error: worker 0: Forward port {held} on 127.0.0.1 is already in use "
                                "by another program; it was set by --port")


def test_address_not_on_this_machine():
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never assigned to a real interface.
    proc = run(["serve", "--host", "192.0.2.1", "--port", "0", "--metrics-host", "127.0.0.1", "--metrics-port", "0",
                "--no-gpu"])
    assert error_line(proc) == ("qwen-fluent: error: cannot listen for Forward on 192.0.2.1:0: 192.0.2.1 is not an "
                                "address of this machine; it was set by --host")


def test_unix_socket_in_a_missing_directory(tmp_path):
    path = tmp_path / "missing" / "forward.sock"
    proc = run(["serve", *LOCAL, "--port", "0", "--metrics-port", "0", "--unix-socket", str(path)])
    assert error_line(proc) == (f"qwen-fluent: error: cannot listen for Forward on Unix socket {path}: "
                                "No such file or directory; it was set by --unix-socket")


def test_unix_socket_path_that_is_a_file(tmp_path):
    path = tmp_path / "forward.sock"
    path.write_text("not a socket")
    proc = run(["serve", *LOCAL, "--port", "0", "--metrics-port", "0"], {"QWEN_FLUENT_UNIX_SOCKET": str(path)})
    assert error_line(proc) == (f"qwen-fluent: error: cannot listen for Forward on Unix socket {path}: the path "
                                "exists and is not a socket; it was set by environment variable QWEN_FLUENT_UNIX_SOCKET")
    assert path.read_text() == "not a socket"  # never removed: only a stale socket is


@pytest.mark.parametrize("variable,value,message", [
    ("QWEN_FLUENT_PORT", "abc", "environment variable QWEN_FLUENT_PORT must be an integer, got 'abc'"),
    ("QWEN_FLUENT_METRICS_PORT", "80000", "environment variable QWEN_FLUENT_METRICS_PORT must be 0..65535, got 80000"),
    ("QWEN_FLUENT_WORKERS", "many", "environment variable QWEN_FLUENT_WORKERS must be an integer, got 'many'"),
    ("QWEN_FLUENT_NO_GPU", "perhaps", "environment variable QWEN_FLUENT_NO_GPU must be true or false, got 'perhaps'"),
])
def test_bad_environment_variable_is_named_as_such(tmp_path, variable, value, message):
    """Even when the file sets the same key correctly, the variable (which wins) is what is named."""
    config = tmp_path / "qwen-fluent.toml"
    config.write_text("[server]\nport = 24224\nworkers = 1\n[http]\nport = 8000\n")
    proc = run(["serve", "--config", str(config)], {variable: value})
    assert error_line(proc) == f"qwen-fluent: error: {message}"


def test_bad_flag_value_is_argparse_naming_the_flag():
    proc = run(["serve", "--port", "abc"])
    assert error_line(proc) == "qwen-fluent serve: error: argument --port: invalid int value: 'abc'"


@pytest.mark.parametrize("text,message", [
    ("[server]\npotr = 24224\n", "unknown key 'potr' in [server] in {path}; did you mean 'port'? (known: allowed_networks, host, port, "
     "shutdown_grace, tls_cert, tls_client_ca, tls_key, unix_socket, workers)"),
    ("[htttp]\nport = 8000\n", "unknown section [htttp] in {path}; did you mean [http]? (known: {sections})"),
    ("[gpu]\nenable = false\n", "unknown key 'enable' in [gpu] in {path}; did you mean 'enabled'? (known: "
     "cache_seconds, enabled, log_root, proc_root, process_attribution)"),
    ("[server]\nport = \"24224\"\n", "[server] port in {path} must be an integer, got '24224'"),
])
def test_config_file_mistakes(tmp_path, text, message):
    """serve and check-config print the same line."""
    path = tmp_path / "qwen-fluent.toml"
    path.write_text(text)
    expected = "qwen-fluent: error: " + message.format(path=path, sections=", ".join(sorted(_section_types())))
    assert error_line(run(["check-config", str(path)])) == expected
    assert error_line(run(["serve", "--config", str(path)])) == expected


def test_tls_key_without_certificate(tmp_path: Path):
    key = tmp_path / "tls.key"
    key.write_text("")
    proc = run(["serve", "--tls-key", str(key)])
    assert error_line(proc) == ("qwen-fluent: error: tls_cert and tls_key must be given together: --tls-key is set, "
                                "set tls_cert too with --tls-cert, QWEN_FLUENT_TLS_CERT or [server] tls_cert")


def test_tls_certificate_that_is_not_pem(tmp_path: Path):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    proc = run(["serve", *LOCAL, "--port", "0", "--metrics-port", "0", "--tls-cert", str(cert)],
               {"QWEN_FLUENT_TLS_KEY": str(key)})
    assert error_line(proc) == f"qwen-fluent: error: tls_cert {cert} (from --tls-cert) is not a PEM certificate"


def test_tls_key_that_is_not_the_certificates(tmp_path: Path):
    from tests.server.certs import make_ca

    cert, _ = make_ca(tmp_path, "one")
    _, key = make_ca(tmp_path, "two")
    proc = run(["serve", *LOCAL, "--port", "0", "--metrics-port", "0", "--tls-cert", str(cert), "--tls-key", str(key)])
    assert error_line(proc) == (f"qwen-fluent: error: tls_key {key} (from --tls-key) is not the PEM private key of "
                                f"tls_cert {cert} (from --tls-cert)")


def test_misspelt_variable_is_warned_about_at_start(held):
    """A typo in a variable name does not stop serve (other tools share the prefix), but it is said, first."""
    proc = run(["serve", *LOCAL, "--port", str(held), "--metrics-port", "0"], {"QWEN_FLUENT_METRICS_PROT": "9"})
    warnings = warnings_of(proc)
    assert warnings == ["environment variable QWEN_FLUENT_METRICS_PROT is not a qwen-fluent setting and is ignored; "
                        "did you mean QWEN_FLUENT_METRICS_PORT?"]
    assert error_line(proc).startswith(f"qwen-fluent: error: Forward port {held} on 127.0.0.1 is already in use")


def test_a_receiver_without_the_c_scanner_says_so_at_start(held):
    """Half the intake speed is not something to find out from a graph: serve says which path reads payloads."""
    proc = run(["serve", *LOCAL, "--port", str(held), "--metrics-port", "0"], {"QWEN_FLUENT_NO_SCAN": "1"})
    warnings = warnings_of(proc)
    assert warnings == ["the C payload scanner is not in use (QWEN_FLUENT_NO_SCAN is set): PackedForward payloads "
                        "are read on the pure-Python path, with the same results at about 60 % of the speed"]
    # With the scanner (built wherever CI runs), nothing is said about it.
    proc = run(["serve", *LOCAL, "--port", str(held), "--metrics-port", "0"])
    assert "payload scanner" not in proc.stderr
