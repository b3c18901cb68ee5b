"""``/metrics`` behind the exporter toolkit's web configuration file: TLS, basic auth, headers, rate limit.

The reference is the toolkit itself, as Debian's Prometheus 2.42 embeds it:

- ``promtool check web-config`` must accept every file we accept and refuse
  every file we refuse (for the keys that toolkit version knows);
- a real Prometheus scrapes, with ONE scrape_config (``scheme: https``,
  ``tls_config``, ``basic_auth``), both our endpoint and a second Prometheus
  started with ``--web.config.file`` pointing at the SAME file: both targets
  must be up; with a wrong password, or without ``scheme: https``, both must be
  down with the same error text.

The other tests talk to the endpoint over real loopback TLS with the standard
library's client. bcrypt hashes use cost 4 (bcrypt's minimum) so that a loaded
2-core CI machine is not timing bcrypt; the cost is read from each hash, so the
code path is the same as at cost 10.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from qwen_fluent.metrics import ReceiverCollector
from qwen_fluent.metrics.exposition import Registry
from qwen_fluent.server.http import MetricsHTTPServer
from qwen_fluent.server.webconfig import (
    AUTH_CACHE_SIZE,
    RateLimit,
    TokenBucket,
    WebConfigError,
    load_web_config,
    parse_basic,
    parse_duration,
)
from qwen_fluent.stats import ReceiverStats
from tests.support.prometheus import PrometheusServer, free_port, require_binary

USER, PASSWORD = "prometheus", "s3cret-scrape"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
OTHER_HASH = bcrypt.hashpw(b"another", bcrypt.gensalt(4)).decode()


@pytest.fixture
def site(tmp_path: Path, tls_files: dict[str, Path]) -> Path:
    """A directory holding the certificates, where web config files name them by relative path."""
    for name in ("ca_crt", "server_crt", "server_key", "client_crt", "client_key"):
        stem, ext = name.rsplit("_", 1)
        shutil.copy(tls_files[name], tmp_path / f"{stem}.{ext}")
    return tmp_path


def write(site: Path, text: str, name: str = "web.yml") -> Path:
    path = site / name
    path.write_text(text, encoding="utf-8")
    return path


TLS_AND_AUTH = f"""\
tls_server_config:
  cert_file: server.crt
  key_file: server.key
http_server_config:
  headers:
    X-Content-Type-Options: nosniff
    X-Frame-Options: deny
basic_auth_users:
  {USER}: {HASH}
  other: {OTHER_HASH}
"""


def registry() -> Registry:
    r = Registry()
    r.register(ReceiverCollector(ReceiverStats()))
    return r


@pytest.fixture
def served(site: Path) -> Iterator[MetricsHTTPServer]:
    with MetricsHTTPServer("127.0.0.1", 0, registry(), web_config_file=str(write(site, TLS_AND_AUTH))) as srv:
        yield srv


def client_context(site: Path, cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(site / "ca.crt"))
    if cert:
        ctx.load_cert_chain(site / "client.crt", site / "client.key")
    return ctx


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def get(port: int, path: str, ctx: ssl.SSLContext | None, **headers: str) -> tuple[int, Any, bytes]:
    scheme = "https" if ctx is not None else "http"
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=ctx) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


# -- the reference: promtool and Prometheus itself ------------------------------------------------------


def promtool_accepts(path: Path) -> tuple[bool, str]:
    done = subprocess.run([require_binary("promtool"), "check", "web-config", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    return done.returncode == 0, (done.stdout + done.stderr).strip()


class ReferenceExporter:
    """A second Prometheus serving its own /metrics behind ``--web.config.file``: the toolkit itself."""

    def __init__(self, web_config: Path, workdir: Path) -> None:
        self.port = free_port()
        config = workdir / "reference.yml"
        config.write_text(json.dumps({"global": {"scrape_interval": "1h"}}), encoding="utf-8")
        self._log = (workdir / "reference.log").open("wb")
        self.process = subprocess.Popen(
            [require_binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'ref-data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", f"--web.config.file={web_config}"],
            stdout=self._log, stderr=subprocess.STDOUT)

    def wait_listening(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "the reference Prometheus exited"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the reference Prometheus did not listen within 30 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def scrape_job(name: str, targets: list[str], site: Path, *, password: str = PASSWORD,
               scheme: str = "https") -> dict[str, Any]:
    """One scrape_config, as a user writes it for any exporter with this web config."""
    job: dict[str, Any] = {"job_name": name, "scheme": scheme, "static_configs": [{"targets": targets}],
                           "basic_auth": {"username": USER, "password": password}}
    if scheme == "https":
        job["tls_config"] = {"ca_file": str(site / "ca.crt")}
    return job


def wait_targets(prom: PrometheusServer, jobs: set[str], timeout: float = 40.0) -> dict[tuple[str, str], dict]:
    """Every target of ``jobs`` once each has been scraped at least once: (job, instance) -> target."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {(t["labels"]["job"], t["labels"]["instance"]): t for t in prom.targets_status()
                if t["labels"].get("job") in jobs}
        if seen and all(t["health"] in ("up", "down") for t in seen.values()) and \
                {job for job, _ in seen} == jobs:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"targets never scraped: {seen}\n{prom.logs()}")
        time.sleep(0.3)


