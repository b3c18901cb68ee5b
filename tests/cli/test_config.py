"""Configuration: file, environment and flags, and the one-line errors a user sees."""

from __future__ import annotations

import pytest

from qwen_fluent.config import ConfigError, load


def write(tmp_path, text: str):
    path = tmp_path / "qwen-fluent.toml"
    path.write_text(text)
    return path


def test_defaults_without_file():
    config = load(None, environ={})
    assert config.server.host == "0.0.0.0" and config.server.port == 24224
    assert config.http.port == 8000
    assert config.server.auth is None
    assert config.metrics.namespace == "qwen"


def test_file_env_flag_precedence(tmp_path):
    path = write(tmp_path, '[server]\nport = 1000\nhost = "127.0.0.1"\n[http]\nport = 9000\n')
    config = load(path, {"port": 3000}, {"QWEN_FLUENT_PORT": "2000", "QWEN_FLUENT_METRICS_PORT": "9100"})
    assert config.server.port == 3000  # flag beats env beats file
    assert config.http.port == 9100  # env beats file
    assert config.server.host == "127.0.0.1"  # file beats default


def test_auth_and_users(tmp_path):
    path = write(tmp_path, '[auth]\nshared_key = "secret"\nself_hostname = "recv"\n[auth.users]\nalice = "s3cret"\n')
    config = load(path, environ={})
    assert config.server.auth.shared_key == "secret"
    assert dict(config.server.auth.users) == {"alice": "s3cret"}


def test_shared_key_from_environment():
    config = load(None, environ={"QWEN_FLUENT_SHARED_KEY": "k", "QWEN_FLUENT_SELF_HOSTNAME": "me"})
    assert config.server.auth.shared_key == "k" and config.server.auth.self_hostname == "me"


def test_limits_section(tmp_path):
    path = write(tmp_path, "[limits]\nmax_message_bytes = 1048576\nidle_timeout = 30\n")
    config = load(path, environ={})
    assert config.server.limits.max_message_bytes == 1048576
    assert config.server.limits.idle_timeout == 30.0


@pytest.mark.parametrize(
    "text,message",
    [
        ("[server]\nprot = 1\n", "unknown key 'prot' in [server] (known: host, port,"),
        ("[serve]\nport = 1\n", "unknown section [serve]"),
        ('[server]\nport = "x"\n', "[server] port must be an integer"),
        ("[server]\nport = 70000\n", "[server] port must be 0..65535"),
        ("[limits]\nmax_message_bytes = -1\n", "limits.max_message_bytes must be a positive number"),
        ('[server]\ntls_cert = "/nonexistent.pem"\ntls_key = "/nonexistent.key"\n', "is not a readable file"),
        ('[server]\ntls_cert = "/x.pem"\n', "tls_cert and tls_key must be given together"),
        ('[auth.users]\nalice = "x"\n', "users need a shared_key"),
        ("[server\n", "is not valid TOML"),
    ],
)
def test_errors_are_one_clear_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), environ={})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load("/nonexistent/qwen-fluent.toml", environ={})