@pytest.mark.prometheus
def test_one_file_one_scrape_config_for_us_and_for_the_toolkit(site: Path) -> None:
    """The same file and the same scrape_config work for our /metrics and for a Go exporter's."""
    web = write(site, TLS_AND_AUTH)
    assert promtool_accepts(web)[0], promtool_accepts(web)[1]
    reference = ReferenceExporter(web, site)
    try:
        with MetricsHTTPServer("127.0.0.1", 0, registry(), web_config_file=str(web)) as ours:
            reference.wait_listening()
            targets = [f"127.0.0.1:{ours.port}", f"127.0.0.1:{reference.port}"]
            jobs = (scrape_job("good", targets, site),
                    scrape_job("wrong-password", targets, site, password="not-it"),
                    scrape_job("no-tls", targets, site, scheme="http"))
            with PrometheusServer([], job="unused", extra_scrape_configs=jobs) as prom:
                deadline = time.monotonic() + 40
                while True:
                    seen = wait_targets(prom, {"good", "wrong-password", "no-tls"})
                    if all(t["health"] == "up" for (job, _), t in seen.items() if job == "good"):
                        break
                    assert time.monotonic() < deadline, f"good targets not up: {seen}"
                    time.sleep(0.3)
                ours_i, ref_i = targets
                for job in ("wrong-password", "no-tls"):
                    mine, theirs = seen[(job, ours_i)], seen[(job, ref_i)]
                    assert mine["health"] == theirs["health"] == "down", (mine, theirs)
                    assert mine["lastError"] == theirs["lastError"], (job, mine["lastError"], theirs["lastError"])
                assert "401" in seen[("wrong-password", ours_i)]["lastError"]
                assert "400" in seen[("no-tls", ours_i)]["lastError"]
                # What Prometheus stored from our endpoint through TLS and basic auth.
                result = prom.wait_for(f'qwen_fluent_connections_active{{job="good",instance="{ours_i}"}}')
                assert result[0]["value"][1] == "0"
    finally:
        reference.stop()


# Files each side must refuse. Each has the fragment our one-line message must contain.
BAD_FILES = {
    "unknown top-level key": ("tls_config:\n  cert_file: server.crt\n", "unknown key 'tls_config'"),
    "unknown TLS key": ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  certfile: x\n",
                        "unknown key 'certfile'"),
    "duplicate key": (f"basic_auth_users:\n  a: {HASH}\n  a: {OTHER_HASH}\n", "duplicate key 'a'"),
    "password in clear": ("basic_auth_users:\n  prometheus: s3cret\n", "is not a bcrypt hash"),
    "header not allowed": ("http_server_config:\n  headers:\n    Server: x\n", "'Server' can not be configured"),
    "header value": ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "invalid value for X-Frame"),
    "cert without key": ("tls_server_config:\n  cert_file: server.crt\n", "missing one of key or key_file"),
    "key without cert": ("tls_server_config:\n  key_file: server.key\n", "missing one of cert or cert_file"),
    "missing cert file": ("tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n",
                          "failed to read cert_file"),
    "key of another cert": ("tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n",
                            "is not the PEM private key of"),
    "cert is not PEM": ("tls_server_config:\n  cert_file: web.yml\n  key_file: server.key\n",
                        "is not a PEM certificate"),
    "client CA without policy": (("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                                  "  client_ca_file: ca.crt\n"), "without a client_auth_type"),
    "unknown client auth": (("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                             "  client_auth_type: Always\n"), "invalid client_auth_type"),
    "unknown TLS version": (("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                             "  min_version: TLS14\n"), "unknown TLS version"),
    "not YAML": ("tls_server_config: [\n", "is not valid YAML"),
    "not a mapping": ("- a\n- b\n", "expected a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_is_refused_at_start_as_the_toolkit_refuses_it(site: Path, case: str) -> None:
    text, fragment = BAD_FILES[case]
    web = write(site, text)
    accepted, output = promtool_accepts(web)
    assert not accepted, f"promtool accepts {case!r}, so we must too: {output}"
    server = MetricsHTTPServer("127.0.0.1", 0, registry(), web_config_file=str(web))
    with pytest.raises(WebConfigError) as info:
        server.start()
    message = str(info.value)
    assert fragment in message and "\n" not in message and str(web) in message, message
    assert server._server is None  # nothing bound


GOOD_FILES = {
    "empty": "",
    "auth only": f"basic_auth_users:\n  {USER}: {HASH}\n",
    "TLS only": "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    "everything": TLS_AND_AUTH + "  # a comment\n",
    "client certs": ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                     "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
                     "  min_version: TLS13\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n"),
    "null sections": "tls_server_config:\nbasic_auth_users:\n",
}


@pytest.mark.parametrize("case", sorted(GOOD_FILES))
def test_a_file_the_toolkit_accepts_is_accepted(site: Path, case: str) -> None:
    web = write(site, GOOD_FILES[case])
    accepted, output = promtool_accepts(web)
    assert accepted, output
    config, context = load_web_config(str(web))
    assert (context is not None) == config.tls.enabled == ("cert_file" in GOOD_FILES[case])


def test_paths_are_relative_to_the_file_not_the_working_directory(site: Path, tmp_path_factory,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    config, _ = load_web_config(str(write(site, GOOD_FILES["TLS only"])))
    assert config.tls.cert_file == str(site / "server.crt")


def test_unverified_client_cert_policies_are_refused_with_what_works(site: Path) -> None:
    web = write(site, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                      "  client_auth_type: RequireAnyClientCert\n")
    assert promtool_accepts(web)[0]  # the toolkit takes it; we refuse it on purpose (module docstring)
    with pytest.raises(WebConfigError, match="RequireAndVerifyClientCert"):
        load_web_config(str(web))


# -- the endpoint -----------------------------------------------------------------------------------


def test_basic_auth_over_tls(served: MetricsHTTPServer, site: Path) -> None:
    ctx = client_context(site)
    status, headers, body = get(served.port, "/metrics", ctx, Authorization=basic(USER, PASSWORD))
    assert status == 200 and b"qwen_fluent_connections_active" in body
    assert headers["X-Frame-Options"] == "deny" and headers["X-Content-Type-Options"] == "nosniff"
    for authorization in (basic(USER, "wrong"), basic("nobody", PASSWORD), basic("other", PASSWORD),
                          "Basic !!!", "Bearer abc", None):
        extra = {"Authorization": authorization} if authorization else {}
        status, headers, body = get(served.port, "/metrics", ctx, **extra)
        assert status == 401, authorization
        assert headers["WWW-Authenticate"] == "Basic" and b"qwen_fluent" not in body
        assert headers["X-Frame-Options"] == "deny"  # the toolkit sets them before it checks
    for path in ("/", "/nothing"):
        assert get(served.port, path, ctx)[0] == 401
    assert served.unauthorized == 8
    assert served.scheme == "https"


def test_probes_answer_without_credentials_but_only_over_tls(served: MetricsHTTPServer, site: Path) -> None:
    ctx = client_context(site)
    assert get(served.port, "/healthz", ctx)[:1] == (200,)
    status, headers, _ = get(served.port, "/readyz", ctx)
    assert status == 200 and headers["X-Content-Type-Options"] == "nosniff"
    status, _, body = get(served.port, "/healthz", None)  # plain HTTP on the TLS port
    assert status == 400 and body == b"Client sent an HTTP request to an HTTPS server.\n"


def test_plain_http_on_the_tls_port_is_told_so(served: MetricsHTTPServer) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 400 Bad Request\r\n")
    assert answer.endswith(b"Client sent an HTTP request to an HTTPS server.\n")
    assert served.tls_refused == 1


def test_a_slow_tls_client_does_not_hold_up_the_others(served: MetricsHTTPServer, site: Path) -> None:
    """The handshake runs in the connection's thread: a client that connects and says nothing blocks nobody."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=10):
        start = time.monotonic()
        status, _, _ = get(served.port, "/metrics", client_context(site), Authorization=basic(USER, PASSWORD))
        assert status == 200 and time.monotonic() - start < 5


def test_verified_passwords_are_cached_and_unknown_users_cost_a_bcrypt(served: MetricsHTTPServer, site: Path) -> None:
    ctx = client_context(site)
    good = basic(USER, PASSWORD)
    for _ in range(3):
        assert get(served.port, "/metrics", ctx, Authorization=good)[0] == 200
    auth = served.web.current().auth
    assert auth is not None and auth.verifications == 1  # once, then from the cache
    get(served.port, "/metrics", ctx, Authorization=basic("nobody", "x"))
    assert auth.verifications == 2  # an unknown user is checked against the dummy hash all the same
    for i in range(AUTH_CACHE_SIZE + 20):
        assert auth.check(basic(USER, f"guess-{i}")) is None
    assert auth.cached == AUTH_CACHE_SIZE  # bounded
    assert auth.check(basic(USER, PASSWORD)) == USER


def test_client_certificates_and_allowed_sans(site: Path) -> None:
    base = ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n")
    with MetricsHTTPServer("127.0.0.1", 0, registry(), web_config_file=str(write(site, base))) as srv:
        assert get(srv.port, "/metrics", client_context(site, cert=True))[0] == 200
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            get(srv.port, "/metrics", client_context(site, cert=False))
    # The client certificate's SANs are localhost and 127.0.0.1 (tests/server/certs.py).
    for sans, ok in (("[localhost]", True), ("['::ffff:127.0.0.2', example.org]", False), ("['127.0.0.1']", True)):
        web = write(site, base + f"  client_allowed_sans: {sans}\n", name=f"sans-{ok}.yml")
        with MetricsHTTPServer("127.0.0.1", 0, registry(), web_config_file=str(web)) as srv:
            if ok:
                assert get(srv.port, "/metrics", client_context(site, cert=True))[0] == 200
            else:
                with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
                    get(srv.port, "/metrics", client_context(site, cert=True))
                assert srv.tls_refused >= 1


def test_a_changed_file_applies_to_the_next_request_and_a_broken_one_fails_closed(site: Path) -> None:
    web = write(site, f"basic_auth_users:\n  {USER}: {HASH}\n")
    with MetricsHTTPServer("127.0.0.1", 0, registry(), web_config_file=str(web)) as srv:
        assert srv.scheme == "http"
        assert get(srv.port, "/metrics", None, Authorization=basic(USER, PASSWORD))[0] == 200
        new_hash = bcrypt.hashpw(b"rotated", bcrypt.gensalt(4)).decode()
        write(site, f"basic_auth_users:\n  {USER}: {new_hash}\n")
        assert get(srv.port, "/metrics", None, Authorization=basic(USER, PASSWORD))[0] == 401
        assert get(srv.port, "/metrics", None, Authorization=basic(USER, "rotated"))[0] == 200
        write(site, "basic_auth_users:\n  prometheus: rotated\n")  # a password in clear: invalid
        assert get(srv.port, "/metrics", None, Authorization=basic(USER, "rotated"))[0] == 500
        assert srv.web.reload_failures == 1
        write(site, GOOD_FILES["TLS only"])  # TLS cannot be turned on without a restart
        assert get(srv.port, "/metrics", None)[0] == 500
        write(site, "")  # no users at all: open, as the toolkit does
        assert get(srv.port, "/metrics", None)[0] == 200


def test_a_rotated_certificate_is_served_on_the_next_connection(site: Path, tls_files: dict[str, Path]) -> None:
    from tests.server.certs import make_leaf

    web = write(site, GOOD_FILES["TLS only"])
    with MetricsHTTPServer("127.0.0.1", 0, registry(), web_config_file=str(web)) as srv:
        first = ssl.get_server_certificate(("127.0.0.1", srv.port))
        make_leaf(site, "server", "rotated", "serverAuth", (tls_files["ca_crt"], tls_files["ca_key"]))
        second = ssl.get_server_certificate(("127.0.0.1", srv.port))
        assert first != second
        assert get(srv.port, "/metrics", client_context(site))[0] == 200


def test_rate_limit_spares_the_probes(site: Path) -> None:
    web = write(site, "rate_limit:\n  interval: 1h\n  burst: 2\n")
    with MetricsHTTPServer("127.0.0.1", 0, registry(), web_config_file=str(web)) as srv:
        assert [get(srv.port, "/metrics", None)[0] for _ in range(3)] == [200, 200, 429]
        assert get(srv.port, "/healthz", None)[0] == 200
        assert srv.rate_limited == 1


def test_token_bucket_refills_one_token_per_interval() -> None:
    now = [0.0]
    bucket = TokenBucket(RateLimit(interval=2.0, burst=2), clock=lambda: now[0])
    assert [bucket.allow() for _ in range(3)] == [True, True, False]
    now[0] = 1.9
    assert not bucket.allow()
    now[0] = 2.1
    assert bucket.allow() and not bucket.allow()


@pytest.mark.parametrize("text, seconds", [("0", 0.0), ("1s", 1.0), ("250ms", 0.25), ("1m30s", 90.0),
                                           ("1.5h", 5400.0), ("10us", 1e-5), (1_000_000_000, 1.0)])
def test_go_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "1x", "1s2", "1 s", True, 1.5])
def test_not_go_durations(text: Any) -> None:
    with pytest.raises(WebConfigError):
        parse_duration(text, "x")


def test_basic_header_is_read_as_go_reads_it() -> None:
    assert parse_basic(basic("u", "p:w")) == ("u", b"p:w")  # split at the first colon
    assert parse_basic("bAsIc " + base64.b64encode(b"u:").decode()) == ("u", b"")
    assert parse_basic("Basic " + base64.b64encode(b"no-colon").decode()) is None
    assert parse_basic("Basic") is None and parse_basic(None) is None


def test_the_cli_refuses_a_bad_file_with_one_line(site: Path) -> None:
    web = write(site, BAD_FILES["password in clear"][0])
    done = subprocess.run([sys.executable, "-m", "qwen_fluent", "serve", "--no-gpu", "--port", "0",
                           "--metrics-port", "0", "--web-config-file", str(web)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [(f"qwen-fluent: error: web config {web}: basic_auth_users: prometheus's password is not a "
                      "bcrypt hash (make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')")], done.stderr
    assert "s3cret" not in done.stderr


def test_check_config_checks_the_web_config_the_toml_names(site: Path) -> None:
    web = write(site, BAD_FILES["header not allowed"][0])
    toml = site / "qwen-fluent.toml"
    toml.write_text(f'[http]\nweb_config_file = "{web}"\n', encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "qwen_fluent", "check-config", str(toml)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "HTTP header 'Server' can not be configured" in done.stderr
    write(site, TLS_AND_AUTH)
    done = subprocess.run([sys.executable, "-m", "qwen_fluent", "check-config", str(toml)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == f"{toml}: ok", done.stderr


def test_the_merged_endpoint_of_serve_workers_takes_the_web_config_too(site: Path) -> None:
    """`serve --workers 2`: the parent's merged /metrics is served with the file's TLS and basic auth."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = write(site, TLS_AND_AUTH)
    process = subprocess.Popen([sys.executable, "-m", "qwen_fluent", "serve", "--no-gpu", "--workers", "2",
                                "--host", "127.0.0.1", "--port", "0", "--metrics-host", "127.0.0.1",
                                "--metrics-port", str(port), "--web-config-file", str(web)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ctx = client_context(site)
        deadline = time.monotonic() + 60
        while True:
            try:
                if get(port, "/readyz", ctx)[0] == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "serve --workers 2 did not get ready"
            time.sleep(0.2)
        status, _, body = get(port, "/metrics", ctx, Authorization=basic(USER, PASSWORD))
        assert status == 200 and b"qwen_fluent_records_total" in body
        assert get(port, "/metrics", ctx)[0] == 401
        assert get(port, "/metrics", ctx, Authorization=basic(USER, "wrong"))[0] == 401
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err


def test_htpasswd_2y_hashes_and_long_passwords_verify_as_go_verifies_them() -> None:
    from qwen_fluent.server.webconfig import BasicAuth

    long = b"p" * 72
    hashed = bcrypt.hashpw(long, bcrypt.gensalt(4))
    auth = BasicAuth({"u": b"$2y$" + hashed[4:]})  # htpasswd -B writes $2y$
    header = "Basic " + base64.b64encode(b"u:" + long + b"ignored-after-72").decode()
    assert auth.check(header) == "u"  # Go's bcrypt reads the first 72 bytes; so do we
    assert auth.check("Basic " + base64.b64encode(b"u:" + long[:71]).decode()) is None
    assert auth.check("Basic " + base64.b64encode(b"u:a\0b").decode()) is None  # bcrypt refuses NUL: no match
